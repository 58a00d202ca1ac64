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


def simplified(expr: TensorIR) -> TensorIR:
    """``expr`` folded at build time, so the forward does no arithmetic on numbers alone: constant
    subexpressions become one number (``2 * 3 * y`` is ``6 * y``, ``abs(-3)`` is 3), and the identities
    ``x * 1``, ``1 * x``, ``x / 1``, ``x + 0``, ``0 + x``, ``x - 0`` (``x``), ``0 - x``, ``x * -1`` (``-x``),
    ``-(-x)`` and ``-(a - b)`` (``b - a``) leave no op behind; all of them give the same value (up
    to the sign of a zero). Numbers fold in float64, before any cast to the inputs' dtype."""
    if isinstance(expr, (Const, Input)):
        return expr
    if isinstance(expr, Negative):
        operand = simplified(expr.operand)
        if isinstance(operand, Const):
            return Const(-operand.value)
        if isinstance(operand, Negative):
            return operand.operand
        if isinstance(operand, Arith) and operand.op == "-":
            return Arith("-", operand.right, operand.left)
        return Negative(operand)
    if isinstance(expr, Arith):
        left, right = simplified(expr.left), simplified(expr.right)
        if isinstance(left, Const) and isinstance(right, Const):
            value = ARITHMETIC[expr.op].fold(left.value, right.value)
            if value is not None:
                return Const(value)
        number = lambda side, *values: isinstance(side, Const) and side.value in values  # noqa: E731
        if expr.op in ("+", "-") and number(right, 0.0):
            return left
        if expr.op == "+" and number(left, 0.0):
            return right
        if expr.op == "-" and number(left, 0.0):
            return simplified(Negative(right))
        if expr.op in ("*", "/") and number(right, 1.0):
            return left
        if expr.op == "*" and number(left, 1.0):
            return right
        if expr.op == "*" and number(right, -1.0):
            return simplified(Negative(left))
        if expr.op == "*" and number(left, -1.0):
            return simplified(Negative(right))
        return Arith(expr.op, left, right)
    if isinstance(expr, Function):
        operand = simplified(expr.operand)
        if isinstance(operand, Const):  # a function of a number: computed once, in float64
            value = torch.tensor(operand.value, dtype=torch.float64)
            if expr.name == "clamp":
                return Const(float(_clamp(value, *expr.numbers)))
            return Const(float(TORCH_FUNCTIONS[expr.name](value)))
        return Function(expr.name, operand, expr.numbers)
    return expr


def compile_tensor_expr(expr: TensorIR, position: dict[str, int]) -> TensorFn:
    """A function of the term's input tensors computing the lowered expression ``expr``, folded
    first (``simplified``)."""
    return _compiled(simplified(expr), position)


def _compiled(expr: TensorIR, position: dict[str, int]) -> TensorFn:
    if isinstance(expr, Const):
        value = expr.value
        return lambda tensors: value
    if isinstance(expr, Input):
        index = position[expr.name]
        return lambda tensors: tensors[index]
    if isinstance(expr, Negative):
        operand = _compiled(expr.operand, position)
        return lambda tensors: -operand(tensors)
    if isinstance(expr, Arith):
        op = ARITHMETIC[expr.op].function
        # An input and a number (y - 100, 2 * y): one function, not three (the operands' own).
        if isinstance(expr.left, Input) and isinstance(expr.right, Const):
            index, value = position[expr.left.name], expr.right.value
            return lambda tensors: op(tensors[index], value)
        if isinstance(expr.left, Const) and isinstance(expr.right, Input):
            value, index = expr.left.value, position[expr.right.name]
            return lambda tensors: op(value, tensors[index])
        left, right = _compiled(expr.left, position), _compiled(expr.right, position)
        return lambda tensors: op(left(tensors), right(tensors))
    if isinstance(expr, Function):
        function = TORCH_FUNCTIONS[expr.name]
        operand = _compiled(expr.operand, position)
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
