"""Metric learning: ``contrastive`` pairs, ``triplet`` margins, ``cosine_embedding`` pairs and
``margin_ranking`` of scores."""

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


def _signs(n: int) -> parity.Maker:
    """Pair labels in torch's convention: 1 (similar, or x1 ranks higher) or -1."""
    return lambda g: torch.randint(0, 2, (n,), generator=g) * 2 - 1


class CosineEmbeddingParams(TermParams):
    x1: InputOf("embedding", "real") = Field("x1", description="first embedding of each pair [N, D]")
    x2: InputOf("embedding", "real") = Field("x2", description="second embedding of each pair, of x1's shape")
    y: InputOf("labels", "binary", "real") = Field("y", description="1 where the pair should be similar, -1 where not [N]")
    margin: float = Field(0.0, ge=-1, le=1, description="cosine similarity below which dissimilar pairs cost nothing")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _cosine_embedding_cases(s: parity.Sizes) -> list[parity.Case]:
    n, d = s.n, s.embed
    return [parity.Case("cosine_embedding(margin=0.2)", parity.shape(n, d),
                        parity.inputs(x1=parity.randn(n, d), x2=parity.randn(n, d), y=_signs(n)),
                        lambda x1, x2, y: F.cosine_embedding_loss(x1, x2, y, margin=0.2),
                        grad=("x1", "x2"), one_call=True)]


@register(
    "cosine_embedding",
    CosineEmbeddingParams,
    "Cosine embedding loss, 1 - cos for similar pairs and relu(cos - margin) for others, as F.cosine_embedding_loss.",
    example="cosine_embedding(x1=a, x2=b, y=same, margin=0.5)",
    shapes={"x1": ("N", "D"), "x2": ("N", "D")},
    cases=_cosine_embedding_cases,
)
class CosineEmbedding(Term):
    """``F.cosine_embedding_loss`` with torch's label convention: ``y = 1`` scores ``1 - cos(x1, x2)``,
    ``y = -1`` scores ``relu(cos(x1, x2) - margin)``, and any other label scores 0 (as torch's; note that
    ``contrastive`` takes 0/1 flags instead, so a 0 here is not a dissimilar pair). The cosine is torch's,
    with 1e-12 added to each squared norm, so a zero embedding gives a finite loss and gradient.
    ``reduction=none`` gives one loss per pair ``[N]``."""

    per_sample = True

    def __init__(self, params: CosineEmbeddingParams):
        super().__init__()
        self.margin, self.reduction = params.margin, params.reduction

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, x1)
        self.expect_float(1, x2)
        self.expect_same_shape(1, 0, x2, x1)
        if x1.dim() != 2:
            self.fail(0, f"expected embeddings [N, D], got shape {tuple(x1.shape)}")
        n = x1.shape[0]
        self.expect_real(2, y)
        if y.shape != (n,):
            self.fail(2, f"expected pair labels (1 or -1) of shape ({n},), got {tuple(y.shape)}")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(3, sample_weight, n, x1.dtype)
        if n == 0:  # torch's mean of no pairs is NaN
            return self.reduce(x1.sum(dim=1), sample_weight, parts)
        losses = F.cosine_embedding_loss(x1, x2, y, margin=self.margin, reduction="none")
        return self.reduce(losses, sample_weight, parts)


class MarginRankingParams(TermParams):
    x1: InputOf("logits", "real") = Field("x1", description="first score of each pair [N, ...]")
    x2: InputOf("logits", "real") = Field("x2", description="second score of each pair, of x1's shape")
    y: InputOf("labels", "binary", "real") = Field("y", description="1 where x1 should rank higher, -1 where x2 should, of x1's shape")
    margin: float = Field(0.0, ge=-MAX_CONTRASTIVE_MARGIN, le=MAX_CONTRASTIVE_MARGIN,
                          description="the required gap between the two scores")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _margin_ranking_cases(s: parity.Sizes) -> list[parity.Case]:
    n = s.n
    return [parity.Case("margin_ranking(margin=0.5)", parity.shape(n),
                        parity.inputs(x1=parity.randn(n), x2=parity.randn(n), y=_signs(n)),
                        lambda x1, x2, y: F.margin_ranking_loss(x1, x2, y.to(x1.dtype), margin=0.5),
                        grad=("x1", "x2"), one_call=True)]


@register(
    "margin_ranking",
    MarginRankingParams,
    "Margin ranking loss relu(margin - y (x1 - x2)), as F.margin_ranking_loss.",
    example="margin_ranking(x1=score_a, x2=score_b, y=order, margin=0.1)",
    shapes={"x1": ("N",), "x2": ("N",), "y": ("N",)},
    cases=_margin_ranking_cases,
)
class MarginRanking(Term):
    """``F.margin_ranking_loss``: ``relu(margin - y * (x1 - x2))`` element-wise, with ``y = 1`` where
    ``x1`` should score higher and ``y = -1`` where ``x2`` should (a label of 0 costs ``relu(margin)``,
    as in torch). ``y`` is cast to the scores' dtype. ``reduction=none`` gives the element-wise losses,
    of ``x1``'s shape."""

    per_sample = True

    def __init__(self, params: MarginRankingParams):
        super().__init__()
        self.margin, self.reduction = params.margin, params.reduction

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, x1)
        self.expect_float(1, x2)
        self.expect_same_shape(1, 0, x2, x1)
        self.expect_real(2, y)
        self.expect_same_shape(2, 0, y, x1)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(3, sample_weight, self.batch_size(0, x1), x1.dtype)
        losses = F.margin_ranking_loss(x1, x2, y.to(x1.dtype), margin=self.margin, reduction="none")
        return self.reduce(losses, sample_weight, parts)
