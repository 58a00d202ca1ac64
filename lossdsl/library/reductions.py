"""Reductions of element-wise tensor expressions: ``mean(EXPR)`` and ``sum(EXPR)``."""

from __future__ import annotations

import torch

from .. import parity
from ..registry import Term, implements
from ..tensor_eval import compile_tensor_expr
from .params.reductions import EXPRESSION_DOC, ReductionTermParams  # noqa: F401  (re-exported)


class _Reduce(Term):
    """Evaluates the expression element-wise on its inputs (which broadcast as in torch, E402 when
    they do not; integer inputs are cast to the default float dtype), then reduces it. ``log`` of
    a non-positive value is ``-inf`` or NaN, as in torch: clamp first (``log(clamp(p, 1e-6, 1))``).
    A clamp bound beyond the inputs' dtype acts as the dtype's largest finite value."""

    sample_losses = True  # in LossModule.per_sample: each sample's mean (or sum) of the expression

    def __init__(self, params: ReductionTermParams):
        super().__init__()
        position = {name: i for i, name in enumerate(params.expr.inputs)}
        self.expression = compile_tensor_expr(params.expr.root, position)
        self.weighted = params.sample_weight is not None

    def forward(self, *tensors: torch.Tensor, parts: bool = False) -> torch.Tensor:
        sample_weight = None
        if self.weighted:
            *tensors, sample_weight = tensors
        tensors = tuple(t if t.is_floating_point() else t.to(torch.get_default_dtype()) for t in tensors)
        try:
            torch.broadcast_shapes(*(t.shape for t in tensors))
        except RuntimeError:
            self._fail_to_broadcast(tensors)
        value = self.expression(tensors)
        if sample_weight is not None:
            batch = value.shape[0] if value.dim() else 1
            sample_weight = self.expect_sample_weight(len(tensors), sample_weight, batch, value.dtype)
        return self.reduce(value, sample_weight, parts)

    def _fail_to_broadcast(self, tensors: tuple[torch.Tensor, ...]) -> None:
        """Name the first input that does not broadcast with the ones before it."""
        for i in range(1, len(tensors)):
            try:
                torch.broadcast_shapes(*(t.shape for t in tensors[: i + 1]))
            except RuntimeError:
                shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in zip(self.input_names, tensors[: i + 1]))
                self.fail(i, f"the inputs' shapes do not broadcast together: {shapes}")


def _mean_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    return [parity.Case("mean(abs(pred - target))", parity.shape(n, o),
                        parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        lambda pred, target: (pred - target).abs().mean())]


@implements("mean", cases=_mean_cases)
class Mean(_Reduce):
    __doc__ = _Reduce.__doc__
    reduction = "mean"


def _sum_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    return [parity.Case("sum(square(pred - target))", parity.shape(n, o),
                        parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        lambda pred, target: (pred - target).square().sum())]


@implements("sum", cases=_sum_cases)
class Sum(_Reduce):
    __doc__ = _Reduce.__doc__
    reduction = "sum"
