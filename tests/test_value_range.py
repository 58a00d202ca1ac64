"""tensor_expr.value_range bounds what a tensor expression takes for inputs in [-1, 1]: the
overflow checks (E205) rest on it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ast
from lossdsl.tensor_expr import compile_tensor_expr, lower_tensor_expr, value_range

_leaves = st.one_of(
    st.sampled_from([ast.Name(id="y"), ast.Name(id="z")]),
    st.sampled_from([0, 0.5, 1, 2, 3]).map(lambda v: ast.Number(value=v)),
)


def _extend(inner):
    number = st.sampled_from([0.5, 2, 4]).map(lambda v: ast.Number(value=v))
    return st.one_of(
        st.builds(lambda e: ast.Neg(operand=e), inner),
        st.builds(lambda op, left, right: ast.BinOp(op=op, left=left, right=right),
                  st.sampled_from("+-*"), inner, inner),
        st.builds(lambda left, right: ast.BinOp(op="/", left=left, right=right), inner, number),
        st.builds(lambda name, e: ast.Call(name=name, args=(e,)),
                  st.sampled_from(["abs", "square", "relu", "sigmoid", "softplus", "exp"]), inner),
        st.builds(lambda e: ast.Call(name="clamp", args=(e, ast.Number(value=0), ast.Number(value=1))), inner),
    )


_expressions = st.recursive(_leaves, _extend, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(_expressions)
def test_value_range_holds_every_value_for_inputs_in_minus_one_to_one(expr):
    lowered = lower_tensor_expr(expr)
    low, high = value_range(lowered)
    grid = torch.linspace(-1, 1, 21, dtype=torch.float64)
    tensors = (grid.repeat_interleave(21), grid.repeat(21))
    values = compile_tensor_expr(lowered, {"y": 0, "z": 1})(tensors)
    values = torch.as_tensor(values, dtype=torch.float64)
    slack = 1e-6 * (1 + values.abs())  # (a constant-only part is computed in float32)
    assert bool(((values >= low - slack) & (values <= high + slack)).all()), (low, high, values.min(), values.max())


def test_a_product_reaching_zero_keeps_zero_in_its_range():
    # relu(y) * 3 is 0 for y <= 0: its range starts at 0, not 3.
    assert value_range(lower_tensor_expr(lossdsl.parse("mean(relu(y) * 3)").objective.value.args[0])) == (0.0, 3.0)


def test_a_penalty_a_zero_product_pushes_past_float32_is_e205():
    # At y = 0 the squared violation of 1e20 <= relu(y) * 1e20 is 1e40: inf in float32.
    with pytest.raises(lossdsl.LossSpecError) as raised:
        lossdsl.compile("soft_bound(1e20 <= relu(y) * 1e20)")
    assert raised.value.diagnostics[0].code == "E205"
