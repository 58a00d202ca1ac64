"""Regression terms: ``mse``, ``mae``, ``huber``, ``smooth_l1``, ``log_cosh``, ``quantile``."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from .. import parity
from ..registry import Input, Layout, ReductionParam, SampleWeight, Term, TermParams, register, same_shape_layouts


class RegressionParams(TermParams):
    pred: Input = Field("pred", description="the input holding predictions")
    target: Input = Field("target", description="the input holding targets, of pred's shape")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


class HuberParams(RegressionParams):
    positional = ("delta",)
    delta: float = Field(1.0, gt=0, description="where the loss turns from quadratic to linear")


class SmoothL1Params(RegressionParams):
    positional = ("beta",)
    beta: float = Field(1.0, ge=0, description="where the loss turns from quadratic to linear; 0 gives mae")


def _pointwise_layouts(params: RegressionParams) -> tuple[Layout, ...]:
    return same_shape_layouts("pred", "target")


class _Pointwise(Term):
    """An element-wise loss of ``pred`` and ``target`` of one shape.

    ``pred`` must be floating point and ``target`` of the same shape (no broadcasting);
    ``target`` is cast to ``pred``'s dtype. An empty batch gives 0 (torch gives NaN).
    ``reduction=none`` gives the element-wise losses, of ``pred``'s shape.
    """

    per_sample = True

    def __init__(self, params: RegressionParams):
        super().__init__()
        self.reduction = params.reduction

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_same_shape(1, 0, target, pred)
        target = target.to(pred.dtype)
        if sample_weight is None and pred.numel():
            return self.elementwise(pred, target, self.reduction)  # torch's fused reduction
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, self.batch_size(0, pred), pred.dtype)
        return self.reduce(self.elementwise(pred, target, "none"), sample_weight, parts)


def _mse_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    return [parity.Case("mse()", parity.shape(n, o), parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        lambda pred, target: F.mse_loss(pred, target), one_call=True)]


@register("mse", RegressionParams, "Mean squared error, as F.mse_loss.", example="mse(pred=aux_pred, target=aux_target)",
          shapes=_pointwise_layouts, cases=_mse_cases)
class MSE(_Pointwise):
    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.mse_loss(pred, target, reduction=reduction)


def _mae_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    return [parity.Case("mae()", parity.shape(n, o), parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        lambda pred, target: F.l1_loss(pred, target), one_call=True)]


@register("mae", RegressionParams, "Mean absolute error, as F.l1_loss.", example="mae(reduction=sum)",
          shapes=_pointwise_layouts, cases=_mae_cases)
class MAE(_Pointwise):
    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.l1_loss(pred, target, reduction=reduction)


def _huber_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    return [parity.Case("huber()", parity.shape(n, o), parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        lambda pred, target: F.huber_loss(pred, target), one_call=True)]


@register(
    "huber",
    HuberParams,
    "Huber loss, quadratic within delta and linear beyond, as F.huber_loss.",
    example="huber(0.5)",
    shapes=_pointwise_layouts,
    cases=_huber_cases,
)
class Huber(_Pointwise):
    def __init__(self, params: HuberParams):
        super().__init__(params)
        self.delta = params.delta

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.huber_loss(pred, target, reduction=reduction, delta=self.delta)


def _smooth_l1_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    return [parity.Case("smooth_l1()", parity.shape(n, o), parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        lambda pred, target: F.smooth_l1_loss(pred, target), one_call=True)]


@register("smooth_l1", SmoothL1Params, "Smooth L1 loss, as F.smooth_l1_loss.", example="smooth_l1(beta=0.5)",
          shapes=_pointwise_layouts, cases=_smooth_l1_cases)
class SmoothL1(_Pointwise):
    """``F.smooth_l1_loss``: ``huber(delta) / delta`` for ``beta = delta > 0``, ``mae`` for ``beta = 0``."""

    def __init__(self, params: SmoothL1Params):
        super().__init__(params)
        self.beta = params.beta

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.smooth_l1_loss(pred, target, reduction=reduction, beta=self.beta)


def _log_cosh_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    return [parity.Case("log_cosh()", parity.shape(n, o), parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        lambda pred, target: torch.log(torch.cosh(pred - target)).mean(),
                        note="naive log(cosh(x)); lossdsl's form does not overflow")]


@register(
    "log_cosh",
    RegressionParams,
    "log(cosh(pred - target)): quadratic near zero, linear far away.",
    example="log_cosh()",
    shapes=_pointwise_layouts,
    cases=_log_cosh_cases,
)
class LogCosh(_Pointwise):
    """Computed as ``|x| + softplus(-2|x|) - log(2)``, finite for any residual ``x``."""

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        residual = (pred - target).abs()
        loss = residual + F.softplus(-2 * residual) - math.log(2.0)
        if reduction == "none":
            return loss
        return loss.mean() if reduction == "mean" else loss.sum()


Quantile = Annotated[float, Field(gt=0, lt=1)]


class QuantileParams(TermParams):
    positional = ("q",)
    pred: Input = Field("pred", description="predictions [N, ...], or [N, ..., Q] with one column per quantile")
    target: Input = Field("target", description="targets [N, ...]")
    q: Quantile | Annotated[tuple[Quantile, ...], Field(min_length=1)] = Field(
        0.5, description="the quantile in (0, 1), or a list of them (one pred column each)"
    )
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _quantile_layouts(params: QuantileParams) -> tuple[Layout, ...]:
    """A list of Q quantiles takes one pred column each: pred [..., Q] beside targets [...]."""
    if not isinstance(params.q, tuple):
        return same_shape_layouts("pred", "target")
    columns = len(params.q)
    return ({"pred": ("N", columns), "target": ("N",)}, {"pred": ("N", "C", columns), "target": ("N", "C")})


def _quantile_reference(quantiles: tuple[float, ...]) -> parity.Reference:
    q_cpu = torch.tensor(quantiles)
    cache: dict[torch.device, torch.Tensor] = {}

    def reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = cache.get(pred.device)
        if q is None:
            q = cache[pred.device] = q_cpu.to(pred.device)
        residual = target.unsqueeze(-1) - pred
        return torch.maximum(q * residual, (q - 1) * residual).mean()

    return reference


def _quantile_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: the pinball loss in plain torch."""
    n = s.n
    return [parity.Case("quantile(q=[0.1, 0.5, 0.9])", parity.shape(n, 3),
                        parity.inputs(pred=parity.randn(n, 3), target=parity.randn(n)), _quantile_reference((0.1, 0.5, 0.9)))]


@register(
    "quantile",
    QuantileParams,
    "Pinball loss max(q r, (q - 1) r) of the residual r = target - pred; several quantiles at once.",
    example="quantile(q=[0.1, 0.5, 0.9])",
    shapes=_quantile_layouts,
    cases=_quantile_cases,
)
class QuantileLoss(Term):
    """With a list of Q quantiles, ``pred`` has a last dimension of Q (one column per quantile), the
    target is compared with each column, and the loss averages over columns and samples.
    ``reduction=none`` gives the element-wise losses, of ``pred``'s shape."""

    per_sample = True

    def __init__(self, params: QuantileParams):
        super().__init__()
        self.several = isinstance(params.q, tuple)
        quantiles = params.q if isinstance(params.q, tuple) else (params.q,)
        self.register_buffer("quantiles", torch.tensor(quantiles, dtype=torch.float64), persistent=False)
        self.q = quantiles[0]
        self.reduction = params.reduction

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        if self.several:
            expected = (*target.shape, self.quantiles.numel())
            if tuple(pred.shape) != expected:
                self.fail(0, f"{self.quantiles.numel()} quantiles need pred of shape {expected}, got {tuple(pred.shape)}")
            residual = target.to(pred.dtype).unsqueeze(-1) - pred
            q = self.quantiles.to(pred.dtype)
        else:
            self.expect_same_shape(1, 0, target, pred)
            residual = target.to(pred.dtype) - pred
            q = self.q
        loss = torch.maximum(q * residual, (q - 1) * residual)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, self.batch_size(0, pred), pred.dtype)
        return self.reduce(loss, sample_weight, parts)
