"""Metric learning: ``contrastive`` pairs and ``triplet`` margins."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from .. import parity
from ..registry import InputOf, ReductionParam, SampleWeight, Term, TermParams, register

#: A pair costs up to margin^2: 1e30, which a float32 sum of 3e8 pairs still holds.
MAX_CONTRASTIVE_MARGIN = 1e15


class ContrastiveParams(TermParams):
    a: InputOf("embedding", "real") = Field("a", description="first embedding of each pair [N, D] ([N]: D = 1)")
    b: InputOf("embedding", "real") = Field("b", description="second embedding of each pair, of a's shape")
    same: InputOf("binary", "labels", "mask") = Field("same", description="1 where the pair should match, 0 where it should not [N]")
    margin: float = Field(
        1.0, gt=0, le=MAX_CONTRASTIVE_MARGIN,
        description="distance beyond which dissimilar pairs cost nothing; at most 1e15, so that the squared "
        "margin summed over a batch stays within float32",
    )
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _contrastive_reference(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    squared = (a - b).pow(2).sum(dim=1)
    distance = squared.sqrt()
    return (same * squared + (1 - same) * F.relu(margin - distance).pow(2)).mean()


def _contrastive_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: Hadsell et al.'s contrastive loss in plain torch."""
    n, d = s.n, s.embed
    return [parity.Case("contrastive()", parity.shape(n, d),
                        parity.inputs(a=parity.randn(n, d), b=parity.randn(n, d), same=parity.flags(n, p=0.5)),
                        _contrastive_reference, grad=("a", "b"))]


@register(
    "contrastive",
    ContrastiveParams,
    "Contrastive loss: same * d^2 + (1 - same) * relu(margin - d)^2.",
    example="contrastive(margin=2.0)",
    cases=_contrastive_cases,
)
class Contrastive(Term):
    """Euclidean distance ``d`` per pair, over every dimension but the first (``[N]`` embeddings are
    numbers, ``d = |a - b|``); the square is taken without a square root, so equal embeddings are smooth.
    ``reduction=none`` gives one loss per pair ``[N]``."""

    per_sample = True

    def __init__(self, params: ContrastiveParams):
        super().__init__()
        self.margin = params.margin
        self.reduction = params.reduction

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, a)
        self.expect_float(1, b)
        self.expect_same_shape(1, 0, b, a)
        n = self.batch_size(0, a, "[N, D]")
        if same.shape != (n,):
            self.fail(2, f"expected 0/1 flags of shape ({n},), got {tuple(same.shape)}")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(3, sample_weight, n, a.dtype)
        squared = (a - b).square()
        if squared.dim() > 1:
            squared = squared.flatten(1).sum(dim=1)
        distance = squared.clamp_min(torch.finfo(a.dtype).tiny).sqrt()
        same = same.to(a.dtype)
        per_pair = same * squared + (1 - same) * F.relu(self.margin - distance).square()
        return self.reduce(per_pair, sample_weight, parts)


class TripletParams(TermParams):
    anchor: InputOf("embedding", "real") = Field("anchor", description="anchor embeddings [N, D]")
    positive: InputOf("embedding", "real") = Field("positive", description="embeddings that should be near the anchor [N, D]")
    negative: InputOf("embedding", "real") = Field("negative", description="embeddings that should be far from the anchor [N, D]")
    margin: float = Field(1.0, gt=0, description="the required gap between the two distances")
    p: PositiveInt = Field(2, description="the norm of the distance (any p: beyond 2 it is computed scaled by "
                           "the largest coordinate, so no power of a distance can overflow)")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _triplet_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.triplet_margin_loss."""
    n, d = s.n, s.embed
    return [parity.Case("triplet()", parity.shape(n, d),
                        parity.inputs(anchor=parity.randn(n, d), positive=parity.randn(n, d), negative=parity.randn(n, d)),
                        lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative),
                        grad=("anchor", "positive", "negative"), one_call=True)]


@register("triplet", TripletParams, "Triplet margin loss, as F.triplet_margin_loss.", example="triplet(margin=0.5)", cases=_triplet_cases)
class Triplet(Term):
    """``reduction=none`` gives one loss per triplet ``[N]``, as torch's."""

    per_sample = True

    def __init__(self, params: TripletParams):
        super().__init__()
        self.margin, self.p, self.reduction = params.margin, params.p, params.reduction

    def forward(
        self,
        anchor: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        sample_weight: torch.Tensor | None = None, *, parts: bool = False,
    ) -> torch.Tensor:
        self.expect_float(0, anchor)
        self.expect_float(1, positive)
        self.expect_float(2, negative)
        self.expect_same_shape(1, 0, positive, anchor)
        self.expect_same_shape(2, 0, negative, anchor)
        if anchor.dim() != 2:
            self.fail(0, f"expected embeddings [N, D], got shape {tuple(anchor.shape)}")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(3, sample_weight, anchor.shape[0], anchor.dtype)
        if sample_weight is None and anchor.shape[0] and self.p <= 2:
            return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, reduction=self.reduction)
        losses = self._losses(anchor, positive, negative)
        return self.reduce(losses, sample_weight, parts)

    def _losses(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Per-triplet losses: ``F.triplet_margin_loss``'s, whose p-norm overflows beyond p = 2 (``|d|^100``
        is inf in float32 from |d| = 2.5), so there the norm is taken scaled."""
        if self.p <= 2:
            return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, reduction="none")
        near, far = _scaled_distance(anchor, positive, self.p), _scaled_distance(anchor, negative, self.p)
        return torch.clamp_min(self.margin + near - far, 0)


def _scaled_distance(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """``F.pairwise_distance(x, y, p)``, ``||x - y + eps||_p``, as ``m * ||(x - y + eps) / m||_p`` with m
    the largest coordinate: each power is at most 1, so no p overflows. m is detached: the norm is
    homogeneous, so the value and the gradient are the norm's for any constant m."""
    difference = (x - y + 1e-6).abs()  # F.pairwise_distance's eps
    scale = difference.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(difference.dtype).tiny).detach()
    return scale[..., 0] * (difference / scale).pow(float(p)).sum(dim=-1).pow(1 / p)
