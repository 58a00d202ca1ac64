"""Classification terms: ``ce`` and ``bce``."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat

from ..registry import Input, Int64, Reduction, Term, TermParams, Weights, register


class CEParams(TermParams):
    pred: Input = Field("pred", description="logits: [N, C, ...] for C classes, or [N] / [N, 1] for binary")
    target: Input = Field("target", description="integer class indices [N, ...]; 0/1 for binary logits")
    weight: Literal["balanced"] | Weights | None = Field(
        None, description="class weights: none, 'balanced' (from running class counts) or a list, one per class"
    )
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0, description="mass spread uniformly over the classes")
    ignore_index: Int64 = Field(-100, description="targets equal to this are left out, as in F.cross_entropy")
    reduction: Reduction = Field("mean", description="weighted mean over kept targets, or sum")


@register("ce", CEParams, "Cross-entropy on logits: softmax over classes, or sigmoid on binary logits [N].")
class CrossEntropy(Term):
    """``F.cross_entropy``; on binary logits ``[N]`` or ``[N, 1]``, the same loss in sigmoid form.

    The sigmoid form equals ``F.cross_entropy`` on the two-class logits ``[0, z]``,
    weights and label smoothing included. ``mean`` divides by the summed weight
    of the kept targets, as torch does, but gives 0 (not NaN) when every target
    is ignored. ``weight=balanced`` is scikit-learn's ``n / (C * count_c)`` over
    running class counts (a buffer): counted in training mode, set by
    ``LossModule.fit``, frozen in eval mode.
    """

    def __init__(self, params: CEParams):
        super().__init__()
        self.balanced = params.weight == "balanced"
        self.label_smoothing = params.label_smoothing
        self.ignore_index = params.ignore_index
        self.reduction = params.reduction
        fixed = params.weight if isinstance(params.weight, tuple) else None
        self.register_buffer("class_weight", torch.tensor(fixed) if fixed else None)
        # Sized on first use: the class count comes from the logits' shape.
        self.register_buffer("class_counts", torch.zeros(0, dtype=torch.long) if self.balanced else None)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.expect_float(0, pred)
        binary = pred.dim() == 1 or (pred.dim() == 2 and pred.shape[1] == 1)
        if binary:
            logits = pred if pred.dim() == 1 else pred[:, 0]
            if target.shape not in (logits.shape, pred.shape):
                self.fail(1, f"binary logits {tuple(pred.shape)} need 0/1 targets [N], got {tuple(target.shape)}")
            if target.dim() != 1:
                target = target[:, 0]
            num_classes = 2
        else:
            if pred.dim() < 2:
                self.fail(0, f"expected logits [N, C, ...], got shape {tuple(pred.shape)}")
            if target.is_floating_point():
                self.fail(1, f"expected integer class indices, got {target.dtype}")
            expected = (pred.shape[0], *pred.shape[2:])
            if tuple(target.shape) != expected:
                self.fail(1, f"logits {tuple(pred.shape)} need targets of shape {expected}, got {tuple(target.shape)}")
            num_classes = pred.shape[1]
        if target.numel() == 0:
            return pred.sum()
        keep = target != self.ignore_index
        labels = (target * keep).long()  # ignored targets point at class 0 and weigh 0
        weight = self._class_weight(labels, keep, num_classes, pred.dtype)
        if binary:
            total, denominator = self._sigmoid_form(logits, labels, keep, weight)
        else:
            total = F.cross_entropy(
                pred,
                target,
                weight=weight,
                ignore_index=self.ignore_index,
                reduction="sum",
                label_smoothing=self.label_smoothing,
            )
            if self.reduction == "sum":
                return total
            if weight is None:
                denominator = keep.sum().to(pred.dtype)
            else:
                denominator = (weight[labels] * keep).sum()
        if self.reduction == "sum":
            return total
        return total / denominator.clamp_min(torch.finfo(pred.dtype).tiny)

    def _sigmoid_form(
        self, logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and summed sample weight of the sigmoid form."""
        y = labels.to(logits.dtype)
        smoothing = self.label_smoothing
        if weight is None:
            sample_weight = keep.to(logits.dtype)
            soft_target = y * (1 - smoothing) + smoothing / 2 if smoothing else y
            total = F.binary_cross_entropy_with_logits(logits, soft_target, weight=sample_weight, reduction="sum")
            return total, sample_weight.sum()
        sample_weight = weight[labels] * keep
        if not smoothing:
            total = F.binary_cross_entropy_with_logits(logits, y, weight=sample_weight, reduction="sum")
            return total, sample_weight.sum()
        # F.cross_entropy's smoothing term weighs each class by its own weight.
        nll_1, nll_0 = F.softplus(-logits), F.softplus(logits)
        nll_true = torch.where(labels.bool(), nll_1, nll_0)
        smooth = (weight[0] * nll_0 + weight[1] * nll_1) * keep
        total = (1 - smoothing) * (sample_weight * nll_true).sum() + smoothing / 2 * smooth.sum()
        return total, sample_weight.sum()

    def _class_weight(
        self, labels: torch.Tensor, keep: torch.Tensor, num_classes: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        if self.class_weight is not None:
            if self.class_weight.numel() != num_classes:
                self.fail(0, f"weight has {self.class_weight.numel()} entries but the logits have {num_classes} classes")
            return self.class_weight.to(dtype)
        if not self.balanced:
            return None
        counts = self.class_counts
        if counts.numel() > num_classes:
            self.fail(0, f"class counts hold {counts.numel()} classes but the logits have {num_classes}")
        if counts.numel() < num_classes:  # first use, or classes that fit() never saw
            counts = F.pad(counts, (0, num_classes - counts.numel()))
            if self.training:
                self.class_counts = counts
        if self.training:
            counts.index_add_(0, labels.reshape(-1), keep.reshape(-1).long())
            # This batch is counted, so only an all-ignored batch has no counts, and it weighs nothing.
            return balanced_weight(counts, dtype, guard_empty=False)
        return balanced_weight(counts, dtype)

    def fit(self, pred: torch.Tensor | None, target: torch.Tensor | None) -> None:
        """Set the class counts from a whole data set's targets (``LossModule.fit`` calls it).

        The class count comes from ``pred``'s shape when given, else from the largest target.
        """
        if not self.balanced or target is None:
            return
        num_classes = 2
        if pred is not None and pred.dim() >= 2 and pred.shape[1] > 1:
            num_classes = pred.shape[1]
        labels = target.reshape(-1)
        labels = labels[labels != self.ignore_index].long()
        self.class_counts = torch.bincount(labels, minlength=num_classes).to(self.class_counts.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # The counts buffer is sized lazily; take the checkpoint's size.
        key = prefix + "class_counts"
        if self.balanced and key in state_dict:
            self.class_counts = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def balanced_weight(counts: torch.Tensor, dtype: torch.dtype, guard_empty: bool = True) -> torch.Tensor:
    """scikit-learn's balanced weights ``n / (C * count_c)``; an unseen class counts as one, no counts give ones."""
    counts = counts.to(dtype)
    total = counts.sum()
    weight = total / (counts.numel() * counts.clamp_min(1))
    if not guard_empty:
        return weight
    return torch.where(total > 0, weight, torch.ones_like(weight))


class BCEParams(TermParams):
    pred: Input = Field("pred", description="logits, any shape: [N] binary, [N, C] multi-label")
    target: Input = Field("target", description="0/1 targets (or probabilities) of pred's shape")
    pos_weight: PositiveFloat | Weights | None = Field(
        None, description="weight of positives: one number, or one per label"
    )
    reduction: Reduction = Field("mean", description="mean or sum over elements")


@register("bce", BCEParams, "Binary cross-entropy on logits, binary or multi-label, as F.binary_cross_entropy_with_logits.")
class BinaryCrossEntropy(Term):
    def __init__(self, params: BCEParams):
        super().__init__()
        self.reduction = params.reduction
        pos_weight = params.pos_weight
        if isinstance(pos_weight, float):
            pos_weight = (pos_weight,)
        self.register_buffer("pos_weight", torch.tensor(pos_weight) if pos_weight else None)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_same_shape(1, 0, target, pred)
        if pred.numel() == 0:
            return pred.sum()
        pos_weight = None
        if self.pos_weight is not None:
            width = pred.shape[-1] if pred.dim() > 1 else 1
            if self.pos_weight.numel() not in (1, width):
                self.fail(0, f"pos_weight has {self.pos_weight.numel()} entries but pred has {width} labels")
            pos_weight = self.pos_weight.to(pred.dtype)
        return F.binary_cross_entropy_with_logits(
            pred, target.to(pred.dtype), pos_weight=pos_weight, reduction=self.reduction
        )
