"""Tensor expressions evaluated: the IR of ``lossdsl.tensor_expr`` turned into closures over a
term's input tensors, once, when the term is built (the torch half of ``tensor_expr``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F

from .operators import ARITHMETIC
from .tensor_expr import FUNCTIONS, Arith, Const, Function, Input, Negative, TensorIR

TensorFn = Callable[[tuple[torch.Tensor, ...]], Union[torch.Tensor, float]]

#: The torch function of each of ``tensor_expr.FUNCTIONS``.
TORCH_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "abs": torch.abs,
    "square": torch.square,
    "relu": F.relu,
    "exp": torch.exp,
    "log": torch.log,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "clamp": torch.clamp,
}
assert TORCH_FUNCTIONS.keys() == FUNCTIONS.keys()


def compile_tensor_expr(expr: TensorIR, position: dict[str, int]) -> TensorFn:
    """A function of the term's input tensors computing the lowered expression ``expr``."""
    if isinstance(expr, Const):
        value = expr.value
        return lambda tensors: value
    if isinstance(expr, Input):
        index = position[expr.name]
        return lambda tensors: tensors[index]
    if isinstance(expr, Negative):
        operand = compile_tensor_expr(expr.operand, position)
        return lambda tensors: -operand(tensors)
    if isinstance(expr, Arith):
        op = ARITHMETIC[expr.op].function
        left, right = compile_tensor_expr(expr.left, position), compile_tensor_expr(expr.right, position)
        return lambda tensors: op(left(tensors), right(tensors))
    if isinstance(expr, Function):
        function = TORCH_FUNCTIONS[expr.name]
        operand = compile_tensor_expr(expr.operand, position)
        if expr.name == "clamp":
            low, high = expr.numbers
            return lambda tensors: _clamp(_as_tensor(operand(tensors)), low, high)
        return lambda tensors: function(_as_tensor(operand(tensors)))
    raise TypeError(f"not a tensor expression: {expr!r}")  # lowering rules this out


def _clamp(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``torch.clamp`` with bounds beyond the dtype's range moved to its edge (torch refuses them:
    1e30 does not fit in float16)."""
    finfo = torch.finfo(value.dtype)
    return torch.clamp(value, min(max(low, finfo.min), finfo.max), min(max(high, finfo.min), finfo.max))


def _as_tensor(value: torch.Tensor | float) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.tensor(value)
