"""Soft overlap losses for segmentation: ``dice``, ``tversky``, ``jaccard`` and ``generalized_dice``,
with MONAI's defaults."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import parity
from ..registry import Term, accumulation_dtype, implements, safe_divide
from ..errors import LossSpecError
from .params.segmentation import (  # noqa: F401  (re-exported)
    ClassOverlapParams,
    DiceParams,
    GeneralizedDiceParams,
    LovaszParams,
    OverlapParams,
    TverskyParams,
)


class _Overlap(Term):
    sample_losses = True  # per image (and class): reduction=none, LossModule.per_sample; not group_loss
    """Per sample and channel, over the flattened spatial dimensions; ``mean`` averages the (sample,
    channel) scores as MONAI's ``reduction="mean"`` does. One channel: sigmoid, with 0/1 masks of
    ``pred``'s shape, or integer 0/1 labels ``[N, ...]``. Several: softmax, with integer class
    indices ``[N, ...]`` or ``[N, 1, ...]`` made one-hot (MONAI's ``to_onehot_y=True``), or float
    masks of ``pred``'s shape. A ratio whose smoothed denominator is 0 (``smooth=0``, an empty class
    and no predicted mass) counts as a perfect 1, loss 0, the limit of MONAI's smoothed ratio; an
    empty batch gives 0.

    ``activation=sigmoid`` takes a sigmoid per channel, for overlapping masks of ``pred``'s shape
    (BraTS's tumour core inside the whole tumour): MONAI's ``sigmoid=True``; integer class indices
    are made one-hot as above. ``activation=softmax`` is MONAI's ``softmax=True`` (on one channel, a
    softmax is constant 1), ``activation=none`` takes ``pred`` as probabilities, MONAI's default of
    no activation. ``smooth`` is MONAI's ``smooth_nr`` and ``smooth_dr`` together; ``smooth_nr`` and
    ``smooth_dr`` set one side each, as MONAI's do. ``batch=true`` sums over the batch before the
    ratio, one score per channel (MONAI's ``batch=True``; smp's losses always pool the batch), and
    takes no ``sample_weight``.

    A class absent from a sample's target (from the batch's, with ``batch=true``) is scored by
    ``absent``: ``smoothed`` (the default, MONAI's ``DiceLoss``) keeps the smoothed ratio, loss
    ``1 - smooth_nr / (|P| + smooth_dr)``, about 1 when mass is predicted there and 0 when none is;
    ``skip`` leaves the class out: ``mean`` averages the present (sample, class) scores only (each
    weighted by its sample's ``sample_weight``), 0 when none is present, and ``sum`` adds them
    (checked against this formula, not against another library); ``zero`` gives it loss 0 but still counts it in ``mean``, as smp's
    ``DiceLoss`` does (``loss *= y_true.sum(dims) > 0``). Under ``skip`` and ``zero`` an absent
    class adds no gradient. kornia's ``dice_loss(average="macro")`` and ``tversky_loss`` skip absent
    classes too but average each image's classes first, then the images: that is
    ``LossModule.per_sample(...).mean()`` here (an image with no class present: kornia 1, lossdsl 0).

    ``ignore_index=k`` leaves out the pixels whose class index is ``k`` (255, say, for void): their
    probabilities and masks add to no class's sums, so they change neither the value nor the
    gradient, as smp's ``ignore_index`` (which multiplies both by ``y_true != ignore_index``); with
    masks of ``pred``'s shape each element equal to ``k`` is left out of its own channel's sums
    (smp's binary and multilabel modes). A class whose only pixels are ignored is absent. MONAI has
    no ``ignore_index``; there, zero the ignored pixels of the probabilities and the one-hot target.

    ``weight=[w_1, ..., w_C]`` weighs the classes, one positive weight per scored class (without
    channel 0 under ``include_background=false``, as MONAI's): ``mean`` is the normalised weighted
    mean ``sum(s_n w_c k_nc l_nc) / sum(s_n w_c k_nc)`` over the (sample, class) losses ``l``, with
    sample weights ``s`` (1 without ``sample_weight``) and ``k`` 0 for a class ``absent=skip``
    leaves out (else 1); ``sum`` is ``sum(s_n w_c l_nc)``. MONAI's ``DiceLoss(weight=w)`` averages
    ``w_c l_nc`` over the N C scores instead, ``C / sum(w)`` times lossdsl's mean (equal when the
    weights average 1).

    ``reduction=none`` gives the losses per image and class ``[N, C]`` (MONAI's
    ``reduction="none"`` ``[N, C, 1, ...]`` without its trailing 1s), times ``w_c`` and ``s_n``;
    classes that ``absent=skip`` or ``zero`` leaves out are 0 there. ``generalized_dice`` gives one
    loss per image ``[N]``. ``batch=true`` has no per-image loss, so it takes no ``reduction=none``
    (nor ``LossModule.per_sample``, whose value per image is its mean over its kept classes,
    weighted by ``weight``)."""

    def __init__(self, params: OverlapParams):
        super().__init__()
        self.smooth_nr = params.smooth if params.smooth_nr is None else params.smooth_nr
        self.smooth_dr = params.smooth if params.smooth_dr is None else params.smooth_dr
        self.activation = params.activation
        self.batch = params.batch
        self.absent = params.absent
        self.include_background = params.include_background
        self.ignore_index = params.ignore_index
        self.reduction = params.reduction
        weight = getattr(params, "weight", None)
        self.register_buffer("class_weight", torch.tensor(weight, dtype=torch.float64) if weight else None)

    def probabilities_and_masks(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class probabilities and 0/1 masks, both [N, C, P] with P the flattened spatial size."""
        self.expect_float(0, pred)
        self.expect_real(1, target)
        if pred.dim() < 2:
            self.fail(0, f"expected logits [N, C, ...spatial], got shape {tuple(pred.shape)}")
        n, channels = pred.shape[:2]
        activation = self.activation
        if activation == "auto":
            activation = "sigmoid" if channels == 1 else "softmax"
        # integer masks of pred's shape are masks when channels overlap (sigmoid) or there is one
        masks_of_any_dtype = channels == 1 or activation != "softmax"
        if target.shape == pred.shape and (masks_of_any_dtype or target.is_floating_point()):
            valid = self.not_ignored(target)  # per element: each channel's mask has its own ignored pixels
            mask = target.to(pred.dtype)
            if valid is not None:
                mask = torch.where(valid, mask, torch.zeros_like(mask))
        else:
            spatial = pred.shape[2:]
            if target.shape == (n, 1, *spatial):
                target = target[:, 0]
            if target.shape != (n, *spatial) or target.is_floating_point():
                self.fail(1, f"expected masks {tuple(pred.shape)} or class indices {(n, *spatial)}, got "
                             f"{tuple(target.shape)} {target.dtype}")
            valid = self.not_ignored(target)
            if valid is not None:  # ignored pixels: any class index for the scatter, masked below
                target = torch.where(valid, target, torch.zeros_like(target))
                valid = valid.unsqueeze(1)  # every class leaves the pixel out
            if channels == 1:  # sigmoid: integer 0/1 labels are the mask
                mask = target.unsqueeze(1).to(pred.dtype)
            else:  # scattered into a contiguous float tensor (one_hot would be int64 and channels-last)
                mask = torch.zeros_like(pred).scatter_(1, target.long().unsqueeze(1), 1.0)
            if valid is not None:
                mask = mask * valid
        if valid is not None:  # an ignored pixel's logit, even NaN, reaches neither value nor gradient
            pred = torch.where(valid, pred, torch.zeros_like(pred))
        if activation == "sigmoid":
            prob = torch.sigmoid(pred)
        elif activation == "softmax":
            prob = torch.softmax(pred, dim=1)
        else:
            prob = pred
        if valid is not None:  # an ignored pixel adds to no sum: |P|, |G|, the intersection, FP and FN
            prob = torch.where(valid, prob, torch.zeros_like(prob))
        if not self.include_background and channels > 1:
            prob, mask = prob[:, 1:], mask[:, 1:]
        size = math.prod(pred.shape[2:])  # not -1, which an empty batch leaves undetermined
        return self.flat_scores_layout(prob, mask, n, size)

    def not_ignored(self, target: torch.Tensor) -> torch.Tensor | None:
        """Where ``target`` is not ``ignore_index`` (None when there is no ``ignore_index``), compared
        in int64 for integer targets: a uint8 target cannot hold -100 and would wrap it."""
        if self.ignore_index is None:
            return None
        comparable = target if target.is_floating_point() else target.long()
        return comparable != self.ignore_index

    def score(self, prob: torch.Tensor, mask: torch.Tensor, positive: bool = False) -> torch.Tensor:
        """The loss per sample and channel, from probabilities and masks [N, C, P]. ``positive``: the
        probabilities are in [0, 1] and the masks 0 or 1 (see ``one_minus_ratio``)."""
        raise NotImplementedError

    @staticmethod
    def pixel_sum(values: torch.Tensor) -> torch.Tensor:
        """The sum over pixels, in float32 at least: a float16 mask of 65,536 pixels sums to inf."""
        return values.sum(-1, dtype=accumulation_dtype(values.dtype))

    def one_minus_ratio(self, numerator: torch.Tensor, denominator: torch.Tensor, positive: bool = False) -> torch.Tensor:
        """``1 - (numerator + smooth_nr) / (denominator + smooth_dr)``, and 0 (with zero gradients)
        where the smoothed denominator is 0.

        ``positive``: the denominator is a sum of probabilities in [0, 1] and 0/1 masks, so at least
        0; with ``smooth_dr > 0`` the smoothed one is then positive (or NaN) and needs no guard."""
        if self.smooth_nr:
            numerator = numerator + self.smooth_nr
        if self.smooth_dr:
            denominator = denominator + self.smooth_dr
            if positive:
                return 1 - numerator / denominator
        defined = ~(denominator <= 0)  # not `> 0`: NaN (from a NaN logit) must give NaN, not a hidden 0
        ratio = safe_divide(numerator, denominator, defined)
        return 1 - torch.where(defined, ratio, torch.ones_like(ratio))

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, parts: bool = False
    ) -> torch.Tensor:
        if parts and self.batch:
            raise LossSpecError(f"per_sample(): {self.where} has batch=true, which pools the samples into one score "
                                "per channel, so this loss has no per-sample form", code="E403")
        prob, mask = self.probabilities_and_masks(pred, target)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, pred.shape[0], pred.dtype)
        return self.reduce_losses(pred, prob, mask, sample_weight, parts)

    def specialise(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> Callable[..., torch.Tensor]:
        """The forward's straight path (see ``Term.specialise``) for float32 or float64 logits with
        integer class indices [N, ...] or [N, 1, ...] beside [N, C, ...], C >= 2, a sigmoid or softmax
        activation, no ``ignore_index`` and no ``sample_weight``: the one-hot masks are 0/1 and the
        probabilities in [0, 1], so with ``smooth_dr > 0`` the ratio needs no 0/0 guard. Other calls
        (one channel, masks of pred's shape, an empty batch) go to ``forward``."""
        if (sample_weight is not None or self.ignore_index is not None or self.activation == "none"
                or pred.dtype not in (torch.float32, torch.float64) or target.is_floating_point()
                or target.is_complex() or pred.dim() < 2 or target.dim() not in (pred.dim() - 1, pred.dim())):
            return self.forward
        forward, softmax = self.forward, self.activation != "sigmoid"
        convert, squeeze = target.dtype != torch.long, target.dim() == pred.dim()
        background = self.include_background
        # The usual options (absent classes smoothed, no class weights, no batch pooling, mean or
        # sum): reduce_losses and reduce_scores come down to the scores' sum (over their count), in
        # the logits' dtype (float32 or float64: its own accumulation dtype), written out below.
        score, mean, on_cpu = self.straight_score(), self.reduction == "mean", pred.device.type == "cpu"
        plain = (self.absent == "smoothed" and getattr(self, "class_weight", None) is None and not self.batch
                 and self.reduction in ("mean", "sum"))

        def class_indices(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            n = pred.shape[0]
            if squeeze:  # [N, 1, ...] class-index maps; [N, C, ...] of pred's shape are masks: forward
                if target.shape[1] != 1 or pred.shape[1] == 1:
                    return forward(pred, target)
                target = target[:, 0]
            if pred.shape[1] < 2 or target.shape[0] != n or target.shape[1:] != pred.shape[2:] or not pred.numel():
                return forward(pred, target)
            indices = (target.long() if convert else target).unsqueeze(1)
            mask = torch.zeros_like(pred).scatter_(1, indices, 1.0)
            prob = torch.softmax(pred, dim=1) if softmax else torch.sigmoid(pred)
            if not background:
                prob, mask = prob[:, 1:], mask[:, 1:]
            size = math.prod(pred.shape[2:])
            if plain:  # flat_scores_layout, score and reduce_losses' ops, without their layers
                loss = score(prob.reshape(n, prob.shape[1], size), mask.reshape(n, mask.shape[1], size), True)
                if not mean:
                    return loss.sum()
                # torch's mean on the CPU is the sum divided by the count (one op, the same bits); CUDA's
                # multiplies by 1 / count, which can differ in the last bit from forward's division
                return loss.mean() if on_cpu else loss.sum() / loss.numel()
            prob, mask = self.flat_scores_layout(prob, mask, n, size)
            return self.reduce_losses(pred, prob, mask, None, False, positive=True)

        return class_indices

    def straight_score(self) -> Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]:
        """``score`` for the straight path's float32 or float64 inputs (probabilities in [0, 1], 0/1
        masks): ``score`` itself, or a subclass's ops written out without its helpers' layers."""
        return self.score

    def flat_scores_layout(self, prob: torch.Tensor, mask: torch.Tensor, n: int, size: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, C, P] per sample, or [1, C, N P] with ``batch``: every pixel of the batch, per channel."""
        prob, mask = prob.reshape(n, prob.shape[1], size), mask.reshape(n, mask.shape[1], size)
        if self.batch:
            prob = prob.transpose(0, 1).reshape(1, prob.shape[1], n * size)
            mask = mask.transpose(0, 1).reshape(1, mask.shape[1], n * size)
        return prob, mask

    def reduce_losses(
        self, pred: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor, sample_weight: torch.Tensor | None,
        parts: bool, positive: bool = False,
    ) -> torch.Tensor:
        """The scores of probabilities and masks [N, C, P], reduced (forward's second half)."""
        loss = self.score(prob, mask, positive)
        if loss.dtype != pred.dtype:
            loss = loss.to(pred.dtype)
        per_class = loss.dim() == 2
        if not per_class:  # generalized_dice: one score per sample, its classes taken together
            loss = loss.unsqueeze(1)
        kept = None  # [N, C]: the (sample, class) scores a mean counts; None: all of them
        if self.absent != "smoothed":
            present = self.pixel_sum(mask) > 0  # [N, C] (or [1, C] with batch): the class is in the target
            loss = torch.where(present, loss, torch.zeros_like(loss))
            if self.absent == "skip":
                kept = present
        class_weight = self.class_weights(pred, loss.shape[1])
        if self.reduction == "none":  # [N, C] (or [N]), times the weights, as torch's weighted reduction="none"
            if class_weight is not None:
                loss = loss * class_weight.to(loss.dtype)
            if sample_weight is not None:
                loss = loss * sample_weight.unsqueeze(1)
            return loss if per_class else loss[:, 0]
        return self.reduce_scores(loss, kept, class_weight, sample_weight, parts)

    def class_weights(self, pred: torch.Tensor, scored: int) -> torch.Tensor | None:
        """``weight`` as [1, C] in the accumulation dtype, checked against the number of scored classes."""
        class_weight = getattr(self, "class_weight", None)
        if class_weight is None:
            return None
        if class_weight.shape[0] != scored:
            dropped = " (include_background=false leaves channel 0 out)" if not self.include_background and pred.shape[1] > 1 else ""
            self.fail(0, f"weight= has {class_weight.shape[0]} entries but {scored} classes are scored{dropped}; "
                         "give one weight per scored class")
        return class_weight.to(accumulation_dtype(pred.dtype)).unsqueeze(0)

    def reduce_scores(
        self, loss: torch.Tensor, kept: torch.Tensor | None, class_weight: torch.Tensor | None,
        sample_weight: torch.Tensor | None, parts: bool,
    ) -> torch.Tensor:
        """``mean``: ``sum(s_n w_c k_nc l_nc) / sum(s_n w_c k_nc)`` over the (sample, class) scores
        ``l`` [N, C], with sample weights ``s``, class weights ``w`` and ``k`` 1 where kept (0 for a
        class skipped as absent), and 0 when nothing weighs; ``sum``: ``sum(s_n w_c l_nc)``. With
        ``parts``: [N, 2] of each sample's numerator and denominator over its classes (weight 1 per
        sample), as ``Term.reduce`` gives them."""
        acc = accumulation_dtype(loss.dtype)
        values = loss.to(acc)
        if class_weight is None and sample_weight is None and not parts and values.numel() and (
                self.reduction == "sum" or kept is None):  # no weights: the plain sum, or mean over the scores
            total = values.sum()
            return (total if self.reduction == "sum" else total / values.numel()).to(loss.dtype)
        weight = torch.ones_like(values)
        if class_weight is not None:
            weight = weight * class_weight
        if self.reduction == "sum":
            weighted = values * weight
            if parts:
                per_sample = weighted.sum(dim=1)
                return torch.stack([per_sample, torch.ones_like(per_sample)], dim=1).to(loss.dtype)
            if sample_weight is not None:
                weighted = weighted * sample_weight.to(acc).unsqueeze(1)
            return weighted.sum().to(loss.dtype)
        if kept is not None:
            weight = weight * kept.to(acc)
        if parts:
            return torch.stack([(values * weight).sum(dim=1), weight.sum(dim=1)], dim=1).to(loss.dtype)
        if sample_weight is not None:
            weight = weight * sample_weight.to(acc).unsqueeze(1)
        return safe_divide((values * weight).sum(), weight.sum()).to(loss.dtype)


def _monai(name: str, **options: object) -> parity.Reference:
    """MONAI's ``name`` loss on logits and class indices [N, 1, H, W] (or, with ``options``, masks)."""
    import monai.losses

    loss = getattr(monai.losses, name)(**(options or {"softmax": True, "to_onehot_y": True}))
    return lambda pred, target: loss(pred, target)


def _overlap_cases(s: parity.Sizes, name: str, spec: str) -> list[parity.Case]:
    """Softmax over class indices, and a sigmoid per channel over overlapping masks pooled over the batch."""
    images = s.images
    pixels = (images[0], 1, *images[2:])  # class indices [N, 1, H, W], as MONAI's to_onehot_y takes them
    return [
        parity.Case(f"{spec}()", parity.shape(*images),
                    parity.inputs(pred=parity.randn(*images), target=parity.labels(*pixels, classes=images[1])),
                    parity.lazy(lambda: _monai(name)), note=f"monai {name}(softmax=True, to_onehot_y=True)"),
        parity.Case(f"{spec}(activation=sigmoid, batch=true)", parity.shape(*images),
                    parity.inputs(pred=parity.randn(*images), target=parity.flags(*images)),
                    parity.lazy(lambda: _monai(name, sigmoid=True, batch=True)),
                    note=f"monai {name}(sigmoid=True, batch=True)", variant="sigmoid batch"),
    ]


def _dice_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: monai.losses.DiceLoss(softmax=True, to_onehot_y=True), and (sigmoid=True, batch=True)."""
    return _overlap_cases(s, "DiceLoss", "dice")


@implements("dice", cases=_dice_cases)
class Dice(_Overlap):
    def __init__(self, params: DiceParams):
        super().__init__(params)
        self.squared = params.squared

    def score(self, prob: torch.Tensor, mask: torch.Tensor, positive: bool = False) -> torch.Tensor:
        intersection, total = self.intersection_and_total(prob, mask)
        return self.one_minus_ratio(2 * intersection, total, positive)

    def straight_score(self) -> Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]:
        """Not squared, with ``smooth_dr > 0`` (no 0/0 guard for positive inputs): ``score``'s ops,
        ``intersection_and_total``'s sums (in the inputs' dtype, their own accumulation dtype) and
        ``one_minus_ratio``'s smoothed ratio, in one function."""
        smooth_nr, smooth_dr = self.smooth_nr, self.smooth_dr
        if type(self).score is not Dice.score or self.squared or not smooth_dr:  # (jaccard's score is its own)
            return self.score

        def score(prob: torch.Tensor, mask: torch.Tensor, positive: bool) -> torch.Tensor:
            dtype = prob.dtype
            intersection = (prob * mask).sum(-1, dtype=dtype)
            total = prob.sum(-1, dtype=dtype) + mask.sum(-1, dtype=dtype)
            numerator = 2 * intersection
            if smooth_nr:
                numerator = numerator + smooth_nr
            return torch.rsub(numerator / (total + smooth_dr), 1)  # 1 - ratio, without the operator's Python layer

        return score

    def intersection_and_total(self, prob: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``I = sum(p * g)`` and ``|P| + |G|`` (of squares with ``squared``, MONAI's ``squared_pred``)."""
        intersection = self.pixel_sum(prob * mask)
        if self.squared:
            return intersection, self.pixel_sum(prob.square()) + self.pixel_sum(mask.square())
        return intersection, self.pixel_sum(prob) + self.pixel_sum(mask)


def _tversky_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: monai.losses.TverskyLoss(softmax=True, to_onehot_y=True), and (sigmoid=True, batch=True)."""
    return _overlap_cases(s, "TverskyLoss", "tversky")


@implements("tversky", cases=_tversky_cases)
class Tversky(_Overlap):
    def __init__(self, params: TverskyParams):
        super().__init__(params)
        self.alpha, self.beta = params.alpha, params.beta

    def score(self, prob: torch.Tensor, mask: torch.Tensor, positive: bool = False) -> torch.Tensor:
        true_positive = self.pixel_sum(prob * mask)
        false_positive = self.pixel_sum(prob * (1 - mask))
        false_negative = self.pixel_sum((1 - prob) * mask)
        denominator = true_positive + self.alpha * false_positive + self.beta * false_negative
        return self.one_minus_ratio(true_positive, denominator, positive)


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


@implements("jaccard", cases=_jaccard_cases)
class Jaccard(Dice):
    """MONAI's ``DiceLoss(jaccard=True)`` formula, smoothing included: ``1 - (2 I + s) / (2 (|P| + |G|
    - I) + s)``, which for ``s = 0`` is ``1 - I / (|P| + |G| - I)``, one minus the soft IoU (smp's
    ``JaccardLoss`` adds its smoothing to ``I`` and the union instead: the same loss at ``s = 0``).
    ``squared`` squares predictions and targets in ``|P|`` and ``|G|``, as MONAI's ``squared_pred``."""

    def score(self, prob: torch.Tensor, mask: torch.Tensor, positive: bool = False) -> torch.Tensor:
        intersection, total = self.intersection_and_total(prob, mask)
        return self.one_minus_ratio(2 * intersection, 2 * (total - intersection), positive)


def _generalized_dice_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: monai.losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)."""
    images = s.images
    pixels = (images[0], 1, *images[2:])
    return [parity.Case("generalized_dice()", parity.shape(*images),
                        parity.inputs(pred=parity.randn(*images), target=parity.labels(*pixels, classes=images[1])),
                        parity.lazy(lambda: _monai_with("GeneralizedDiceLoss")),
                        note="monai GeneralizedDiceLoss(softmax=True, to_onehot_y=True)")]


@implements("generalized_dice", cases=_generalized_dice_cases)
class GeneralizedDice(_Overlap):
    """Per sample, ``1 - (2 sum_c w_c I_c + s) / (sum_c w_c (|P_c| + |G_c|) + s)`` with ``w_c = 1 / G_c^2``
    (``w_type=square``, MONAI's default), ``1 / G_c`` (``simple``) or 1 (``uniform``), ``G_c`` the
    target's mass of class c in the sample. A class absent from the sample's target (whose weight would
    be infinite) takes the sample's largest finite weight, as MONAI's; a sample with no target mass at
    all weighs every class 0 and scores 0 (MONAI's ``1 - s / s``). The weights are the target's, so no
    gradient flows through them. ``mean`` averages the per-sample scores (MONAI's scores are ``[N, 1]``),
    ``reduction=none`` gives them ``[N]``. It takes no ``absent=`` (its classes are scored together)
    and no ``weight=`` (its weights are the target's)."""

    def __init__(self, params: GeneralizedDiceParams):
        super().__init__(params)
        self.w_type = params.w_type

    def score(self, prob: torch.Tensor, mask: torch.Tensor, positive: bool = False) -> torch.Tensor:
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
        return self.one_minus_ratio(2 * (weight * intersection).sum(dim=1), (weight * denominator).sum(dim=1), positive)


def _lovasz_increments(labels_sorted: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s Algorithm 1, written for the parity reference: the Jaccard loss's increments
    along one sorted list of 0/1 labels [P]."""
    positives = labels_sorted.sum()
    intersection = positives - labels_sorted.cumsum(0)
    union = positives + (1 - labels_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_reference(per_image: bool) -> parity.Reference:
    """The practitioner's Lovász loss, a loop over images and classes as in the paper's code (smp's
    segmentation_models_pytorch/losses/lovasz.py): softmax errors |fg - p| per present class, or on one
    channel the hinge errors 1 - x (2y - 1), sorted, dotted with Algorithm 1's increments."""

    def one(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pred [C, P], target [P]
        if pred.shape[0] == 1:
            labels = target.to(pred.dtype)
            errors, order = torch.sort(1 - pred[0] * (2 * labels - 1), descending=True)
            return torch.dot(torch.relu(errors), _lovasz_increments(labels[order]))
        prob = pred.softmax(0)
        losses = []
        for c in range(pred.shape[0]):
            fg = (target == c).to(pred.dtype)
            if fg.sum() == 0:
                continue
            errors, order = torch.sort((fg - prob[c]).abs(), descending=True)
            losses.append(torch.dot(errors, _lovasz_increments(fg[order])))
        return torch.stack(losses).mean() if losses else pred.sum() * 0

    def reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, c = pred.shape[:2]
        flat, labels = pred.reshape(n, c, -1), target.reshape(n, -1)
        if per_image:
            return torch.stack([one(flat[i], labels[i]) for i in range(n)]).mean()
        return one(flat.transpose(0, 1).reshape(c, -1), labels.reshape(-1))

    return reference


def _lovasz_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: the paper's algorithm in a loop (smp's lovasz.py), softmax and binary hinge."""
    images = s.images
    one = (images[0], 1, *images[2:])
    labels = parity.labels(images[0], *images[2:], classes=images[1])
    return [
        parity.Case("lovasz()", parity.shape(*images), parity.inputs(pred=parity.randn(*images), target=labels),
                    _lovasz_reference(False), note="Berman et al.'s Lovász-softmax, a loop (smp's lovasz.py)"),
        parity.Case("lovasz(per_image=true)", parity.shape(*images), parity.inputs(pred=parity.randn(*images), target=labels),
                    _lovasz_reference(True), note="Berman et al.'s Lovász-softmax per image, a loop", variant="per image"),
        parity.Case("lovasz()", parity.shape(*one), parity.inputs(pred=parity.randn(*one), target=parity.flags(*one, p=0.4)),
                    _lovasz_reference(False), note="Berman et al.'s Lovász hinge, a loop (smp's lovasz.py)", variant="hinge"),
    ]


@implements("lovasz", cases=_lovasz_cases)
class Lovasz(Term):
    """Several channels: the Lovász-softmax loss of smp's ``LovaszLoss(mode="multiclass")``. For each
    class c, the errors ``|fg_c - softmax(pred)_c|`` sorted in decreasing order, dotted with the
    increments of the Jaccard loss ``1 - |F \\ S_k| / |F ∪ S_k|`` (F the class's pixels, S_k the k
    largest errors' pixels), a convex surrogate of 1 - IoU; averaged over the classes present in the
    target (``classes=present``, smp's default; a batch or image without any scores 0) or over all
    of them (``classes=all``). One channel: the binary Lovász hinge of smp's ``mode="binary"``, the
    hinge errors ``relu(1 - x (2y - 1))`` on the logits in the same sum (``classes`` does not apply).

    Default: one loss for the whole batch, its pixels pooled, as smp's default ``per_image=False``;
    ``per_image=true`` scores each image alone and averages them (``reduction=sum`` adds them;
    ``sample_weight`` weighs them, and needs ``per_image=true``). ``ignore_index`` leaves out the pixels
    whose target equals it: they are in no error list and no set, and their logits get no gradient.
    Sorting runs on the device: no host synchronisation. Class indices must lie in ``[0, C)``
    (or equal ``ignore_index``); smp's multilabel mode (a hinge over all channels pooled) has no
    counterpart here."""

    def __init__(self, params: LovaszParams):
        super().__init__()
        self.per_image = params.per_image
        self.all_classes = params.classes == "all"
        self.ignore_index = params.ignore_index
        self.reduction = params.reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_real(1, target)
        if pred.dim() < 2:
            self.fail(0, f"expected logits [N, C, ...spatial], got shape {tuple(pred.shape)}")
        n, channels = pred.shape[:2]
        spatial = pred.shape[2:]
        if target.shape == (n, 1, *spatial):
            target = target[:, 0]
        if target.shape != (n, *spatial) or (channels > 1 and target.is_floating_point()):
            kind = "0/1 masks" if channels == 1 else "integer class indices"
            self.fail(1, f"expected {kind} of shape {(n, *spatial)} or {(n, 1, *spatial)}, got {tuple(target.shape)} {target.dtype}")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, n, pred.dtype)
        size = math.prod(spatial)
        logits = pred.reshape(n, channels, size)
        target = target.reshape(n, size)
        valid = None
        if self.ignore_index is not None:
            comparable = target if target.is_floating_point() else target.long()
            valid = (comparable != self.ignore_index).unsqueeze(1)  # [N, 1, P]
            logits = torch.where(valid, logits, torch.zeros_like(logits))  # even a NaN logit there adds nothing
            target = torch.where(valid[:, 0], target, torch.zeros_like(target))
        if channels == 1:  # the binary hinge on the logits
            fg = target.unsqueeze(1).to(pred.dtype)
            errors = 1 - logits * (2 * fg - 1)
        else:
            fg = torch.zeros_like(logits).scatter_(1, target.long().unsqueeze(1), 1.0)
            errors = (fg - logits.softmax(dim=1)).abs()
        if valid is not None:
            fg = fg * valid
        if not self.per_image:  # one list per class over the whole batch
            errors, fg = (t.transpose(0, 1).reshape(1, t.shape[1], n * size) for t in (errors, fg))
            valid = None if valid is None else valid.transpose(0, 1).reshape(1, 1, n * size)
        losses, present = self.lovasz_extension(errors, fg, valid)  # [G, C] each
        if channels == 1 or self.all_classes:
            per_group = losses.mean(dim=1)
        else:
            counted = present.to(losses.dtype)
            per_group = safe_divide((losses * counted).sum(dim=1), counted.sum(dim=1))  # 0 with no class present
        per_group = per_group.to(pred.dtype)
        if not self.per_image:
            return per_group[0]
        return self.reduce(per_group, sample_weight)

    @staticmethod
    def lovasz_extension(
        errors: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Lovász extension of the Jaccard loss at ``errors`` [G, C, P] for the 0/1 sets ``fg``
        [G, C, P], left-out pixels (``valid`` False, [G, 1, P]) sorted last with no error and counted
        in no set; and whether each set is non-empty. In the accumulation dtype."""
        acc = accumulation_dtype(errors.dtype)
        if valid is not None:
            errors = torch.where(valid, errors, torch.zeros_like(errors))
            key = torch.where(valid, errors, torch.full_like(errors, -math.inf))
        else:
            key = errors
        order = key.argsort(dim=-1, descending=True)  # by value: the gradient flows through the gather
        errors_sorted = errors.gather(-1, order).to(acc)
        fg_sorted = fg.gather(-1, order).to(torch.int64)  # counts stay exact past float32's 2^24
        if valid is None:
            bg_sorted = 1 - fg_sorted
        else:
            bg_sorted = valid.expand_as(fg).gather(-1, order).to(torch.int64) - fg_sorted
        positives = fg_sorted.sum(dim=-1, keepdim=True)
        intersection = (positives - fg_sorted.cumsum(dim=-1)).to(acc)  # |F \ S_k|
        union = (positives + bg_sorted.cumsum(dim=-1)).to(acc)  # |F ∪ S_k|
        jaccard = torch.where(union > 0, 1 - safe_divide(intersection, union), torch.zeros_like(union))
        increments = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
        return (torch.relu(errors_sorted) * increments).sum(dim=-1), positives[..., 0] > 0
