"""Constant folding: the value of number arithmetic, computed in this one place.

Two kinds of expression hold numbers. In the AST (a tensor expression's ``2 * 50``, a literal
weight) the checker folds pure number arithmetic as it goes. In the plan, a weight or a bound may
be arithmetic over params and schedules: ``bind`` folds it once the params have values, as the
interval of values it takes (a schedule moves over its steps), and ``build`` reads the folded
values. Every problem folding finds, a division by zero or a number beyond float32, is the same
``FoldError`` here; the passes turn it into a diagnostic at the right place.

Pure functions: no tensors, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import ast
from .operators import ARITHMETIC
from .plan import Arithmetic, Constant, LetValue, Negate, ObjectiveExpr, ParamValue, ScheduleValue, TermValue, Weighted
from .schedule_params import value_range


#: A value whose problem has already been reported (distinct from None: "not a constant").
INVALID: Any = object()

Interval = tuple[float, float]


class FoldError(ArithmeticError):
    """Number arithmetic that has no float32 value: ``message`` says why; ``at_divisor`` when the
    divisor is at fault (the diagnostic points there); ``node`` is the arithmetic that failed."""

    def __init__(self, message: str, at_divisor: bool = False, node: object = None):
        super().__init__(message)
        self.message, self.at_divisor, self.node = message, at_divisor, node


def fold(op: str, left: float, right: float) -> float:
    """``left op right``; FoldError for a division by zero or a result beyond float32 (inf, nan)."""
    if op == "/" and right == 0:
        raise FoldError("division by zero", at_divisor=True)
    value = ARITHMETIC[op].function(left, right)
    if not abs(value) <= ast.LARGEST_NUMBER:  # inf and nan too
        raise FoldError("the constant overflows")
    return value


def literal_number(node: ast.Node) -> int | float | None:
    """A number as written: ``2``, ``-0.5`` (a negated literal); None for anything else."""
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Neg) and isinstance(node.operand, ast.Number):
        return -node.operand.value
    return None


def number_value(node: ast.Node, report: Callable[[ast.Node, FoldError], None] | None = None) -> Any:
    """The value of pure number arithmetic in an AST expression (numbers, unary -, + - * /); None
    when it holds anything else. A division by zero or an overflow is passed to ``report`` (the
    node, the error; each problem once, both sides are folded) and gives ``INVALID``; without
    ``report`` it raises ``FoldError``."""
    if isinstance(node, ast.Number):
        return float(node.value)
    if isinstance(node, ast.Neg):
        value = number_value(node.operand, report)
        return -value if isinstance(value, float) else value
    if isinstance(node, ast.BinOp):
        left, right = number_value(node.left, report), number_value(node.right, report)
        if INVALID in (left, right):
            return INVALID
        if left is None or right is None:
            return None
        try:
            return fold(node.op, left, right)
        except FoldError as error:
            if report is None:
                raise
            report(node, error)
            return INVALID
    return None


def literal(expr: ObjectiveExpr | None) -> float | None:
    """The value of a folded plan constant (``-1`` is a negated one); None for arithmetic over params."""
    if isinstance(expr, Negate):
        inner = literal(expr.operand)
        return None if inner is None else -inner
    return expr.value if isinstance(expr, Constant) else None


#: Intervals already folded, by ``id`` of the plan node (``bind`` fills one per plan, ``build`` reads it).
Intervals = dict[int, "Interval | None"]


def interval(expr: ObjectiveExpr, params: Mapping[str, float], known: Intervals | None = None) -> Interval | None:
    """The smallest and largest value of number arithmetic in the plan: params at their values,
    schedules over all their steps; None for a loss. ``FoldError`` (its ``node`` the arithmetic)
    for a divisor whose interval holds 0, and for a number beyond float32. ``known`` keeps each
    node's interval, so a plan's arithmetic is folded once however often it is asked."""
    if known is None:
        return _interval(expr, params, None)
    key = id(expr)
    if key not in known:
        known[key] = _interval(expr, params, known)
    return known[key]


def _interval(expr: ObjectiveExpr, params: Mapping[str, float], known: Intervals | None) -> Interval | None:
    if isinstance(expr, Constant):
        return expr.value, expr.value
    if isinstance(expr, ParamValue):
        return params[expr.name], params[expr.name]
    if isinstance(expr, ScheduleValue):
        return value_range(expr.kind, expr.params)
    if isinstance(expr, Negate):
        inner = interval(expr.operand, params, known)
        return None if inner is None else (-inner[1], -inner[0])
    if not isinstance(expr, Arithmetic):
        return None
    left, right = interval(expr.left, params, known), interval(expr.right, params, known)
    if expr.op == "/" and right is not None and right[0] <= 0 <= right[1]:
        low, high = right
        raise FoldError("division by zero" if low == high else
                        f"division by zero: the divisor goes from {low + 0:g} to {high + 0:g}", True, expr)  # (no -0)
    if left is None or right is None:
        return None
    bounds = ARITHMETIC[expr.op].bounds(left, right)
    if not max(abs(bounds[0]), abs(bounds[1])) <= ast.LARGEST_NUMBER:  # inf and nan too
        raise FoldError("the constant overflows", node=expr)
    return bounds


def constant(expr: ObjectiveExpr, params: Mapping[str, float], known: Intervals | None = None) -> float | None:
    """The value of number arithmetic over params; None for losses and for what holds a schedule."""
    if moves(expr):
        return None
    bounds = interval(expr, params, known)
    return None if bounds is None else bounds[0]


def is_number(expr: ObjectiveExpr, params: Mapping[str, float], known: Intervals | None = None) -> bool:
    """Whether ``expr`` is number arithmetic (no term, no let in it)."""
    return interval(expr, params, known) is not None


def weight(expr: ObjectiveExpr, params: Mapping[str, float], known: Intervals | None = None) -> float:
    """The largest factor a loss in ``expr`` is multiplied by (its divisors hold no 0: ``interval``
    has been through them)."""
    if isinstance(expr, (TermValue, LetValue)):
        return 1.0
    if isinstance(expr, Negate):
        return weight(expr.operand, params, known)
    if isinstance(expr, Weighted):  # its own weights are learned, not the spec's: those inside it count
        return max(weight(operand, params, known) for operand in expr.operands)
    if not isinstance(expr, Arithmetic):
        return 0.0
    left, right = interval(expr.left, params, known), interval(expr.right, params, known)
    if left is None and right is None:  # loss + loss, loss - loss
        return max(weight(expr.left, params, known), weight(expr.right, params, known))
    loss, number = (expr.right, left) if right is None else (expr.left, right)
    smallest, largest = sorted(abs(bound) for bound in number)
    return weight(loss, params, known) * (1 / smallest if expr.op == "/" else largest)


def moves(expr: ObjectiveExpr) -> bool:
    """Whether number arithmetic holds a schedule."""
    return next(expr.find_all(ScheduleValue), None) is not None


def params_in(expr: ObjectiveExpr) -> set[str]:
    """The params number arithmetic reads."""
    return {param.name for param in expr.find_all(ParamValue)}
