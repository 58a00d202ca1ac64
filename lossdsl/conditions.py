"""Conditions over tensors (``soft_bound(0 <= y <= 1 or not z > 3)``), lowered once into a small IR.

``lower`` pushes every ``not`` into the comparisons (De Morgan), once, when the term's parameters
are built from the checked AST: ``not (a <= b)`` is ``a > b``, ``not (p and q)`` is ``not p or not
q``, ``p implies q`` is ``not p or q``, and a chain ``a <= b <= c`` is ``a <= b and b <= c``. What is
left is comparisons of two tensor expressions (``Compare``) under ``All`` (every one holds) and
``Any`` (one holds), which is all a term needs: ``soft_bound`` adds the penalties of an ``All`` and
multiplies those of an ``Any`` (DL2). The structure is kept as written (``a and b and c`` is
``All(All(a, b), c)``): the penalties are added in the order they always were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from . import ast, trees
from .formatting import format_expr
from .operators import COMPARISONS
from .tensor_expr import IRNode, Lowered, TensorIR, lower_tensor_expr


@dataclass(frozen=True)
class Compare(IRNode):
    """``lhs OP rhs``: ``op`` a key of ``operators.COMPARISONS`` (``!=`` only from ``not (a == b)``)."""

    lhs: TensorIR
    op: str
    rhs: TensorIR


@dataclass(frozen=True)
class All(IRNode):
    """Every item holds (``and``, a chain)."""

    items: tuple[ConditionIR, ...]


@dataclass(frozen=True)
class Any(IRNode):
    """At least one item holds (``or``, ``implies``, a negated ``and`` or chain)."""

    items: tuple[ConditionIR, ...]


ConditionIR = Union[Compare, All, Any]


class LoweredCondition(Lowered):
    """A condition parameter (``soft_bound(CONDITION)``), lowered: what a ``Condition`` parameter holds."""

    __slots__ = ()
    root: ConditionIR


def lower(condition: ast.Node, negated: bool = False) -> ConditionIR:
    """The IR of a checked condition (``negated``: of its negation), every ``not`` pushed into the
    comparisons. Pure; recursive, as the checks bound the depth (E004)."""
    if isinstance(condition, ast.Not):
        return lower(condition.operand, not negated)
    if isinstance(condition, ast.Logic):
        left = lower(condition.left, not negated if condition.op == "implies" else negated)
        right = lower(condition.right, negated)
        either = negated if condition.op == "and" else not negated  # De Morgan under a negation
        return (Any if either else All)((left, right))
    if isinstance(condition, ast.Compare):
        links = tuple(
            Compare(lower_tensor_expr(condition.operands[index]),
                    COMPARISONS[op].negation if negated else op,
                    lower_tensor_expr(condition.operands[index + 1]))
            for index, op in enumerate(condition.ops)
        )
        if len(links) == 1:
            return links[0]
        return Any(links) if negated else All(links)  # not (a <= b <= c) is a > b or b > c
    # The checker rules this out; a ValueError reads as a bad argument if it is ever reached.
    raise ValueError(f"not a condition: {format_expr(condition)}")


def lowered_condition(value: object) -> object:
    """A condition argument, lowered (its text kept for ``explain``); anything else as it is."""
    if isinstance(value, ast.Node):
        return LoweredCondition(lower(value), format_expr(value))
    return value


trees.fill_table(IRNode)  # the child fields of the condition nodes, derived once at import
