"""Classification terms: ``ce``, ``bce``, ``focal``, ``hinge``, ``soft_f1``, ``asl``.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.classification``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, NonNegativeFloat, PositiveFloat, model_validator

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
    class_layouts,
    same_shape_layouts,
    declare,
)


#: ce's class weights: ``mean`` divides by the batch's summed weights, which overflowed float32 to
#: inf / inf = NaN at ``[1e38, 1e38, 1e38]``; 1e15 leaves room for 3e23 targets.
MAX_CLASS_WEIGHT = 1e15


ClassWeights = Annotated[tuple[Annotated[float, Field(gt=0, le=MAX_CLASS_WEIGHT)], ...], Field(min_length=1)]


#: ``weight=class_balanced(beta)``: Cui et al.'s effective-number weights, ``0 <= beta < 1``.
ClassBalanced = tuple[Literal["class_balanced"], Annotated[float, Field(ge=0, lt=1)]]


#: How ``mean`` divides a weighted loss: by the summed weights (torch's ``F.cross_entropy(weight=)``)
#: or by the element count (mmpretrain's ``weight_reduce_loss`` with ``avg_factor=None``).
Normalize = Annotated[Literal["weights", "count"], Field(
    description="mean's denominator with weights: their sum over the elements ('weights', torch's cross-entropy) or "
    "the number of elements ('count', mmpretrain's mean of w * loss); inside group_loss or group_dro a group's "
    "mean divides by its summed sample weights either way"
)]


class CEParams(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits: [N, C, ...] for C classes, or [N] / [N, 1] for binary")
    target: InputOf("labels", "binary", "probs") = Field(
        "target", description="integer class indices [N, ...] (0/1 for binary logits), or class probabilities"
    )
    weight: Literal["balanced"] | ClassBalanced | ClassWeights | None = Field(
        None, description="class weights: none, 'balanced' or 'class_balanced(beta)' (from running class counts) "
        "or a list, one per class, each at most 1e15 (a batch's summed weights must stay within float32; only "
        "their ratios matter to mean)"
    )
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0, description="mass spread uniformly over the classes")
    ignore_index: Int64 = Field(-100, description="targets equal to this are left out, as in F.cross_entropy")
    z_loss: NonNegativeFloat = Field(
        0.0, description="adds z_loss * logsumexp(logits)^2 to each target's loss, weighted and averaged as "
        "the ce (PaLM's z-loss, 1e-4 there)"
    )
    normalize: Normalize = "weights"
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _ce_layouts(params: CEParams) -> tuple[Layout, ...]:
    """A list of class weights fixes the class count (two: binary logits fit too)."""
    if isinstance(params.weight, tuple) and params.weight[0] != "class_balanced":
        return class_layouts(len(params.weight), binary=len(params.weight) == 2)
    return class_layouts()


class BCEParams(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits, any shape: [N] binary, [N, C] multi-label")
    target: InputOf("binary", "multihot", "probs") = Field("target", description="0/1 targets (or probabilities) of pred's shape")
    pos_weight: Annotated[float, Field(gt=0, le=MAX_CLASS_WEIGHT)] | ClassWeights | None = Field(
        None, description="weight of positives: one number, or one per label, each at most 1e15 (a "
        "positive's loss is scaled by it, and must stay within float32)"
    )
    weight: ClassWeights | None = Field(
        None, description="one weight per label (pred.shape[-1]), each at most 1e15: every element's loss is "
        "scaled by its label's weight, as F.binary_cross_entropy_with_logits's weight of shape [C]"
    )
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0, description="targets become y * (1 - e) + e / 2")
    normalize: Literal["weights", "count"] | None = Field(
        None, description="mean's denominator: unset, the element count weighted by sample weights only (torch's "
        "weight=); 'weights', the summed label and sample weights (as ce's class weights); 'count', the element count "
        "(inside group_loss or group_dro a group's mean divides by its summed sample weights either way)"
    )
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None

    @model_validator(mode="after")
    def _one_label_count(self) -> BCEParams:
        labels = {len(w) for w in (self.pos_weight, self.weight) if isinstance(w, tuple) and len(w) > 1}
        if len(labels) > 1:
            raise ValueError(f"weight and pos_weight have {' and '.join(map(str, sorted(labels)))} entries: "
                             "each has one per label (or pos_weight one number)")
        return self


def _bce_layouts(params: BCEParams) -> tuple[Layout, ...]:
    """pred and target of one shape; a list of several weight or pos_weight entries is one per
    label (last dimension)."""
    lists = [len(w) for w in (params.weight, params.pos_weight) if isinstance(w, tuple) and len(w) > 1]
    return same_shape_layouts("pred", "target", last=lists[0] if lists else None)


def _classes_at_least_two(alpha: tuple[float, ...]) -> tuple[float, ...]:
    """A list alpha is the softmax form's, which has C >= 2 classes: logits [N, 1] always take the
    sigmoid form, which weighs positives by one number, so focal(alpha=[a]) could never run."""
    if len(alpha) < 2:
        raise ValueError("a list holds one weight per class of the softmax form, so at least 2; for binary "
                         "targets (the sigmoid form) alpha is one number in [0, 1], the weight of positives")
    return alpha


class FocalParams(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits: [N] / [N, 1] / multi-label [N, C] (sigmoid), or [N, C, ...] (softmax)")
    target: InputOf("labels", "binary", "multihot", "probs") = Field(
        "target", description="0/1 targets of pred's shape (sigmoid form), or integer class indices [N, ...] or "
                              "[N, 1, ...] (softmax form)"
    )
    gamma: NonNegativeFloat = Field(2.0, description="focusing strength; 0 gives cross-entropy")
    alpha: Annotated[float, Field(ge=0, le=1)] | Annotated[Weights, AfterValidator(_classes_at_least_two)] | None = Field(
        None, description="sigmoid form: weight of positives (1 - alpha for negatives); softmax form: one weight per class, C >= 2"
    )
    weight: ClassWeights | None = Field(
        None, description="class weights (MONAI's weight): one per class (channel, dim 1) or one for all, each at most "
                          "1e15; they multiply each element's loss, and normalize says whether mean divides by them"
    )
    pos_weight: Annotated[float, Field(gt=0, le=MAX_CLASS_WEIGHT)] | ClassWeights | None = Field(
        None, description="sigmoid form: weight of positives, one number or one per class (channel, dim 1), as "
                          "F.binary_cross_entropy_with_logits' pos_weight"
    )
    ignore_index: Int64 | None = Field(
        None, description="targets equal to this are left out of the loss and of mean's count (none by default, as MONAI)"
    )
    include_background: bool = Field(
        True, description="false leaves channel 0 out (MONAI's include_background); per-class lists then skip it too"
    )
    class_reduction: Literal["sum", "mean"] = Field(
        "sum", description="softmax form: each element's loss summed over the one-hot classes (the cross-entropy "
                           "convention), or their mean, 1/C of it (MONAI's use_softmax=True)"
    )
    normalize: Literal["weights", "count"] | None = Field(
        None, description="what mean divides the weighted losses by: the summed weights (torch's convention), or the "
                          "number of elements (mmpretrain's); unset: class weights count, sample weights weigh"
    )
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None

    @model_validator(mode="after")
    def _one_form(self) -> FocalParams:
        if isinstance(self.alpha, tuple) and self.pos_weight is not None:
            raise ValueError("a list alpha belongs to the softmax form and pos_weight to the sigmoid form: give one "
                             "(per-class weights in either form: weight)")
        return self


def _focal_layouts(params: FocalParams) -> tuple[Layout, ...]:
    """The sigmoid form (0/1 targets of pred's shape) takes a number alpha and pos_weight, the softmax
    form (class indices) a list alpha; a list of several entries fixes the channel count (one more
    than its length without the background)."""
    lists = [len(v) for v in (params.alpha, params.weight, params.pos_weight) if isinstance(v, tuple) and len(v) > 1]
    channels = lists[0] + (not params.include_background) if lists else None
    kinds = ("binary", "multihot", "probs")
    if channels is None:
        sigmoid = same_shape_layouts("pred", "target", kinds={"target": kinds})
    else:
        sigmoid = tuple({role: Fit(("N", channels, *spatial), kinds if role == "target" else ())
                         for role in ("pred", "target")} for spatial in ((), (4, 4)))
    softmax = class_layouts(channels or "C", binary=False)
    if isinstance(params.alpha, tuple):
        return softmax
    if params.alpha is not None or params.pos_weight is not None:
        return sigmoid
    return (*sigmoid, *softmax)


class HingeParams(TermParams):
    pred: InputOf("logits", "real") = Field("pred", description="scores: [N] or [N, 1] (binary), or [N, C] (one per class)")
    target: InputOf("labels", "binary") = Field("target", description="0/1 labels [N] (binary), or integer class indices [N]")
    margin: PositiveFloat = Field(1.0, description="the margin the right score must win by")
    squared: bool = Field(False, description="square the hinge")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _hinge_layouts(params: HingeParams) -> tuple[Layout, ...]:
    """Binary scores [N] with 0/1 labels, or one score per class [N, C] with class indices."""
    return class_layouts()[:2]


class SoftF1Params(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits: [N] / [N, 1] (binary) or [N, C] (multi-label)")
    target: InputOf("binary", "multihot") = Field("target", description="0/1 labels of pred's shape ([N] for [N, 1] too)")
    beta: PositiveFloat = Field(1.0, description="recall counts beta times as much as precision")
    average: Literal["macro", "micro", "samples"] = Field(
        "macro", description="scikit-learn's f1_score averages: one F per label, then their mean (macro), one F "
        "from the counts pooled over labels (micro), or one F per sample over its labels, then their mean (samples)"
    )
    reduction: BatchReductionParam = "mean"
    sample_weight: SampleWeight = None


def _soft_f1_layouts(params: SoftF1Params) -> tuple[Layout, ...]:
    return same_shape_layouts("pred", "target")


class ASLParams(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits [N, C], one per label (sigmoid)")
    target: InputOf("multihot", "binary", "labels") = Field(
        "target", description="0/1 labels of pred's shape, or integer class indices [N] (made one-hot, as mmpretrain does)"
    )
    gamma_pos: NonNegativeFloat = Field(0.0, description="focusing strength on the positives")
    gamma_neg: NonNegativeFloat = Field(4.0, description="focusing strength on the negatives")
    clip: float = Field(0.05, ge=0.0, lt=1.0, description="probability margin: a negative's p is shifted down by it (0: off)")
    eps: float = Field(1e-8, gt=0.0, lt=1.0, description="the log's argument is clamped at it")
    normalize: Literal["weights", "count"] = Field(
        "weights", description="how mean treats sample weights: sum(w l) / sum(w) (lossdsl's sample_weight), or "
                               "divided by the number of elements (mmpretrain's weight)"
    )
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _asl_layouts(params: ASLParams) -> tuple[Layout, ...]:
    """Labels of pred's shape, or class indices [N] beside logits [N, C]."""
    labels = same_shape_layouts("pred", "target", kinds={"target": ("multihot", "binary")})[:2]
    return (*labels, class_layouts(binary=False)[0])


declare(
    "ce",
    CEParams,
    "Cross-entropy on logits: softmax over classes, or sigmoid on binary logits [N].",
    example="ce(weight=balanced, label_smoothing=0.05)",
    shapes=_ce_layouts,
    implementation="lossdsl.library.classification:CrossEntropy",
    per_sample=True,
)


declare(
    "bce",
    BCEParams,
    "Binary cross-entropy on logits, binary or multi-label, as F.binary_cross_entropy_with_logits.",
    example="bce(pos_weight=[1.0, 4.0, 2.5])",
    shapes=_bce_layouts,
    implementation="lossdsl.library.classification:BinaryCrossEntropy",
    per_sample=True,
)


declare(
    "focal",
    FocalParams,
    "Focal loss: cross-entropy scaled by (1 - p_t)^gamma, down-weighting easy examples.",
    example="focal(gamma=2.0, alpha=0.25)",
    shapes=_focal_layouts,
    implementation="lossdsl.library.classification:Focal",
    per_sample=True,
)


declare(
    "hinge",
    HingeParams,
    "Hinge (margin) loss: binary on labels mapped to -1/+1, or multi-class as F.multi_margin_loss.",
    example="hinge(margin=1.0, squared=true)",
    shapes=_hinge_layouts,
    implementation="lossdsl.library.classification:Hinge",
    per_sample=True,
)


declare(
    "soft_f1",
    SoftF1Params,
    "1 - F_beta from soft true/false positives and negatives: binary, or macro, micro or samples over labels.",
    example="soft_f1(beta=2.0)",
    shapes=_soft_f1_layouts,
    implementation="lossdsl.library.classification:SoftF1",
)


declare(
    "asl",
    ASLParams,
    "Asymmetric loss for multi-label classification (Ridnik et al., 2021): focal on the negatives, with a margin.",
    example="asl(gamma_pos=0.0, gamma_neg=4.0, clip=0.05)",
    shapes=_asl_layouts,
    implementation="lossdsl.library.classification:AsymmetricLoss",
    per_sample=True,
)
