"""Metric learning: ``contrastive`` pairs, ``triplet`` margins, ``cosine_embedding`` pairs and
``margin_ranking`` of scores."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import parity
from ..registry import Term, accumulation_dtype, implements, safe_divide
from .params.metric_learning import (  # noqa: F401  (re-exported)
    MAX_BATCH_MARGIN,
    MAX_CONTRASTIVE_MARGIN,
    MAX_SQUARED_MARGIN,
    BatchContrastiveParams,
    BatchReduction,
    BatchTripletParams,
    ContrastiveParams,
    CosineEmbeddingParams,
    MarginRankingParams,
    Mining,
    TripletParams,
    _BatchParams,
)


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


@implements("contrastive", cases=_contrastive_cases)
class Contrastive(Term):
    """Euclidean distance ``d`` per pair, over every dimension but the first (``[N]`` embeddings are
    numbers, ``d = |a - b|``); the square is taken without a square root, so equal embeddings are smooth.
    ``reduction=none`` gives one loss per pair ``[N]``. pytorch-metric-learning's ``ContrastiveLoss`` is
    another form, not squared, with two margins, over the pairs of a labelled batch: ``batch_contrastive``."""

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


def _triplet_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.triplet_margin_loss."""
    n, d = s.n, s.embed
    return [parity.Case("triplet()", parity.shape(n, d),
                        parity.inputs(anchor=parity.randn(n, d), positive=parity.randn(n, d), negative=parity.randn(n, d)),
                        lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative),
                        grad=("anchor", "positive", "negative"), one_call=True),
            parity.Case("triplet(margin=0.5, swap=true)", parity.shape(n, d),
                        parity.inputs(anchor=parity.randn(n, d), positive=parity.randn(n, d), negative=parity.randn(n, d)),
                        lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative, margin=0.5, swap=True),
                        grad=("anchor", "positive", "negative"), one_call=True, variant="swap")]


@implements("triplet", cases=_triplet_cases)
class Triplet(Term):
    """``reduction=none`` gives one loss per triplet ``[N]``, as torch's. ``swap=true`` is torch's
    distance swap: ``d(positive, negative)`` replaces ``d(anchor, negative)`` where it is smaller.
    For triplets formed from labels inside a batch, as pytorch-metric-learning does, see
    ``batch_triplet``."""

    per_sample = True

    def __init__(self, params: TripletParams):
        super().__init__()
        self.margin, self.p, self.reduction, self.swap = params.margin, params.p, params.reduction, params.swap

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
            return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, swap=self.swap,
                                         reduction=self.reduction)
        losses = self._losses(anchor, positive, negative)
        return self.reduce(losses, sample_weight, parts)

    def _losses(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Per-triplet losses: ``F.triplet_margin_loss``'s, whose p-norm overflows beyond p = 2 (``|d|^100``
        is inf in float32 from |d| = 2.5), so there the norm is taken scaled."""
        if self.p <= 2:
            return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, swap=self.swap,
                                         reduction="none")
        near, far = _scaled_distance(anchor, positive, self.p), _scaled_distance(anchor, negative, self.p)
        if self.swap:
            far = torch.minimum(far, _scaled_distance(positive, negative, self.p))
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


def _cosine_embedding_cases(s: parity.Sizes) -> list[parity.Case]:
    n, d = s.n, s.embed
    return [parity.Case("cosine_embedding(margin=0.2)", parity.shape(n, d),
                        parity.inputs(x1=parity.randn(n, d), x2=parity.randn(n, d), y=_signs(n)),
                        lambda x1, x2, y: F.cosine_embedding_loss(x1, x2, y, margin=0.2),
                        grad=("x1", "x2"), one_call=True)]


@implements("cosine_embedding", cases=_cosine_embedding_cases)
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


def _margin_ranking_cases(s: parity.Sizes) -> list[parity.Case]:
    n = s.n
    return [parity.Case("margin_ranking(margin=0.5)", parity.shape(n),
                        parity.inputs(x1=parity.randn(n), x2=parity.randn(n), y=_signs(n)),
                        lambda x1, x2, y: F.margin_ranking_loss(x1, x2, y.to(x1.dtype), margin=0.5),
                        grad=("x1", "x2"), one_call=True)]


@implements("margin_ranking", cases=_margin_ranking_cases)
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


# -- Pairs and triplets formed inside the batch, from labels (pytorch-metric-learning's way) ---------


class _BatchTerm(Term):
    """Shared by ``batch_triplet`` and ``batch_contrastive``: the inputs' checks, the distances and
    the chosen triplets, all as masks over the batch (no boolean indexing of data-dependent size,
    no host synchronisation)."""

    def __init__(self, params: _BatchParams):
        super().__init__()
        self.mining, self.mining_margin = params.mining, params.mining_margin
        self.normalize, self.reduction = params.normalize, params.reduction

    def _distances(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The [N, N] Euclidean distances (in float32 at least) and the masks of positive pairs
        (one class, two samples) and negative pairs (two classes)."""
        self.expect_float(0, embeddings)
        if embeddings.dim() != 2:
            self.fail(0, f"expected embeddings [N, D], got shape {tuple(embeddings.shape)}")
        n = embeddings.shape[0]
        self.expect_real(1, labels)
        if labels.shape != (n,):
            self.fail(1, f"expected one label per embedding, of shape ({n},), got {tuple(labels.shape)}")
        x = embeddings.to(accumulation_dtype(embeddings.dtype))
        if self.normalize:
            x = F.normalize(x, p=2, dim=1)
        # cdist, as pytorch-metric-learning's LpDistance: its gradient is 0, not NaN, at distance 0.
        distance = torch.cdist(x, x)
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(n, dtype=torch.bool, device=labels.device)
        return distance, positive, ~same

    def _triplets(self, distance: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """[N, N, N] bool, (anchor, positive, negative): the triplets that mining=all or semi_hard keeps.
        Semi-hard is judged on the distances without their gradient, as a miner does."""
        chosen = positive[:, :, None] & negative[:, None, :]
        if self.mining == "semi_hard":
            d = distance.detach()
            gap = d[:, None, :] - d[:, :, None]  # d_an - d_ap
            chosen = chosen & (gap > 0) & (gap <= self.mining_margin)
        return chosen

    @staticmethod
    def _hardest(distance: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """batch_hard: each anchor's farthest positive and nearest negative (their indices [N]), and
        whether it has both (BatchHardMiner leaves out the anchors that have not)."""
        d = distance.detach()
        if d.shape[0] == 0:  # max over an empty row raises; an empty batch has no anchor
            empty = torch.zeros(0, dtype=torch.long, device=d.device)
            return empty, empty, positive.any(dim=1)
        farthest = d.masked_fill(~positive, float("-inf")).max(dim=1).indices
        nearest = d.masked_fill(~negative, float("inf")).min(dim=1).indices
        return farthest, nearest, positive.any(dim=1) & negative.any(dim=1)

    def _average(self, losses: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The chosen losses reduced. ``chosen`` is a mask, or counts of how often each entry of
        ``losses`` is chosen (0 where it is not): a pair that several triplets share counts as often
        as it is listed. Counts are summed as integers, exactly."""
        if chosen.dtype == torch.bool:
            kept = torch.where(chosen, losses, 0.0)
            above_zero = kept > 0
        else:
            kept = losses * chosen.to(losses.dtype)
            above_zero = chosen * (losses > 0)
        total = kept.sum()
        if self.reduction == "sum":
            return total
        count = above_zero.sum() if self.reduction == "mean_nonzero" else chosen.sum()
        return safe_divide(total, count.to(total.dtype))


def _triplet_indices(distance: torch.Tensor, labels: torch.Tensor, mining: str, mining_margin: float) -> tuple[torch.Tensor, ...]:
    """The reference's (anchor, positive, negative) index lists, pytorch-metric-learning's way
    (lmu.get_all_triplets_indices, TripletMarginMiner, BatchHardMiner): torch.where on the masks."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    if mining == "batch_hard":
        d = distance.detach()
        far = torch.where(positive, d, float("-inf")).max(dim=1)
        near = torch.where(~same, d, float("inf")).min(dim=1)
        (anchor,) = torch.where(positive.any(dim=1) & (~same).any(dim=1))
        return anchor, far.indices[anchor], near.indices[anchor]
    anchor, pos, neg = torch.where(positive[:, :, None] & ~same[:, None, :])
    if mining == "semi_hard":
        gap = (distance[anchor, neg] - distance[anchor, pos]).detach()
        keep = (gap > 0) & (gap <= mining_margin)
        anchor, pos, neg = anchor[keep], pos[keep], neg[keep]
    return anchor, pos, neg


def _reference_reduce(losses: torch.Tensor, reduction: str, embeddings: torch.Tensor) -> torch.Tensor:
    """pytorch-metric-learning's reducers on a list of losses (0 * embeddings for none)."""
    if reduction == "mean_nonzero":
        losses = losses[losses > 0]
    if reduction == "sum":
        return losses.sum() + (embeddings * 0).sum()
    return losses.mean() if len(losses) else (embeddings * 0).sum()


def _batch_triplet_reference(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.05, mining: str = "all",
                             mining_margin: float = 0.2, swap: bool = False, normalize: bool = True,
                             reduction: str = "mean_nonzero") -> torch.Tensor:
    """pytorch-metric-learning's TripletMarginLoss (with its miner) in plain torch: index lists, then
    the losses of those triplets, then the reducer (losses/triplet_margin_loss.py)."""
    x = F.normalize(embeddings, p=2, dim=1) if normalize else embeddings
    distance = torch.cdist(x, x)
    anchor, pos, neg = _triplet_indices(distance, labels, mining, mining_margin)
    near, far = distance[anchor, pos], distance[anchor, neg]
    if swap:
        far = torch.min(far, distance[pos, neg])
    return _reference_reduce(F.relu(near - far + margin), reduction, embeddings)


def _batch_size(s: parity.Sizes) -> int:
    """mining=all and semi_hard hold [N, N, N] triplets: the batches of metric learning (PML's
    examples use 32 to 256), not the benchmark's largest."""
    return min(s.n, 256)


def _batch_inputs(s: parity.Sizes) -> Callable[[torch.Generator], parity.Inputs]:
    n = _batch_size(s)
    return parity.inputs(embeddings=parity.randn(n, s.embed), labels=parity.labels(n, classes=s.classes))


def _batch_triplet_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: TripletMarginLoss and its miners, pytorch-metric-learning's algorithm written out
    (tests/test_metric_learning_depth.py checks against the package itself)."""
    n = _batch_size(s)
    note = "PML's TripletMarginLoss in plain torch"
    specs = {
        "batch_triplet()": {},
        "batch_triplet(mining=batch_hard, margin=0.2)": {"mining": "batch_hard", "margin": 0.2},
        "batch_triplet(mining=semi_hard, margin=0.2, swap=true)": {"mining": "semi_hard", "margin": 0.2, "swap": True},
        "batch_triplet(normalize=false, margin=1.0, reduction=mean)": {"normalize": False, "margin": 1.0, "reduction": "mean"},
    }
    return [parity.Case(spec, parity.shape(n, s.embed), _batch_inputs(s),
                        functools.partial(_batch_triplet_reference, **options), grad=("embeddings",), note=note,
                        variant=options.get("mining", "all"))
            for spec, options in specs.items()]


@implements("batch_triplet", cases=_batch_triplet_cases)
class BatchTriplet(_BatchTerm):
    """``relu(d_ap - d_an + margin)`` for triplets (anchor, positive, negative) formed inside the
    batch: the positive shares the anchor's label, the negative does not. ``d`` is the Euclidean
    distance of the embeddings scaled to unit length (``normalize=false``: as given). The defaults are
    pytorch-metric-learning's: ``batch_triplet()`` is ``TripletMarginLoss()`` (``margin=0.05``, every
    triplet, the mean of the losses above 0); ``triplet`` takes the three embeddings itself, with
    torch's defaults (``margin=1``, mean over all).

    ``mining=all`` and ``semi_hard`` hold ``[N, N, N]`` masks and losses (16.7 million entries at
    N = 256); ``batch_hard`` holds ``[N, N]``. A batch without a valid triplet (one class, or one
    sample per class for the positives) gives 0 with zero gradients. As in a miner, the choice of
    triplets takes no gradient; the losses do."""

    def __init__(self, params: BatchTripletParams):
        super().__init__(params)
        self.margin, self.swap = params.margin, params.swap

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distance, positive, negative = self._distances(embeddings, labels)
        if self.mining == "batch_hard":
            farthest, nearest, counts = self._hardest(distance, positive, negative)
            near = distance.gather(1, farthest[:, None])[:, 0]
            far = distance.gather(1, nearest[:, None])[:, 0]
            if self.swap:
                far = torch.minimum(far, distance[farthest, nearest])
        else:
            counts = self._triplets(distance, positive, negative)
            near, far = distance[:, :, None], distance[:, None, :]
            if self.swap:  # d_pn of triplet (a, p, n) is distance[p, n]
                far = torch.minimum(far, distance[None, :, :])
        losses = F.relu((near + self.margin) - far)  # the margin added to [N, N, 1], not to [N, N, N]
        return self._average(losses, counts).to(embeddings.dtype)


def _batch_contrastive_reference(embeddings: torch.Tensor, labels: torch.Tensor, pos_margin: float = 0.0,
                                 neg_margin: float = 1.0, mining: str = "all", mining_margin: float = 0.2,
                                 normalize: bool = True, reduction: str = "mean_nonzero") -> torch.Tensor:
    """pytorch-metric-learning's ContrastiveLoss (with its miner) in plain torch: the pair lists
    (lmu.get_all_pairs_indices, or a miner's triplets (a, p, n) as pairs (a, p) and (a, n)), each
    part reduced apart, the two summed (losses/contrastive_loss.py, reducers/multiple_reducers.py)."""
    x = F.normalize(embeddings, p=2, dim=1) if normalize else embeddings
    distance = torch.cdist(x, x)
    if mining == "all":
        same = labels[:, None] == labels[None, :]
        a1, p = torch.where(same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device))
        a2, n = torch.where(~same)
    else:
        a1, p, n = _triplet_indices(distance, labels, mining, mining_margin)
        a2 = a1
    near = F.relu(distance[a1, p] - pos_margin)
    far = F.relu(neg_margin - distance[a2, n])
    return _reference_reduce(near, reduction, embeddings) + _reference_reduce(far, reduction, embeddings)


def _batch_contrastive_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: ContrastiveLoss and its miners, pytorch-metric-learning's algorithm written out
    (tests/test_metric_learning_depth.py checks against the package itself)."""
    n = _batch_size(s)
    specs = {
        "batch_contrastive()": {},
        "batch_contrastive(mining=batch_hard, pos_margin=0.2, neg_margin=0.8)": {"mining": "batch_hard", "pos_margin": 0.2, "neg_margin": 0.8},
        "batch_contrastive(mining=semi_hard, mining_margin=0.3)": {"mining": "semi_hard", "mining_margin": 0.3},
        "batch_contrastive(normalize=false, neg_margin=2.0, reduction=mean)": {"normalize": False, "neg_margin": 2.0, "reduction": "mean"},
    }
    return [parity.Case(spec, parity.shape(n, s.embed), _batch_inputs(s),
                        functools.partial(_batch_contrastive_reference, **options), grad=("embeddings",),
                        note="PML's ContrastiveLoss in plain torch", variant=options.get("mining", "all"))
            for spec, options in specs.items()]


@implements("batch_contrastive", cases=_batch_contrastive_cases)
class BatchContrastive(_BatchTerm):
    """pytorch-metric-learning's margin form over pairs formed inside the batch:
    ``relu(d - pos_margin)`` for each positive pair (one label, two samples) and
    ``relu(neg_margin - d)`` for each negative pair (two labels), each part reduced apart (by default
    the mean of its losses above 0) and the two parts summed, as PML's ``ContrastiveLoss`` does.
    ``d`` is as in ``batch_triplet``. ``contrastive`` is the other form: given pairs, Hadsell et
    al.'s squared ``same * d^2 + (1 - same) * relu(margin - d)^2``.

    ``mining=all`` takes every ordered pair ((i, j) and (j, i) both, as PML lists them); with
    ``batch_hard`` or ``semi_hard`` the pairs are those of the mined triplets (a, p, n): (a, p) and
    (a, n), a pair counted as often as a triplet holds it, as PML turns a miner's triplets into pairs.
    One deliberate difference: PML returns 0 when each of its pair lists holds at most one pair
    (one mined triplet, say); lossdsl scores that pair."""

    def __init__(self, params: BatchContrastiveParams):
        super().__init__(params)
        self.pos_margin, self.neg_margin = params.pos_margin, params.neg_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distance, positive, negative = self._distances(embeddings, labels)
        if self.mining == "all":
            pos_counts, neg_counts = positive, negative
        elif self.mining == "batch_hard":
            farthest, nearest, valid = self._hardest(distance, positive, negative)
            columns = torch.arange(distance.shape[0], device=distance.device)[None, :]
            pos_counts = (columns == farthest[:, None]) & valid[:, None]
            neg_counts = (columns == nearest[:, None]) & valid[:, None]
        else:  # how many mined triplets hold each pair
            triplets = self._triplets(distance, positive, negative)
            pos_counts, neg_counts = triplets.sum(dim=2), triplets.sum(dim=1)
        near = F.relu(distance - self.pos_margin)
        far = F.relu(self.neg_margin - distance)
        total = self._average(near, pos_counts) + self._average(far, neg_counts)
        return total.to(embeddings.dtype)
