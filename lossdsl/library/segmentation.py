"""Soft overlap losses for segmentation: ``dice``, ``tversky``, ``jaccard`` and ``generalized_dice``,
with MONAI's defaults."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, NonNegativeFloat

from .. import parity
from ..registry import BatchReductionParam, Fit, InputOf, Layout, SampleWeight, Term, TermParams, accumulation_dtype, register, safe_divide


class OverlapParams(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits [N, C, ...spatial]: sigmoid when C is 1, softmax over C otherwise")
    target: InputOf("labels", "mask", "binary", "multihot", "probs") = Field(
        "target", description="0/1 masks of pred's shape, or integer class indices [N, ...] or [N, 1, ...] (0/1 when C is 1)"
    )
    smooth: NonNegativeFloat = Field(1e-5, description="added to numerator and denominator (MONAI's smooth_nr, smooth_dr); 0 / 0 gives loss 0")
    include_background: bool = Field(True, description="keep channel 0 when there are several")
    reduction: BatchReductionParam = "mean"
    sample_weight: SampleWeight = None


class DiceParams(OverlapParams):
    squared: bool = Field(False, description="square predictions and targets in the denominator")


class TverskyParams(OverlapParams):
    alpha: NonNegativeFloat = Field(0.5, description="weight of false positives")
    beta: NonNegativeFloat = Field(0.5, description="weight of false negatives")


def _overlap_layouts(params: OverlapParams) -> tuple[Layout, ...]:
    """Logits [N, C, 4, 4] with class indices [N, 4, 4], or with float masks of their shape (which
    bce shares); one channel with 0/1 masks."""
    return (
        {"pred": ("N", "C", 4, 4), "target": Fit(("N", 4, 4), ("labels",))},
        {"pred": ("N", "C", 4, 4), "target": Fit(("N", "C", 4, 4), ("multihot", "probs"))},
        {"pred": ("N", 1, 4, 4), "target": Fit(("N", 1, 4, 4), ("binary", "mask", "multihot", "probs"))},
    )


class _Overlap(Term):
    """Per sample and channel, over the flattened spatial dimensions; ``mean`` averages the (sample,
    channel) scores as MONAI's ``reduction="mean"`` does. One channel: sigmoid, with 0/1 masks of
    ``pred``'s shape, or integer 0/1 labels ``[N, ...]``. Several: softmax, with integer class
    indices ``[N, ...]`` or ``[N, 1, ...]`` made one-hot (MONAI's ``to_onehot_y=True``), or float
    masks of ``pred``'s shape. A score of 0 / 0 (``smooth=0``, an empty class and no predicted
    mass) counts as a perfect 1, loss 0, the limit of MONAI's smoothed ratio; an empty batch gives 0."""

    def __init__(self, params: OverlapParams):
        super().__init__()
        self.smooth = params.smooth
        self.include_background = params.include_background
        self.reduction = params.reduction

    def probabilities_and_masks(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class probabilities and 0/1 masks, both [N, C, P] with P the flattened spatial size."""
        self.expect_float(0, pred)
        self.expect_real(1, target)
        if pred.dim() < 2:
            self.fail(0, f"expected logits [N, C, ...spatial], got shape {tuple(pred.shape)}")
        n, channels = pred.shape[:2]
        if channels == 1:
            prob = torch.sigmoid(pred)
        else:
            prob = torch.softmax(pred, dim=1)
        if target.shape == pred.shape and (channels == 1 or target.is_floating_point()):
            mask = target.to(pred.dtype)
        else:
            spatial = pred.shape[2:]
            if target.shape == (n, 1, *spatial):
                target = target[:, 0]
            if target.shape != (n, *spatial) or target.is_floating_point():
                self.fail(1, f"expected masks {tuple(pred.shape)} or class indices {(n, *spatial)}, got "
                             f"{tuple(target.shape)} {target.dtype}")
            if channels == 1:  # sigmoid: integer 0/1 labels are the mask
                mask = target.unsqueeze(1).to(pred.dtype)
            else:  # scattered into a contiguous float tensor (one_hot would be int64 and channels-last)
                mask = torch.zeros_like(pred).scatter_(1, target.long().unsqueeze(1), 1.0)
        if not self.include_background and channels > 1:
            prob, mask = prob[:, 1:], mask[:, 1:]
        size = math.prod(pred.shape[2:])  # not -1, which an empty batch leaves undetermined
        return prob.reshape(n, prob.shape[1], size), mask.reshape(n, mask.shape[1], size)

    def score(self, prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss per sample and channel, from probabilities and masks [N, C, P]."""
        raise NotImplementedError

    @staticmethod
    def pixel_sum(values: torch.Tensor) -> torch.Tensor:
        """The sum over pixels, in float32 at least: a float16 mask of 65,536 pixels sums to inf."""
        return values.sum(-1, dtype=accumulation_dtype(values.dtype))

    def one_minus_ratio(self, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        """``1 - (numerator + smooth) / (denominator + smooth)``, and 0 (with zero gradients) for 0 / 0."""
        numerator, denominator = numerator + self.smooth, denominator + self.smooth
        defined = ~(denominator <= 0)  # not `> 0`: NaN (from a NaN logit) must give NaN, not a hidden 0
        ratio = safe_divide(numerator, denominator, defined)
        return 1 - torch.where(defined, ratio, torch.ones_like(ratio))

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        prob, mask = self.probabilities_and_masks(pred, target)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, pred.shape[0], pred.dtype)
        return self.reduce(self.score(prob, mask).to(pred.dtype), sample_weight)


def _monai(name: str) -> parity.Reference:
    """MONAI's ``name`` loss on logits and class indices [N, 1, H, W]."""
    import monai.losses

    loss = getattr(monai.losses, name)(softmax=True, to_onehot_y=True)
    return lambda pred, target: loss(pred, target)


def _dice_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: monai.losses.DiceLoss(softmax=True, to_onehot_y=True)."""
    images = s.images
    pixels = (images[0], 1, *images[2:])  # class indices [N, 1, H, W], as MONAI's to_onehot_y takes them
    return [parity.Case("dice()", parity.shape(*images),
                        parity.inputs(pred=parity.randn(*images), target=parity.labels(*pixels, classes=images[1])),
                        parity.lazy(lambda: _monai("DiceLoss")), note="monai DiceLoss(softmax=True, to_onehot_y=True)")]


@register(
    "dice",
    DiceParams,
    "Soft Dice loss, 1 - (2|P∩G| + s) / (|P| + |G| + s), as monai.losses.DiceLoss.",
    example="dice(include_background=false)",
    shapes=_overlap_layouts,
    cases=_dice_cases,
)
class Dice(_Overlap):
    def __init__(self, params: DiceParams):
        super().__init__(params)
        self.squared = params.squared

    def score(self, prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        intersection = self.pixel_sum(prob * mask)
        if self.squared:
            denominator = self.pixel_sum(prob.square()) + self.pixel_sum(mask.square())
        else:
            denominator = self.pixel_sum(prob) + self.pixel_sum(mask)
        return self.one_minus_ratio(2 * intersection, denominator)


def _tversky_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: monai.losses.TverskyLoss(softmax=True, to_onehot_y=True)."""
    images = s.images
    pixels = (images[0], 1, *images[2:])  # class indices [N, 1, H, W], as MONAI's to_onehot_y takes them
    return [parity.Case("tversky()", parity.shape(*images),
                        parity.inputs(pred=parity.randn(*images), target=parity.labels(*pixels, classes=images[1])),
                        parity.lazy(lambda: _monai("TverskyLoss")), note="monai TverskyLoss(softmax=True, to_onehot_y=True)")]


@register(
    "tversky",
    TverskyParams,
    "Tversky loss, 1 - (TP + s) / (TP + a FP + b FN + s), as monai.losses.TverskyLoss.",
    example="tversky(alpha=0.3, beta=0.7)",
    shapes=_overlap_layouts,
    cases=_tversky_cases,
)
class Tversky(_Overlap):
    def __init__(self, params: TverskyParams):
        super().__init__(params)
        self.alpha, self.beta = params.alpha, params.beta

    def score(self, prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        true_positive = self.pixel_sum(prob * mask)
        false_positive = self.pixel_sum(prob * (1 - mask))
        false_negative = self.pixel_sum((1 - prob) * mask)
        denominator = true_positive + self.alpha * false_positive + self.beta * false_negative
        return self.one_minus_ratio(true_positive, denominator)


def _monai_with(name: str, **options: object) -> parity.Reference:
    """MONAI's ``name`` loss with ``options``, on logits and class indices [N, 1, H, W]."""
    import monai.losses

    loss = getattr(monai.losses, name)(softmax=True, to_onehot_y=True, **options)
    return lambda pred, target: loss(pred, target)


def _jaccard_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: monai.losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True)."""
    images = s.images
    pixels = (images[0], 1, *images[2:])
    return [parity.Case("jaccard()", parity.shape(*images),
                        parity.inputs(pred=parity.randn(*images), target=parity.labels(*pixels, classes=images[1])),
                        parity.lazy(lambda: _monai_with("DiceLoss", jaccard=True)),
                        note="monai DiceLoss(softmax=True, to_onehot_y=True, jaccard=True)")]


@register(
    "jaccard",
    DiceParams,
    "Soft Jaccard (IoU) loss, 1 - (2|P∩G| + s) / (2(|P| + |G| - |P∩G|) + s), as monai.losses.DiceLoss(jaccard=True).",
    example="jaccard(include_background=false)",
    shapes=_overlap_layouts,
    cases=_jaccard_cases,
)
class Jaccard(_Overlap):
    """MONAI's ``DiceLoss(jaccard=True)`` formula, smoothing included: ``1 - (2 I + s) / (2 (|P| + |G|
    - I) + s)``, which for ``s = 0`` is ``1 - I / (|P| + |G| - I)``, one minus the soft IoU (smp's
    ``JaccardLoss`` adds its smoothing to ``I`` and the union instead: the same loss at ``s = 0``).
    ``squared`` squares predictions and targets in ``|P|`` and ``|G|``, as MONAI's ``squared_pred``."""

    def __init__(self, params: DiceParams):
        super().__init__(params)
        self.squared = params.squared

    def score(self, prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        intersection = self.pixel_sum(prob * mask)
        if self.squared:
            total = self.pixel_sum(prob.square()) + self.pixel_sum(mask.square())
        else:
            total = self.pixel_sum(prob) + self.pixel_sum(mask)
        return self.one_minus_ratio(2 * intersection, 2 * (total - intersection))


class GeneralizedDiceParams(OverlapParams):
    w_type: Literal["square", "simple", "uniform"] = Field(
        "square", description="class weights from the target's mass G per sample: 1 / G^2, 1 / G or 1 (MONAI's w_type)")


def _generalized_dice_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: monai.losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)."""
    images = s.images
    pixels = (images[0], 1, *images[2:])
    return [parity.Case("generalized_dice()", parity.shape(*images),
                        parity.inputs(pred=parity.randn(*images), target=parity.labels(*pixels, classes=images[1])),
                        parity.lazy(lambda: _monai_with("GeneralizedDiceLoss")),
                        note="monai GeneralizedDiceLoss(softmax=True, to_onehot_y=True)")]


@register(
    "generalized_dice",
    GeneralizedDiceParams,
    "Generalized Dice loss (Sudre et al. 2017), classes weighted by 1 / G^2, as monai.losses.GeneralizedDiceLoss.",
    example="generalized_dice(w_type=simple)",
    shapes=_overlap_layouts,
    cases=_generalized_dice_cases,
)
class GeneralizedDice(_Overlap):
    """Per sample, ``1 - (2 sum_c w_c I_c + s) / (sum_c w_c (|P_c| + |G_c|) + s)`` with ``w_c = 1 / G_c^2``
    (``w_type=square``, MONAI's default), ``1 / G_c`` (``simple``) or 1 (``uniform``), ``G_c`` the
    target's mass of class c in the sample. A class absent from the sample's target (whose weight would
    be infinite) takes the sample's largest finite weight, as MONAI's; a sample with no target mass at
    all weighs every class 0 and scores 0 (MONAI's ``1 - s / s``). The weights are the target's, so no
    gradient flows through them. ``mean`` averages the per-sample scores (MONAI's scores are ``[N, 1]``)."""

    def __init__(self, params: GeneralizedDiceParams):
        super().__init__(params)
        self.w_type = params.w_type

    def score(self, prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        intersection = self.pixel_sum(prob * mask)
        target_mass = self.pixel_sum(mask)
        denominator = self.pixel_sum(prob) + target_mass
        present = target_mass > 0
        if self.w_type == "uniform":
            weight = torch.ones_like(target_mass)
        else:  # the reciprocal of a mass of 1 where absent, then replaced: no inf in value or gradient
            mass = torch.where(present, target_mass, torch.ones_like(target_mass))
            weight = torch.where(present, (mass.square() if self.w_type == "square" else mass).reciprocal(), 0.0)
            weight = torch.where(present, weight, weight.amax(dim=1, keepdim=True))
        return self.one_minus_ratio(2 * (weight * intersection).sum(dim=1), (weight * denominator).sum(dim=1))
