"""Regression terms: ``mse``, ``mae``, ``huber``, ``smooth_l1``, ``log_cosh``, ``quantile``,
``poisson_nll``, ``gaussian_nll``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import parity
from ..registry import Term, implements
from .params.regression import (  # noqa: F401  (re-exported)
    GaussianNLLParams,
    HuberParams,
    PoissonNLLParams,
    Quantile,
    QuantileParams,
    RegressionParams,
    SmoothL1Params,
)


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


def _pointwise_case(s: parity.Sizes, spec: str, reference: parity.Reference, **options: object) -> list[parity.Case]:
    """One case of a pointwise term on [N, outputs] predictions and targets."""
    n, o = s.n, s.outputs
    return [parity.Case(spec, parity.shape(n, o), parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o)),
                        reference, **options)]


def _mse_cases(s: parity.Sizes) -> list[parity.Case]:
    return _pointwise_case(s, "mse()", lambda pred, target: F.mse_loss(pred, target), one_call=True)


@implements("mse", cases=_mse_cases)
class MSE(_Pointwise):
    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.mse_loss(pred, target, reduction=reduction)


def _mae_cases(s: parity.Sizes) -> list[parity.Case]:
    return _pointwise_case(s, "mae()", lambda pred, target: F.l1_loss(pred, target), one_call=True)


@implements("mae", cases=_mae_cases)
class MAE(_Pointwise):
    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.l1_loss(pred, target, reduction=reduction)


def _huber_cases(s: parity.Sizes) -> list[parity.Case]:
    return _pointwise_case(s, "huber()", lambda pred, target: F.huber_loss(pred, target), one_call=True)


@implements("huber", cases=_huber_cases)
class Huber(_Pointwise):
    def __init__(self, params: HuberParams):
        super().__init__(params)
        self.delta = params.delta

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.huber_loss(pred, target, reduction=reduction, delta=self.delta)


def _smooth_l1_cases(s: parity.Sizes) -> list[parity.Case]:
    return _pointwise_case(s, "smooth_l1()", lambda pred, target: F.smooth_l1_loss(pred, target), one_call=True)


@implements("smooth_l1", cases=_smooth_l1_cases)
class SmoothL1(_Pointwise):
    """``F.smooth_l1_loss``: ``huber(delta) / delta`` for ``beta = delta > 0``, ``mae`` for ``beta = 0``."""

    def __init__(self, params: SmoothL1Params):
        super().__init__(params)
        self.beta = params.beta

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.smooth_l1_loss(pred, target, reduction=reduction, beta=self.beta)


def _log_cosh_cases(s: parity.Sizes) -> list[parity.Case]:
    return _pointwise_case(s, "log_cosh()", lambda pred, target: torch.log(torch.cosh(pred - target)).mean(),
                           note="naive log(cosh(x)); lossdsl's form does not overflow")


@implements("log_cosh", cases=_log_cosh_cases)
class LogCosh(_Pointwise):
    """Computed as ``|x| + softplus(-2|x|) - log(2)``, finite for any residual ``x``."""

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        residual = (pred - target).abs()
        loss = residual + F.softplus(-2 * residual) - math.log(2.0)
        if reduction == "none":
            return loss
        return loss.mean() if reduction == "mean" else loss.sum()


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


@implements("quantile", cases=_quantile_cases)
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


def _poisson_nll_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    counts = lambda g: torch.poisson(torch.full((n, o), 3.0), generator=g)  # noqa: E731
    return [
        parity.Case("poisson_nll()", parity.shape(n, o), parity.inputs(pred=parity.randn(n, o), target=counts),
                    lambda pred, target: F.poisson_nll_loss(pred, target), one_call=True),
        parity.Case("poisson_nll(log_input=false, full=true)", parity.shape(n, o),
                    parity.inputs(pred=lambda g: torch.rand(n, o, generator=g) * 5 + 0.1, target=counts),
                    lambda pred, target: F.poisson_nll_loss(pred, target, log_input=False, full=True), one_call=True,
                    variant="rates, full"),
    ]


@implements("poisson_nll", cases=_poisson_nll_cases)
class PoissonNLL(_Pointwise):
    """``F.poisson_nll_loss`` with torch's keywords and defaults (``log_input=true``, ``full=false``,
    ``eps=1e-8``): with log-rates, ``exp(pred) - target * pred``; with rates, ``pred - target *
    log(pred + eps)``; ``full`` adds ``target log(target) - target + log(2 pi target) / 2`` where
    ``target > 1``. The constant ``log(target!)`` is left out otherwise, so the loss may be negative.
    Where torch's value or gradient is NaN, lossdsl's is finite: the Stirling term is 0 with zero
    gradient where ``target <= 1`` (torch's gradient w.r.t. a target of 0 or below is NaN there), and
    a rate below ``-eps`` (invalid, and not checked: that would read the tensor on the host) takes the
    log of the smallest positive float instead of torch's NaN."""

    def __init__(self, params: PoissonNLLParams):
        super().__init__(params)
        self.log_input, self.full, self.eps = params.log_input, params.full, params.eps

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        if self.log_input:
            loss = torch.exp(pred) - target * pred
        else:
            loss = pred - target * torch.log((pred + self.eps).clamp_min(torch.finfo(pred.dtype).tiny))
        if self.full:
            # Both wheres: the unused branch's log(target <= 0) would make the gradient NaN through a single one.
            counted = target > 1
            safe = torch.where(counted, target, torch.ones_like(target))
            stirling = safe * torch.log(safe) - safe + 0.5 * torch.log(2 * math.pi * safe)
            loss = loss + torch.where(counted, stirling, torch.zeros_like(stirling))
        return loss if reduction == "none" else self.reduce(loss)


def _gaussian_nll_cases(s: parity.Sizes) -> list[parity.Case]:
    n, o = s.n, s.outputs
    var = lambda *shape: lambda g: torch.rand(*shape, generator=g) + 0.1  # noqa: E731
    return [
        parity.Case("gaussian_nll()", parity.shape(n, o),
                    parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o), var=var(n, o)),
                    lambda pred, target, var: F.gaussian_nll_loss(pred, target, var), grad=("pred", "var"), one_call=True),
        parity.Case("gaussian_nll(full=true)", parity.shape(n, o),
                    parity.inputs(pred=parity.randn(n, o), target=parity.randn(n, o), var=var(n, 1)),
                    lambda pred, target, var: F.gaussian_nll_loss(pred, target, var, full=True), grad=("pred", "var"),
                    one_call=True, variant="one var per sample"),
    ]


@implements("gaussian_nll", cases=_gaussian_nll_cases)
class GaussianNLL(Term):
    """``(log(max(var, eps)) + (pred - target)^2 / max(var, eps)) / 2`` element-wise, plus
    ``log(2 pi) / 2`` with ``full``, as ``F.gaussian_nll_loss``: the clamp passes the gradient through
    to ``var`` as torch's does. ``var`` has pred's shape, or a last dimension of 1 or none (one variance
    per sample, broadcast). Unlike torch, a negative variance is clamped to ``eps`` rather than raising
    (torch's check reads the tensor on the host, which a compiled forward cannot do).
    ``reduction=none`` gives the element-wise losses, of ``pred``'s shape."""

    per_sample = True

    def __init__(self, params: GaussianNLLParams):
        super().__init__()
        self.full, self.eps, self.reduction = params.full, params.eps, params.reduction

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, var: torch.Tensor, sample_weight: torch.Tensor | None = None,
        *, parts: bool = False,
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_same_shape(1, 0, target, pred)
        self.expect_float(2, var)
        if var.shape != pred.shape:
            if pred.dim() and var.shape == pred.shape[:-1]:
                var = var.unsqueeze(-1)
            if not (pred.dim() and var.shape == (*pred.shape[:-1], 1)):
                self.fail(2, f"expected variances of shape {tuple(pred.shape)} or {(*pred.shape[:-1], 1)}, "
                             f"got {tuple(var.shape)}")
        target, var = target.to(pred.dtype), var.to(pred.dtype)
        var = var + (var.clamp_min(self.eps) - var).detach()  # torch clamps under no_grad: the gradient passes
        loss = 0.5 * (torch.log(var) + (pred - target).square() / var)
        if self.full:
            loss = loss + 0.5 * math.log(2 * math.pi)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(3, sample_weight, self.batch_size(0, pred), pred.dtype)
        return self.reduce(loss, sample_weight, parts)
