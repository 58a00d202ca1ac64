"""One operator table (lossdsl.operators): what the checker, the runtime, tensor expressions and
the formatter read."""

from __future__ import annotations

import math
import operator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lossdsl import folding, formatting, runtime, tensor_expr
from lossdsl.operators import ARITHMETIC, COMPARISONS, PRECEDENCE, PRODUCT, SUM

finite = st.floats(-1e6, 1e6, allow_nan=False)


@pytest.mark.parametrize(("symbol", "reference"), [("+", operator.add), ("-", operator.sub), ("*", operator.mul),
                                                   ("/", operator.truediv)])
def test_functions_act_on_numbers_and_tensors(symbol, reference):
    op = ARITHMETIC[symbol]
    assert op.function(3.0, 2.0) == reference(3.0, 2.0)
    y = torch.tensor([1.0, -2.0, 4.0])
    torch.testing.assert_close(op.function(y, 2.0), reference(y, 2.0))
    torch.testing.assert_close(op.function(2.0, y), reference(2.0, y))


def test_fold_has_no_value_for_a_division_by_zero():
    assert ARITHMETIC["/"].fold(1.0, 0.0) is None
    assert ARITHMETIC["/"].fold(1.0, 4.0) == 0.25
    assert ARITHMETIC["*"].fold(3.0, 0.0) == 0.0


@given(finite, finite, finite, finite, st.sampled_from("+-*/"))
def test_bounds_hold_every_corner_and_nothing_more(a, b, c, d, symbol):
    left, right = (min(a, b), max(a, b)), (min(c, d), max(c, d))
    if symbol == "/" and right[0] <= 0 <= right[1]:
        return  # the callers report a divisor whose range holds 0 before asking
    low, high = ARITHMETIC[symbol].bounds(left, right)
    # The operators are monotone in each argument on these ranges: the extremes lie at corners.
    corners = [ARITHMETIC[symbol].function(x, y) for x in left for y in right]
    assert low == min(corners) and high == max(corners)


def test_a_subnormal_divisor_bounds_by_the_quotients_not_nan():
    """[0, 1] / [c, c] with c subnormal: 1 / c overflows, and 0 * inf was NaN; 0 / c is 0."""
    c = 2.2250738585e-313
    assert ARITHMETIC["/"].bounds((-1.0, 0.0), (c, c)) == (-1.0 / c, 0.0)
    assert ARITHMETIC["/"].bounds((0.0, 0.0), (c, c)) == (0.0, 0.0)


def test_precedence_and_negation():
    assert PRECEDENCE["+"] == PRECEDENCE["-"] == SUM < PRODUCT == PRECEDENCE["*"] == PRECEDENCE["/"]
    assert PRECEDENCE["implies"] < PRECEDENCE["or"] < PRECEDENCE["and"] < SUM
    for symbol, comparison in COMPARISONS.items():
        assert COMPARISONS[comparison.negation].negation == symbol  # negating twice gives it back
        negated = COMPARISONS[comparison.negation]
        assert (comparison.upper, comparison.lower) == (negated.lower, negated.upper)
    assert not COMPARISONS["=="].upper and not COMPARISONS["=="].lower


def test_the_stages_share_the_table():
    # No stage keeps its own copy of the operators any more.
    for module in (runtime, tensor_expr):
        assert not hasattr(module, "_OPS") and not hasattr(module, "_ARITHMETIC")
    assert folding.ARITHMETIC is ARITHMETIC
    assert formatting._LEVEL is PRECEDENCE
    assert math.isclose(ARITHMETIC["/"].bounds((1.0, 2.0), (4.0, 8.0))[1], 0.5)
