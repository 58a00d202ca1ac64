"""Domain constraints as soft penalties: ``soft_bound(COMPARISON, penalty=..., margin=...)``."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, model_validator

from ..registry import Condition, ReductionParam, SampleWeight, Term, TermParams, register
from ..tensor_expr import compile_tensor_expr, names_in


class SoftBoundParams(TermParams):
    positional = ("condition",)
    condition: Condition = Field(description="a comparison over inputs and numbers, e.g. y <= 100 or 0 <= p <= 1")
    penalty: Literal["squared", "hinge", "softplus", "log_barrier"] | tuple[Literal["softplus"], PositiveFloat] = Field(
        "squared",
        description="squared (squared hinge), hinge, softplus(k) (smooth hinge, k=1 by default) or log_barrier",
    )
    margin: float = Field(0.0, ge=0.0, description="tighten each inequality by this much")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None

    @model_validator(mode="after")
    def _equality_penalties(self) -> SoftBoundParams:
        if "==" in self.condition.ops and self.penalty not in ("squared", "hinge"):
            raise ValueError("an == comparison takes penalty=squared or penalty=hinge")
        return self

    def input_names(self) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(names_in(self.condition)))
        return (*names, self.sample_weight) if self.sample_weight else names


#: Where the log barrier turns linear: ``excess = -BARRIER_EDGE``.
BARRIER_EDGE = 1e-2


@register(
    "soft_bound",
    SoftBoundParams,
    "Soft penalty on where a comparison over inputs is violated.",
    example="soft_bound(0 <= pred <= 10, margin=0.1, penalty=hinge)",
)
class SoftBound(Term):
    """Penalises the violation of each comparison, element-wise.

    - Each link ``a OP b`` of the comparison is violated by ``relu(a - b + margin)`` for ``a <= b``
      and ``a < b``, by ``relu(b - a + margin)`` for ``a >= b`` and ``a > b``, and by ``|a - b|``
      for ``a == b`` (the margin does not apply to ``==``; ``<`` is treated as ``<=``). The
      penalty is the violation squared (``squared``) or itself (``hinge``), reduced over
      elements; a chain ``0 <= y <= 1`` adds its links' reduced penalties.
    - ``penalty=softplus(k)`` is the smooth hinge ``softplus(k * e) / k`` of the signed excess
      ``e = a - b + margin`` (k = 1 when written ``softplus``). ``penalty=log_barrier`` is
      ``-log(-e)``: it grows as a satisfied bound is approached, and from ``e = -0.01`` on it
      continues as the tangent line, so a violation gets a finite, growing penalty, never inf.
      ``==`` links take ``squared`` (``(a - b)^2``) or ``hinge`` (``|a - b|``) only.
    - The operands are tensor expressions: input names, numbers, ``+ - * /``, unary minus,
      parentheses and the element-wise functions of ``mean`` (``soft_bound(upper - lower >= 0)``,
      ``soft_bound(abs(y) <= 3)``). A string, list or ``let`` name is E204; a link between two
      constants (``soft_bound(3 <= 4)``) or a nested comparison is E303.
    - All inputs of one condition have the same shape (E402; no broadcasting). Integer and bool
      inputs are cast to the default float dtype. An empty input gives 0. The term reads the
      names of its condition, in order.
    """

    def __init__(self, params: SoftBoundParams):
        super().__init__()
        position = {name: i for i, name in enumerate(params.input_names())}
        condition = params.condition
        # (left, right, is_equality, is_upper_bound), resolved once: the forward compares no strings.
        self.links = tuple(
            (
                compile_tensor_expr(condition.operands[i], position),
                compile_tensor_expr(condition.operands[i + 1], position),
                op == "==",
                op in ("<=", "<"),
            )
            for i, op in enumerate(condition.ops)
        )
        self.weighted = params.sample_weight is not None
        penalty = params.penalty
        self.penalty, self.sharpness = (penalty[0], penalty[1]) if isinstance(penalty, tuple) else (penalty, 1.0)
        self._penalty = {
            "squared": self._squared, "hinge": F.relu, "softplus": self._softplus, "log_barrier": self._log_barrier,
        }[self.penalty]
        self._equality_penalty = torch.square if self.penalty == "squared" else (lambda x: x)
        self.margin = params.margin
        self.reduction = params.reduction

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        sample_weight = None
        if self.weighted:
            *tensors, sample_weight = tensors
        tensors = tuple(self._as_float(i, t) for i, t in enumerate(tensors))
        if sample_weight is not None:
            batch = tensors[0].shape[0] if tensors[0].dim() else 1
            sample_weight = self.expect_sample_weight(len(tensors), sample_weight, batch, tensors[0].dtype)
        for i, tensor in enumerate(tensors[1:], start=1):
            if tensor.shape != tensors[0].shape:
                self.fail(i, f"shape {tuple(tensor.shape)} differs from {self.input_names[0]}'s {tuple(tensors[0].shape)}")
        total = None
        for left, right, equality, upper in self.links:
            difference = left(tensors) - right(tensors)
            if equality:
                penalty = self._equality_penalty(difference.abs())
            else:
                # How far past the (tightened) bound: positive when violated.
                excess = difference if upper else -difference
                if self.margin:
                    excess = excess + self.margin
                penalty = self._penalty(excess)
            reduced = self.reduce(penalty, sample_weight)
            total = reduced if total is None else total + reduced
        return total

    @staticmethod
    def _squared(excess: torch.Tensor) -> torch.Tensor:
        return F.relu(excess).square()

    def _softplus(self, excess: torch.Tensor) -> torch.Tensor:
        return F.softplus(excess, beta=self.sharpness)

    @staticmethod
    def _log_barrier(excess: torch.Tensor) -> torch.Tensor:
        """-log(-excess) inside the bound, continued linearly (with matching slope) from
        excess = -BARRIER_EDGE on, so it never returns inf and still pushes a violation back."""
        inside = -excess
        safe = torch.clamp(inside, min=BARRIER_EDGE)
        barrier = -torch.log(safe)
        linear = -math.log(BARRIER_EDGE) + (excess + BARRIER_EDGE) / BARRIER_EDGE
        return torch.where(inside > BARRIER_EDGE, barrier, linear)

    def _as_float(self, position: int, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor
        if tensor.dtype == torch.bool or not tensor.is_complex():
            return tensor.to(torch.get_default_dtype())
        self.fail(position, f"expected a real tensor, got {tensor.dtype}")
