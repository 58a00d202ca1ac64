"""Element-wise tensor expressions inside terms: ``y - 100``, ``abs(pred - target)``, ``clamp(p, 0, 1)``.

They appear in ``soft_bound`` comparisons and in ``mean(...)`` / ``sum(...)``. The checker
(``checks``) validates them; here they are turned into closures over the term's input
tensors, once, at construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F

from . import ast
from .operators import ARITHMETIC

TensorFn = Callable[[tuple[torch.Tensor, ...]], Union[torch.Tensor, float]]

#: Element-wise functions on tensors: name -> (number of arguments, function).
FUNCTIONS: dict[str, tuple[int, Callable[..., torch.Tensor]]] = {
    "abs": (1, torch.abs),
    "square": (1, torch.square),
    "relu": (1, F.relu),
    "exp": (1, torch.exp),
    "log": (1, torch.log),
    "sigmoid": (1, torch.sigmoid),
    "softplus": (1, F.softplus),
    "clamp": (3, torch.clamp),  # clamp(x, lo, hi), lo and hi numbers
}



def names_in(expr: ast.Node) -> list[str]:
    """Input names read by a tensor expression (or comparison), in source order, repeats kept."""
    if isinstance(expr, ast.Name):
        return [expr.id]
    if isinstance(expr, ast.Neg):
        return names_in(expr.operand)
    if isinstance(expr, ast.BinOp):
        return names_in(expr.left) + names_in(expr.right)
    if isinstance(expr, ast.Compare):
        return [name for operand in expr.operands for name in names_in(operand)]
    if isinstance(expr, ast.Logic):
        return names_in(expr.left) + names_in(expr.right)
    if isinstance(expr, ast.Not):
        return names_in(expr.operand)
    if isinstance(expr, ast.Call):
        return [name for arg in expr.args for name in names_in(arg)]
    return []


def value_range(expr: ast.Node) -> tuple[float, float]:
    """The smallest and largest value a checked tensor expression takes for inputs in [-1, 1] (a
    bound; +-inf once it leaves float64): what its numbers alone make of it, for the overflow checks.
    A divisor that reads an input counts as size 1 (no bound holds near its zeros)."""
    if isinstance(expr, ast.Number):
        return float(expr.value), float(expr.value)
    if isinstance(expr, ast.Name):
        return -1.0, 1.0
    if isinstance(expr, ast.Neg):
        low, high = value_range(expr.operand)
        return -high, -low
    if isinstance(expr, ast.BinOp):
        (a, b), (c, d) = value_range(expr.left), value_range(expr.right)
        if expr.op in ("+", "-"):
            return ARITHMETIC[expr.op].bounds((a, b), (c, d))
        if expr.op == "/":
            divisor = _number_value(expr.right)
            size = max(abs(a), abs(b))
            if not divisor:
                return -size, size
            c = d = 1 / divisor
        products = [x * y for x in (a, b) for y in (c, d) if x and y] or [0.0]  # (0 * inf is 0 here)
        return min(products), max(products)
    if isinstance(expr, ast.Call):
        low, high = value_range(expr.args[0])
        largest = max(abs(low), abs(high))
        smallest = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
        if expr.name == "abs":
            return smallest, largest
        if expr.name == "square":
            return smallest * smallest, largest * largest
        if expr.name == "relu":
            return max(low, 0.0), max(high, 0.0)
        if expr.name == "exp":
            return _exp(low), _exp(high)
        if expr.name == "log":
            size = max(1.0, math.log(largest)) if largest > 0 else 1.0
            return -size, size
        if expr.name == "sigmoid":
            return 0.0, 1.0
        if expr.name == "softplus":
            return max(low, 0.0), max(high, 0.0) + math.log(2)
        if expr.name == "clamp":
            lowest, highest = (_number_value(arg) or 0.0 for arg in expr.args[1:])
            return min(max(low, lowest), highest), min(max(high, lowest), highest)
    return -math.inf, math.inf  # the checker rules this out


def _exp(value: float) -> float:
    return math.exp(value) if value < 709 else math.inf


def _number_value(expr: ast.Node) -> float | None:
    """The value of number arithmetic; None when it reads an input."""
    if isinstance(expr, ast.Number):
        return float(expr.value)
    if isinstance(expr, ast.Neg):
        value = _number_value(expr.operand)
        return None if value is None else -value
    if isinstance(expr, ast.BinOp):
        left, right = _number_value(expr.left), _number_value(expr.right)
        if left is None or right is None:
            return None
        return ARITHMETIC[expr.op].fold(left, right)
    return None


def compile_tensor_expr(expr: ast.Node, position: dict[str, int]) -> TensorFn:
    """A function of the term's input tensors computing the checked expression ``expr``."""
    if isinstance(expr, ast.Number):
        value = float(expr.value)
        return lambda tensors: value
    if isinstance(expr, ast.Name):
        index = position[expr.id]
        return lambda tensors: tensors[index]
    if isinstance(expr, ast.Neg):
        operand = compile_tensor_expr(expr.operand, position)
        return lambda tensors: -operand(tensors)
    if isinstance(expr, ast.BinOp):
        op = ARITHMETIC[expr.op].function
        left, right = compile_tensor_expr(expr.left, position), compile_tensor_expr(expr.right, position)
        return lambda tensors: op(left(tensors), right(tensors))
    if isinstance(expr, ast.Call):
        _, function = FUNCTIONS[expr.name]
        operand = compile_tensor_expr(expr.args[0], position)
        if expr.name == "clamp":
            low, high = (_constant(arg) for arg in expr.args[1:])
            return lambda tensors: _clamp(_as_tensor(operand(tensors)), low, high)
        return lambda tensors: function(_as_tensor(operand(tensors)))
    raise TypeError(f"not a tensor expression: {expr.kind}")  # the checker rules this out


def _clamp(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``torch.clamp`` with bounds beyond the dtype's range moved to its edge (torch refuses them:
    1e30 does not fit in float16)."""
    finfo = torch.finfo(value.dtype)
    return torch.clamp(value, min(max(low, finfo.min), finfo.max), min(max(high, finfo.min), finfo.max))


def _as_tensor(value: torch.Tensor | float) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.tensor(value)


def _constant(expr: ast.Node) -> float:
    if isinstance(expr, ast.Number):
        return float(expr.value)
    if isinstance(expr, ast.Neg):
        return -_constant(expr.operand)
    raise TypeError("clamp bounds are numbers")  # the checker rules this out
