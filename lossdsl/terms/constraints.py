"""Domain constraints as soft penalties: ``soft_bound(COMPARISON, penalty=..., margin=...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Union

import torch
import torch.nn.functional as F
from pydantic import Field

from .. import ast
from ..registry import Condition, Reduction, Term, TermParams, register

TensorFn = Callable[[tuple[torch.Tensor, ...]], Union[torch.Tensor, float]]


class SoftBoundParams(TermParams):
    positional = ("condition",)
    condition: Condition = Field(description="a comparison over inputs and numbers, e.g. y <= 100 or 0 <= p <= 1")
    penalty: Literal["squared", "hinge"] = Field("squared", description="squared hinge, or hinge, of the violation")
    margin: float = Field(0.0, ge=0.0, description="tighten each inequality by this much")
    reduction: Reduction = Field("mean", description="mean or sum over elements")

    def input_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(names_in(self.condition)))


def names_in(expr: ast.Node) -> list[str]:
    """Input names read by a tensor expression, in source order."""
    if isinstance(expr, ast.Name):
        return [expr.id]
    if isinstance(expr, ast.Neg):
        return names_in(expr.operand)
    if isinstance(expr, ast.BinOp):
        return names_in(expr.left) + names_in(expr.right)
    if isinstance(expr, ast.Compare):
        return [name for operand in expr.operands for name in names_in(operand)]
    return []


_ARITHMETIC = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


def compile_tensor_expr(expr: ast.Node, position: dict[str, int]) -> TensorFn:
    """Turn a checked tensor expression into a function of the term's input tensors."""
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
        op = _ARITHMETIC[expr.op]
        left, right = compile_tensor_expr(expr.left, position), compile_tensor_expr(expr.right, position)
        return lambda tensors: op(left(tensors), right(tensors))
    raise TypeError(f"not a tensor expression: {expr.kind}")  # the checker rules this out


@register("soft_bound", SoftBoundParams, "Soft penalty on where a comparison over inputs is violated.")
class SoftBound(Term):
    """Penalises the violation of each comparison, element-wise.

    ``a <= b`` (and ``<``) is violated by ``relu(a - b + margin)``, ``a >= b`` by
    ``relu(b - a + margin)``, ``a == b`` by ``|a - b|``. The penalty is the
    square of the violation (``squared``) or the violation itself (``hinge``),
    reduced over elements; a chain ``0 <= y <= 1`` adds its links.
    """

    def __init__(self, params: SoftBoundParams):
        super().__init__()
        position = {name: i for i, name in enumerate(params.input_names())}
        condition = params.condition
        self.links = tuple(
            (
                compile_tensor_expr(condition.operands[i], position),
                op,
                compile_tensor_expr(condition.operands[i + 1], position),
            )
            for i, op in enumerate(condition.ops)
        )
        self.squared = params.penalty == "squared"
        self.margin = params.margin
        self.reduction = params.reduction

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        tensors = tuple(self._as_float(i, t) for i, t in enumerate(tensors))
        for i, tensor in enumerate(tensors[1:], start=1):
            if tensor.shape != tensors[0].shape:
                self.fail(i, f"shape {tuple(tensor.shape)} differs from {self.input_names[0]}'s {tuple(tensors[0].shape)}")
        total = None
        for left, op, right in self.links:
            difference = left(tensors) - right(tensors)
            if op in ("<=", "<"):
                violation = F.relu(difference + self.margin if self.margin else difference)
            elif op in (">=", ">"):
                violation = F.relu(self.margin - difference if self.margin else -difference)
            else:
                violation = difference.abs()
            penalty = violation.square() if self.squared else violation
            if penalty.numel() == 0:
                penalty = penalty.sum()
            reduced = penalty.mean() if self.reduction == "mean" else penalty.sum()
            total = reduced if total is None else total + reduced
        return total

    def _as_float(self, position: int, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor
        if tensor.dtype == torch.bool or not tensor.is_complex():
            return tensor.to(torch.get_default_dtype())
        self.fail(position, f"expected a real tensor, got {tensor.dtype}")
