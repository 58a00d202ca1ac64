"""Divergences: ``kl_normal`` (the VAE term), ``kl`` and ``js`` between categorical distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import parity
from ..registry import Term, accumulation_dtype, implements
from .params.divergence import JSParams, KLNormalParams, KLParams


def _kl_normal_reference(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def _kl_normal_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: the closed form of KL(N(mu, exp(logvar)) || N(0, 1)), summed over latents."""
    n, d = s.n, s.embed
    return [parity.Case("kl_normal()", parity.shape(n, d), parity.inputs(mu=parity.randn(n, d), logvar=parity.randn(n, d)),
                        _kl_normal_reference, grad=("mu", "logvar"))]


@implements("kl_normal", cases=_kl_normal_cases)
class KLNormal(Term):
    """``-0.5 * sum(1 + logvar - mu^2 - exp(logvar))`` over every dimension but the first, then
    ``mean`` (or ``sum``) over the batch. Statistics ``[N]`` have one latent dimension each.
    ``reduction=none`` gives each sample's divergence ``[N]`` (summed over its latent dimensions)."""

    per_sample = True

    def __init__(self, params: KLNormalParams):
        super().__init__()
        self.reduction = params.reduction

    def forward(
        self, mu: torch.Tensor, logvar: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, mu)
        self.expect_float(1, logvar)
        self.expect_same_shape(1, 0, logvar, mu)
        n = self.batch_size(0, mu, "[N, D]")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, n, mu.dtype)
        per_element = 1 + logvar - mu.square() - logvar.exp()
        if per_element.dim() > 1:  # summed in float32 at least, then back to the inputs' dtype
            per_sample = per_element.flatten(1).sum(dim=1, dtype=accumulation_dtype(mu.dtype)).to(mu.dtype)
        else:
            per_sample = per_element
        return self.reduce(-0.5 * per_sample, sample_weight, parts)


def _kl_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.kl_div on log-softmaxes, batchmean."""
    n, c = s.n, s.classes
    return [parity.Case("kl(p=teacher, q=student)", parity.shape(n, c),
                        parity.inputs(teacher=parity.randn(n, c), student=parity.randn(n, c)),
                        lambda teacher, student: F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1),
                                                          log_target=True, reduction="batchmean"),
                        grad=("student",), one_call=True)]


@implements("kl", cases=_kl_cases)
class KL(Term):
    """``F.kl_div(log_softmax(q), log_softmax(p), log_target=True, reduction="batchmean")``: summed
    over classes (and any further dimensions), then ``mean`` (or ``sum``) over the batch. A class
    with P = 0 (a logit of ``-inf``: a masked teacher output) adds 0, with zero gradients, as in
    ``F.kl_div`` on probability targets (``0 log 0 = 0``); where Q = 0 and P > 0 the divergence is inf.
    ``reduction=none`` gives each sample's divergence ``[N]``: torch's element-wise ``reduction="none"``
    summed over classes, the sum the term is defined by."""

    per_sample = True

    def __init__(self, params: KLParams):
        super().__init__()
        self.reduction = params.reduction

    def forward(self, p: torch.Tensor, q: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False) -> torch.Tensor:
        self.expect_float(0, p)
        self.expect_float(1, q)
        self.expect_same_shape(1, 0, q, p)
        if p.dim() < 2:
            self.fail(0, f"expected logits [N, C, ...], got shape {tuple(p.shape)}")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, p.shape[0], p.dtype)
        log_p, log_q = F.log_softmax(p, dim=1), F.log_softmax(q, dim=1)
        # P(c) log(P(c) / Q(c)), with 0 log 0 = 0 where P(c) is 0 (a masked logit of -inf), as F.kl_div
        # does for zero targets: its log_target form would give 0 * (-inf) = NaN. Both logs are zeroed
        # there first (the double where), so the masked branch's gradient is 0 too, not 0 * inf.
        # NaN is not -inf: a NaN logit still gives NaN.
        present = log_p != float("-inf")
        log_p, log_q = log_p.where(present, 0.0), log_q.where(present, 0.0)
        per_element = torch.where(present, log_p.exp() * (log_p - log_q), 0.0)
        per_sample = per_element.flatten(1).sum(dim=1, dtype=accumulation_dtype(p.dtype)).to(p.dtype)
        return self.reduce(per_sample, sample_weight, parts)


def _kl_rows(a: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """kornia's ``_kl_div_2d(a, m)``, ``F.kl_div(log m, a, reduction="none")`` summed over dim 1."""
    return F.kl_div(log_m, a, reduction="none").sum(dim=1)


def _js_reference(pred: torch.Tensor, target: torch.Tensor, softmax: bool = True) -> torch.Tensor:
    """kornia's ``js_div_loss_2d`` formula (kornia/losses/divergence.py), over dim 1 in plain torch:
    ``0.5 KL(target || m) + 0.5 KL(p || m)`` with ``m = (p + target) / 2``, averaged."""
    p = pred.softmax(dim=1) if softmax else pred
    log_m = (0.5 * (p + target)).log()
    return (0.5 * _kl_rows(target, log_m) + 0.5 * _kl_rows(p, log_m)).mean()


def _distribution(*shape: int) -> parity.Maker:
    return lambda g: torch.randn(*shape, generator=g).softmax(dim=1)


def _js_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: kornia's js_div_loss_2d formula in plain torch, on softmax(pred), and on probabilities."""
    n, c = s.n, s.classes
    return [
        parity.Case("js()", parity.shape(n, c), parity.inputs(pred=parity.randn(n, c), target=_distribution(n, c)),
                    _js_reference, note="kornia js_div_loss_2d's formula on softmax(pred)"),
        parity.Case("js(softmax=false)", parity.shape(n, c), parity.inputs(pred=_distribution(n, c), target=_distribution(n, c)),
                    lambda pred, target: _js_reference(pred, target, softmax=False), variant="probabilities",
                    note="kornia js_div_loss_2d's formula"),
    ]


@implements("js", cases=_js_cases)
class JS(Term):
    """``0.5 KL(target || m) + 0.5 KL(p || m)`` with ``m = (p + target) / 2`` and ``p = softmax(pred)``
    over dim 1 (``softmax=false``: ``p = pred``), in nats, between 0 and ``log 2``; summed over classes
    (and any further dimensions, as ``kl``), then ``mean`` (or ``sum``) over the batch. This is kornia's
    ``js_div_loss_2d`` formula over dim 1, where kornia takes probability heatmaps ``[B, K, H, W]``, each
    a distribution over ``H * W``, and averages over ``B`` and ``K``: kornia's number is
    ``js(softmax=false)`` on its heatmaps reshaped to ``[B * K, H * W]``. A class where both
    distributions are 0 adds 0 with zero gradients. The rows are taken to be distributions (not checked:
    that would read the tensors on the host); with ``softmax=false``, rows that are not (logits by
    mistake) give a finite loss, never NaN, but not a divergence. ``reduction=none`` gives each sample's divergence ``[N]``."""

    per_sample = True

    def __init__(self, params: JSParams):
        super().__init__()
        self.softmax, self.reduction = params.softmax, params.reduction

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_float(1, target)
        self.expect_same_shape(1, 0, target, pred)
        if pred.dim() < 2:
            self.fail(0, f"expected distributions over dim 1, [N, C, ...], got shape {tuple(pred.shape)}")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, pred.shape[0], pred.dtype)
        p = torch.softmax(pred, dim=1) if self.softmax else pred
        target = target.to(pred.dtype)
        mixture = 0.5 * (p + target)
        # a log (log a - log m), and 0 where a is 0: the logs see 1 there (the double where), so that
        # neither the value nor the gradient meets 0 * log 0.
        per_element = 0.5 * (self._kl_part(target, mixture) + self._kl_part(p, mixture))
        per_sample = per_element.flatten(1).sum(dim=1, dtype=accumulation_dtype(pred.dtype)).to(pred.dtype)
        return self.reduce(per_sample, sample_weight, parts)

    @staticmethod
    def _kl_part(a: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        present = a > 0
        ones = torch.ones_like(a)
        # The mixture clamped above 0 too: with softmax=false a row that is no distribution (logits
        # passed by mistake) would take the log of a negative mixture; its loss is then finite, not NaN.
        tiny = torch.finfo(mixture.dtype).tiny
        safe_a, safe_m = torch.where(present, a, ones), torch.where(present, mixture.clamp(min=tiny), ones)
        return torch.where(present, a * (safe_a.log() - safe_m.log()), torch.zeros_like(a))
