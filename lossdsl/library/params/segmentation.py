"""Soft overlap losses for segmentation: ``dice``, ``tversky``, ``jaccard`` and ``generalized_dice``,

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.segmentation``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, model_validator

from ...declarations import (
    BatchReductionParam,
    Fit,
    InputOf,
    Int64,
    Layout,
    ReductionParam,
    SampleWeight,
    TermParams,
    Weights,
    declare,
)


class OverlapParams(TermParams):
    pred: InputOf("logits", "probs") = Field(
        "pred", description="logits [N, C, ...spatial] (probabilities with activation=none)"
    )
    target: InputOf("labels", "mask", "binary", "multihot", "probs") = Field(
        "target", description="0/1 masks of pred's shape, or integer class indices [N, ...] or [N, 1, ...] (0/1 when C is 1)"
    )
    activation: Literal["auto", "sigmoid", "softmax", "none"] = Field(
        "auto", description="auto: sigmoid when C is 1, softmax over C otherwise; sigmoid: per channel "
                            "(overlapping masks, MONAI's sigmoid=True); softmax; none: pred holds probabilities"
    )
    smooth: NonNegativeFloat = Field(1e-5, description="added to numerator and denominator (MONAI's smooth_nr, smooth_dr); 0 / 0 gives loss 0")
    smooth_nr: NonNegativeFloat | None = Field(None, description="added to the numerator only (MONAI's smooth_nr); default: smooth")
    smooth_dr: NonNegativeFloat | None = Field(None, description="added to the denominator only (MONAI's smooth_dr); default: smooth")
    batch: bool = Field(False, description="pool the samples: one score per channel over the whole batch (MONAI's batch=True)")
    absent: Literal["smoothed", "skip", "zero"] = Field(
        "smoothed", description="a class absent from the target: smoothed (MONAI: loss about 1 where mass is "
                                "predicted), skip (left out of the mean), zero (loss 0, still counted: smp)"
    )
    include_background: bool = Field(True, description="keep channel 0 when there are several")
    ignore_index: Int64 | None = Field(
        None, description="target value left out: a pixel whose class index equals it is left out of every "
                          "class's sums (with masks of pred's shape, an element equal to it is left out of its "
                          "channel's), as smp's ignore_index; default: none"
    )
    reduction: ReductionParam = Field(
        "mean", description="mean (weighted by sample_weight and weight, if given), sum, or none: the losses per "
                            "image and class [N, C] (per image [N] for generalized_dice), times the weights")
    sample_weight: SampleWeight = None

    @model_validator(mode="after")
    def _batch_has_no_samples_to_weigh(self) -> OverlapParams:
        if self.batch and self.sample_weight is not None:
            raise ValueError("batch=true pools the samples into one score per channel, so there is no "
                             "per-sample loss for sample_weight to weigh; drop one of them")
        if self.batch and self.reduction == "none":
            raise ValueError("batch=true pools the samples into one score per channel, so there is no "
                             "per-image loss for reduction=none to give; drop one of them")
        return self


class ClassOverlapParams(OverlapParams):
    weight: Weights | None = Field(
        None, description="one positive weight per scored class (without channel 0 under include_background=false): "
                          "mean is sum(w_c * loss) / sum(w_c) over the (sample, class) scores kept"
    )


class DiceParams(ClassOverlapParams):
    squared: bool = Field(False, description="square predictions and targets in the denominator")


class TverskyParams(ClassOverlapParams):
    alpha: NonNegativeFloat = Field(0.5, description="weight of false positives")
    beta: NonNegativeFloat = Field(0.5, description="weight of false negatives")


def _overlap_layouts(params: OverlapParams) -> tuple[Layout, ...]:
    """Logits [N, C, 4, 4] with class indices [N, 4, 4], or with float masks of their shape (which
    bce shares); one channel with 0/1 masks. With activation=none, pred holds probabilities."""
    several = ("N", "C", 4, 4)
    one = ("N", 1, 4, 4)
    if params.activation == "none":
        several, one = Fit(several, ("probs",)), Fit(one, ("probs",))
    return (
        {"pred": several, "target": Fit(("N", 4, 4), ("labels",))},
        {"pred": several, "target": Fit(("N", "C", 4, 4), ("multihot", "probs"))},
        {"pred": one, "target": Fit(("N", 1, 4, 4), ("binary", "mask", "multihot", "probs"))},
    )


class GeneralizedDiceParams(OverlapParams):
    w_type: Literal["square", "simple", "uniform"] = Field(
        "square", description="class weights from the target's mass G per sample: 1 / G^2, 1 / G or 1 (MONAI's w_type)")

    @model_validator(mode="after")
    def _one_score_per_sample(self) -> GeneralizedDiceParams:
        if self.absent != "smoothed":
            raise ValueError("generalized_dice scores each sample's classes together, an absent class taking the "
                             "sample's largest finite weight (MONAI's); absent= is for dice, tversky and jaccard")
        return self


class LovaszParams(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits [N, C, ...spatial]; one channel: binary logits [N, 1, ...]")
    target: InputOf("labels", "mask", "binary") = Field(
        "target", description="integer class indices [N, ...] or [N, 1, ...]; one channel: 0/1 masks [N, 1, ...] or [N, ...]"
    )
    per_image: bool = Field(False, description="one loss per image, averaged (smp's per_image=True); default: the batch pooled")
    classes: Literal["present", "all"] = Field(
        "present", description="average over the classes present in the target (smp's default) or over all of them"
    )
    ignore_index: Int64 | None = Field(None, description="target value whose pixels are left out (smp's ignore_index)")
    reduction: BatchReductionParam = "mean"
    sample_weight: SampleWeight = None

    @model_validator(mode="after")
    def _pooled_has_no_samples_to_weigh(self) -> LovaszParams:
        if self.sample_weight is not None and not self.per_image:
            raise ValueError("lovasz pools the batch into one loss unless per_image=true, so there is no per-image "
                             "loss for sample_weight to weigh; add per_image=true or drop sample_weight")
        return self


def _lovasz_layouts(params: LovaszParams) -> tuple[Layout, ...]:
    """Logits [N, C, 4, 4] with class indices [N, 4, 4]; one channel with 0/1 masks."""
    return (
        {"pred": ("N", "C", 4, 4), "target": Fit(("N", 4, 4), ("labels",))},
        {"pred": ("N", 1, 4, 4), "target": Fit(("N", 1, 4, 4), ("binary", "mask"))},
    )


declare(
    "dice",
    DiceParams,
    "Soft Dice loss, 1 - (2|P∩G| + s) / (|P| + |G| + s), as monai.losses.DiceLoss.",
    example="dice(include_background=false)",
    shapes=_overlap_layouts,
    implementation="lossdsl.library.segmentation:Dice",
    sample_losses=True,
)


declare(
    "tversky",
    TverskyParams,
    "Tversky loss, 1 - (TP + s) / (TP + a FP + b FN + s), as monai.losses.TverskyLoss.",
    example="tversky(alpha=0.3, beta=0.7)",
    shapes=_overlap_layouts,
    implementation="lossdsl.library.segmentation:Tversky",
    sample_losses=True,
)


declare(
    "jaccard",
    DiceParams,
    "Soft Jaccard (IoU) loss, 1 - (2|P∩G| + s) / (2(|P| + |G| - |P∩G|) + s), as monai.losses.DiceLoss(jaccard=True).",
    example="jaccard(include_background=false)",
    shapes=_overlap_layouts,
    implementation="lossdsl.library.segmentation:Jaccard",
    sample_losses=True,
)


declare(
    "generalized_dice",
    GeneralizedDiceParams,
    "Generalized Dice loss (Sudre et al. 2017), classes weighted by 1 / G^2, as monai.losses.GeneralizedDiceLoss.",
    example="generalized_dice(w_type=simple)",
    shapes=_overlap_layouts,
    implementation="lossdsl.library.segmentation:GeneralizedDice",
    sample_losses=True,
)


declare(
    "lovasz",
    LovaszParams,
    "Lovász-softmax loss (Berman et al. 2018), the Lovász extension of the Jaccard loss, as smp's LovaszLoss.",
    example="lovasz(per_image=true, ignore_index=255)",
    shapes=_lovasz_layouts,
    implementation="lossdsl.library.segmentation:Lovasz",
)
