"""The language's operators, one table: symbol, binding strength, function, constant fold.

Every stage reads its operators here: the checker folds constants with ``fold``, the runtime
combines term values with ``function`` and bounds param arithmetic with ``bounds``, tensor
expressions apply ``function`` to tensors, and ``formatting`` parenthesises by ``precedence``.
The comparisons carry their negation, which the condition lowering (``lossdsl.conditions``) pushes
into them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Binding strength, loosest first (the grammar's order): a child binding looser than its slot
#: needs parentheses when printed.
IMPLIES, OR, AND, NOT, COMPARISON, SUM, PRODUCT, UNARY, ATOM = range(1, 10)

Bounds = tuple[float, float]


@dataclass(frozen=True)
class BinaryOperator:
    """``+ - * /``: over numbers, tensors and term values alike."""

    symbol: str
    precedence: int
    #: ``a OP b`` for numbers and tensors (a Python number with a tensor, too).
    function: Callable[[Any, Any], Any]
    #: The smallest and largest value of ``a OP b`` for ``a`` and ``b`` in finite ranges (a divisor's
    #: range holds no 0: the callers report that first).
    bounds: Callable[[Bounds, Bounds], Bounds]

    def fold(self, left: float, right: float) -> float | None:
        """The value of constant arithmetic; None where it has none (a division by 0)."""
        if self.symbol == "/" and right == 0:
            return None
        return self.function(left, right)


def _products(left: Bounds, right: Bounds) -> Bounds:
    products = [a * b for a in left for b in right]
    return min(products), max(products)


def _quotients(left: Bounds, right: Bounds) -> Bounds:
    """The corners' quotients themselves: ``a * (1 / b)`` overflows where ``1 / b`` does (a
    subnormal divisor) and gives NaN for ``0 * inf`` where ``a / b`` is 0."""
    quotients = [a / b for a in left for b in right]
    return min(quotients), max(quotients)


ARITHMETIC: dict[str, BinaryOperator] = {
    op.symbol: op
    for op in (
        BinaryOperator("+", SUM, operator.add, lambda a, b: (a[0] + b[0], a[1] + b[1])),
        BinaryOperator("-", SUM, operator.sub, lambda a, b: (a[0] - b[1], a[1] - b[0])),
        BinaryOperator("*", PRODUCT, operator.mul, _products),
        BinaryOperator("/", PRODUCT, operator.truediv, _quotients),
    )
}


@dataclass(frozen=True)
class Comparison:
    """``a OP b`` in a condition."""

    symbol: str
    #: ``not (a OP b)`` is ``a NEGATION b``; ``!=`` appears only so, and ``soft_bound`` refuses it.
    negation: str
    #: Whether ``b`` bounds ``a`` from above (``<=``, ``<``: violated by ``a - b``); ``==`` and ``!=`` neither.
    upper: bool
    lower: bool


COMPARISONS: dict[str, Comparison] = {
    op.symbol: op
    for op in (
        Comparison("<=", ">", upper=True, lower=False),
        Comparison("<", ">=", upper=True, lower=False),
        Comparison(">=", "<", upper=False, lower=True),
        Comparison(">", "<=", upper=False, lower=True),
        Comparison("==", "!=", upper=False, lower=False),
        Comparison("!=", "==", upper=False, lower=False),
    )
}

#: The logic operators that combine comparisons, and how tightly they bind (``not`` is ``NOT``).
LOGIC: dict[str, int] = {"and": AND, "or": OR, "implies": IMPLIES}

#: The precedence of every binary operator, for printing.
PRECEDENCE: dict[str, int] = {**{op.symbol: op.precedence for op in ARITHMETIC.values()}, **LOGIC}
