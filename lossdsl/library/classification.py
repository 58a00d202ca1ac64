"""Classification terms: ``ce``, ``bce``, ``focal``, ``hinge``, ``soft_f1``, ``asl``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer
from torch.utils._python_dispatch import _disable_current_modes

from .. import distributed, parity
from ..registry import Term, accumulation_dtype, host_reads_are_free, implements, safe_divide, weighted_mean
from .params.classification import (  # noqa: F401  (re-exported)
    MAX_CLASS_WEIGHT,
    ASLParams,
    BCEParams,
    CEParams,
    ClassBalanced,
    ClassWeights,
    FocalParams,
    HingeParams,
    Normalize,
    SoftF1Params,
)


def _ce_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.cross_entropy, and F.binary_cross_entropy_with_logits for binary logits."""
    n, c, images = s.n, s.classes, s.images
    indices = (images[0], *images[2:])  # class indices [N, H, W]
    return [
        parity.Case("ce()", parity.shape(n, c), parity.inputs(pred=parity.randn(n, c), target=parity.labels(n, classes=c)),
                    lambda pred, target: F.cross_entropy(pred, target), one_call=True),
        parity.Case("ce()", parity.shape(n), parity.inputs(pred=parity.randn(n), target=parity.flags(n, dtype=torch.long)),
                    lambda pred, target: F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype)),
                    one_call=True, variant="binary"),
        parity.Case("ce()", parity.shape(*images),
                    parity.inputs(pred=parity.randn(*images), target=parity.labels(*indices, classes=images[1])),
                    lambda pred, target: F.cross_entropy(pred, target), one_call=True),
    ]


class UnsizedCounts(UninitializedBuffer):
    """``class_counts`` before a call has shown the class count: torch's lazy buffer, materialised
    (at its final size, as zeros) from the first call's logits, by torch.compile too before it
    traces (``LazyModuleMixin``), so a compiled spec compiles once. Unlike torch's, it reads as the
    empty counts it replaces, and deep-copies and pickles as itself, an int64 buffer still unsized
    (torch's own pickles as float32)."""

    def __new__(cls, device: torch.device | str | None = None) -> UnsizedCounts:
        return super().__new__(cls, device=device, dtype=torch.long)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        """Moves and casts keep it unsized (torch's rule); anything else reads it as the empty int64
        counts it stands for (``numel()`` is 0, ``tolist()`` is []), as before it was lazy."""
        if func in cls._allowed_methods or func.__class__.__name__ == "method-wrapper":
            return super().__torch_function__(func, types, args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def __deepcopy__(self, memo: dict) -> UnsizedCounts:
        return UnsizedCounts(self.device)

    def __reduce_ex__(self, protocol: int) -> tuple:
        return UnsizedCounts, (str(self.device),)


def _unsized(tensor: torch.Tensor | None) -> bool:
    """Whether a buffer is still a lazy one (``isinstance``: dynamo traces it, not torch's ``is_lazy``)."""
    return isinstance(tensor, UninitializedBuffer)


@implements("ce", cases=_ce_cases)
class CrossEntropy(LazyModuleMixin, Term):
    """``F.cross_entropy``; on binary logits ``[N]`` or ``[N, 1]``, the same loss in sigmoid form.

    - Logits ``[N, C, ...]`` with integer targets ``[N, ...]``: exactly ``F.cross_entropy(pred,
      target, weight, ignore_index, label_smoothing)``.
    - Binary logits ``[N]`` or ``[N, 1]`` with integer 0/1 targets: the sigmoid form, which equals
      ``F.cross_entropy`` on the two-class logits ``[0, z]``, class weights and label smoothing
      included; without them it is ``F.binary_cross_entropy_with_logits``. The targets are not
      checked to be 0 or 1: reading their values would synchronise with the device. Bool or
      uint8 targets cannot hold a negative ``ignore_index``, so they skip its masking (faster); so
      does a CPU batch of other integer targets none of which is ``ignore_index`` (outside
      ``torch.compile``: on the CPU that read costs no synchronisation).
      Integer targets of any dtype (int32 from numpy, uint8, ...) are read as int64.
    - Floating-point targets are class probabilities: of ``pred``'s shape for ``[N, C, ...]``
      logits, or the probability of class 1 for binary logits. As in torch, ``ignore_index`` does
      not apply to them and ``mean`` divides by the number of samples.
    - ``mean`` divides by the summed weight of the kept targets, as torch does, but gives 0 (not
      NaN) when every target is ignored; an empty batch gives 0. With ``sample_weight``, each
      sample's loss and its share of that denominator are multiplied by its weight.
    - ``weight=balanced``: scikit-learn's ``n / (C * count_c)`` over running class counts kept in
      the buffer ``class_counts``; a class not seen yet weighs as much as the rarest class seen. In training mode each call first adds the batch's kept
      targets, then weighs the batch; in eval mode the counts are frozen; ``LossModule.fit(target=
      labels)`` replaces them with a data set's. The buffer is sized (zeros) by the first call's
      logits, in eval mode too, before anything runs (a torch lazy buffer, so ``torch.compile``
      compiles a spec once); with no counts at all every weight is 1. A call refused (E402: inputs
      of the wrong dtype or shape, a class index out of range) leaves the buffer as it was, sized
      or not, as if the call never was (on CUDA an index out of range is a device-side assert). It is saved in
      ``state_dict()``, as an empty tensor while unsized. Under
      ``torch.distributed`` the batch's counts are summed over all ranks first, so every rank
      keeps the global counts (``fit`` is per rank: give each rank the whole label set).
    - ``weight=class_balanced(beta)``, ``0 <= beta < 1``: Cui et al. (2019)'s weights by effective
      number, ``(1 - beta) / (1 - beta^n_c)``, scaled to sum to ``C`` as the paper does, over
      the same running class counts as ``balanced`` (counted, frozen, fitted, saved and summed over
      ranks alike). ``beta=0`` weighs every class 1; as ``beta`` nears 1 the weights near
      inverse class frequency. A class with ``n_c = 0`` (effective number 0) weighs as much as
      the rarest class seen before the scaling, never inf; no counts at all give ones.
    - ``reduction=none``: ``F.cross_entropy(reduction="none")``, one loss per target ``[N, ...]``
      (``[N]`` for binary logits), class-weighted and 0 where ignored, times ``sample_weight``.
    - ``normalize=count`` (mmpretrain's ``CrossEntropyLoss(class_weight=...)``, whose
      ``weight_reduce_loss`` with ``avg_factor=None`` averages ``w * loss`` over the targets):
      ``mean`` divides the weighted sum by the number of kept targets, not by their summed
      weights (the default ``normalize=weights``, torch's); ``sample_weight`` then scales each
      sample's losses but not the count, as mmpretrain's ``weight`` does. Probability targets,
      ``sum`` and ``none`` are the same under both.
    - ``z_loss=z`` (PaLM, Chowdhery et al. 2022; 1e-4 there): each target's loss gains
      ``z * logsumexp(logits)^2`` over its classes (``softplus(x)^2`` for a binary logit ``x``),
      weighed as that target's ce (its class weight and ``sample_weight``, 0 where ignored) and
      reduced with it, so ``mean`` is ce's mean plus ``z`` times the same weighted mean of
      ``log^2 Z``; it keeps the softmax normaliser near 1 (``log Z`` near 0).
    - Half-precision logits are computed in float32 (torch's own float16 mean is NaN past 65,536
      targets) and the loss comes back in their dtype.
    """

    per_sample = True

    def __init__(self, params: CEParams):
        super().__init__()
        weight = params.weight
        # class_balanced(beta) has Cui et al.'s formula; both weigh classes by running counts.
        self.beta = weight[1] if isinstance(weight, tuple) and weight[0] == "class_balanced" else None
        self.balanced = weight == "balanced" or self.beta is not None
        self.label_smoothing = params.label_smoothing
        self.ignore_index = params.ignore_index
        self.reduction = params.reduction
        self.z_loss = params.z_loss
        self.count = params.normalize == "count"
        fixed = weight if isinstance(weight, tuple) and self.beta is None else None
        self.register_buffer("class_weight", torch.tensor(fixed, dtype=torch.float64) if fixed else None)
        # Sized by the first call (initialize_parameters): the class count comes from the logits' shape.
        self.register_buffer("class_counts", UnsizedCounts() if self.balanced else None)
        if not self.balanced:  # nothing to size: not lazy at all (no hooks on every call)
            self._initialize_hook.remove()
            self._load_hook.remove()
            del self._initialize_hook, self._load_hook

    def initialize_parameters(self, pred: torch.Tensor, target: object = None, sample_weight: object = None,
                              **kwargs: object) -> None:
        """Size ``class_counts`` (zeros) for these logits: 2 for binary logits [N] or [N, 1], else C
        of [N, C, ...]. Called before the first forward (``LazyModuleMixin``'s hook, which dynamo
        runs before tracing), by ``specialise`` and by ``forward`` itself; inputs forward refuses
        (its own checks of dtypes and shapes) leave it unsized for forward's diagnostic, so the next
        call finds the module as a fresh one."""
        if not self.balanced or not _unsized(self.class_counts) or not isinstance(pred, torch.Tensor) or pred.dim() == 0:
            return
        if isinstance(target, torch.Tensor) and not self._accepts(pred, target, sample_weight):
            return
        # int(): under dynamo's dynamic shapes the class count is symbolic; the buffer needs a number
        classes = 2 if pred.dim() == 1 or pred.shape[1] == 1 else int(pred.shape[1])
        # Outside any tracing mode (make_fx in `lossdsl explain`): the buffer is state, not a traced op.
        # A fresh tensor, not materialize() in place: inside a torch.func transform (vmap, grad) an
        # in-place resize of the lazy buffer crashed the interpreter.
        with torch.no_grad(), _disable_current_modes():
            self.class_counts = torch.zeros(classes, dtype=torch.long, device=self.class_counts.device)

    def _infer_parameters(self, module: CrossEntropy, args: tuple, kwargs: dict | None = None) -> None:
        """The lazy hook: size ``class_counts``, then drop the hooks; inputs forward refuses leave the
        buffer and the hooks as they were (torch's hook would raise that the module is not initialized,
        in place of forward's diagnostic)."""
        self.initialize_parameters(*args, **(kwargs or {}))
        if not self.has_uninitialized_params():
            super()._infer_parameters(module, args, kwargs)

    def _accepts(self, pred: torch.Tensor, target: torch.Tensor, sample_weight: object, indices: bool = True) -> bool:
        """Whether forward's checks of dtypes and shapes pass these inputs (no diagnostic raised),
        and with ``indices``, where reading them costs no synchronisation, whether every class index
        is in range (one out of range fails in the count; on CUDA it is a device-side assert anyway)."""
        from ..errors import LossSpecError

        try:
            self.expect_float(0, pred)
            self.expect_real(1, target)
            _, _, labels, classes, _ = self._layout(
                pred, target, sample_weight if isinstance(sample_weight, torch.Tensor) else None)
        except LossSpecError:
            return False
        if not indices or labels.is_floating_point() or labels.dtype == torch.bool or not host_reads_are_free(labels):
            return True
        return bool(((labels == self.ignore_index) | ((labels >= 0) & (labels < classes))).all())

    def _on_counts_for_one_call(self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None,
                                parts: bool) -> torch.Tensor:
        """Forward on counts sized (zeros) for this call alone: the call has a class index out of range,
        so it fails as it always did (torch's diagnostic), and the buffer goes back to unsized."""
        unsized = self.class_counts
        classes = 2 if pred.dim() == 1 or pred.shape[1] == 1 else int(pred.shape[1])
        self.class_counts = torch.zeros(classes, dtype=torch.long, device=unsized.device)
        try:
            return self.forward(pred, target, sample_weight, parts=parts)
        except BaseException:
            self.class_counts = unsized
            raise

    def _layout(self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None
                ) -> tuple[bool, torch.Tensor | None, torch.Tensor, int, torch.Tensor | None]:
        """Forward's checks of the shapes: whether the logits are binary, the binary logits [N] (else
        None), the targets as the forms read them, the class count and the sample weights."""
        binary = pred.dim() == 1 or (pred.dim() == 2 and pred.shape[1] == 1)
        logits = None
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
            indices = (pred.shape[0], *pred.shape[2:])
            expected = tuple(pred.shape) if target.is_floating_point() else indices
            if tuple(target.shape) != expected:
                self.fail(1, f"logits {tuple(pred.shape)} need integer class indices of shape {indices} or "
                             f"probabilities of shape {tuple(pred.shape)}, got {target.dtype} {tuple(target.shape)}"
                             + self._layout_hint(pred, target))
            num_classes = pred.shape[1]
            if num_classes == 1 and not target.is_floating_point():  # every index but 0 is out of range
                self.fail(0, f"logits {tuple(pred.shape)} have one class; binary logits are [N] or [N, 1] "
                             "(for [N, 1, ...] masks use bce, focal or dice)")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, pred.shape[0], pred.dtype)
        return binary, logits, target, num_classes, sample_weight

    def _replicate_for_data_parallel(self) -> CrossEntropy:
        if self.has_uninitialized_params():
            return super()._replicate_for_data_parallel()  # torch's error: call it once first
        return Term._replicate_for_data_parallel(self)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "class_counts"
        if key in destination and _unsized(destination[key]):  # unsized: the empty counts of before
            destination[key] = torch.zeros(0, dtype=torch.long, device=destination[key].device)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_real(1, target)
        if self.balanced and _unsized(self.class_counts):  # called as forward, not through the module's hook
            self.initialize_parameters(pred, target, sample_weight)
            if _unsized(self.class_counts) and pred.dim() and self._accepts(pred, target, sample_weight, indices=False):
                return self._on_counts_for_one_call(pred, target, sample_weight, parts)  # refused for its indices
        computed_in = accumulation_dtype(pred.dtype)
        if computed_in != pred.dtype:  # half precision: its sums and counts overflow at 65,504 (torch's too)
            return self.forward(pred.to(computed_in), target, sample_weight).to(pred.dtype)
        binary, logits, target, num_classes, sample_weight = self._layout(pred, target, sample_weight)
        if parts:
            return self._per_sample(pred, target, binary, num_classes)
        if self.reduction == "none":
            losses, _ = self._losses(pred, target, binary, num_classes)
            return self.reduce(losses, sample_weight, parts)
        if target.numel() == 0:
            if self.balanced and self.training and distributed.active():  # still take part in the count sum
                self._class_weight(target.long(), target == target, num_classes, pred.dtype)
            return pred.sum()
        if self.z_loss or self.count:
            return self._general_form(pred, target, binary, num_classes, sample_weight)
        if target.is_floating_point():
            return self._probability_form(pred, target, binary, sample_weight)
        if binary and self._nothing_to_ignore(target) and self.class_weight is None and not self.balanced:
            return self._plain_sigmoid_form(logits, target, sample_weight)
        target = target.long()  # torch's kernels take int64 indices, and int32 would wrap a large ignore_index
        if not binary and sample_weight is None and not self.label_smoothing and not self.balanced:
            return self._plain_softmax_form(pred, target)
        if binary and sample_weight is None and self.class_weight is None and not self.balanced:
            return self._masked_sigmoid_form(logits, target)
        if (sample_weight is None and self.balanced and not self.label_smoothing
                and self.class_counts.numel() == num_classes and not distributed.active()):
            return self._balanced_form(logits if binary else pred, target)
        keep = target != self.ignore_index
        labels = None
        if self.class_weight is not None or self.balanced:  # class indices to look weights up
            labels = (target * keep).long()  # ignored targets point at class 0 and weigh 0
        weight = self._class_weight(labels, keep, num_classes, pred.dtype)
        if binary:
            total, denominator = self._sigmoid_form(logits, target, labels, keep, weight, sample_weight)
        elif sample_weight is None:
            total = F.cross_entropy(
                pred, target, weight=weight, ignore_index=self.ignore_index, reduction="sum",
                label_smoothing=self.label_smoothing,
            )
            if self.reduction == "sum":
                return total
            denominator = keep.sum().to(pred.dtype) if weight is None else (weight[labels] * keep).sum()
        else:
            losses = F.cross_entropy(
                pred, target, weight=weight, ignore_index=self.ignore_index, reduction="none",
                label_smoothing=self.label_smoothing,
            )
            per_element = sample_weight.reshape(-1, *[1] * (losses.dim() - 1))  # a sample's weight, per pixel
            total = (losses * per_element).sum()
            share = keep * per_element
            denominator = (share if weight is None else weight[labels] * share).sum()
        if self.reduction == "sum":
            return total
        return weighted_mean(total, denominator)

    def specialise(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> Callable[..., torch.Tensor]:
        """The forward's straight path for this layout (see ``Term.specialise``), without sample
        weights, z-loss, ``normalize=count`` or ``reduction=none``, for float32 or float64 logits:

        - binary logits [N] with bool or uint8 targets (no ignore_index to mask when it is
          negative), with int64 targets (masked), or with probabilities; no class weights;
        - logits [N, C, ...] with integer class indices, with or without a list of class weights,
          without label smoothing;
        - ``weight=balanced`` or ``class_balanced`` on int64 indices (binary or [N, C, ...]),
          without label smoothing, with the counts already sized for the logits' classes.

        Each checks the sizes it relies on per call and hands any other call to ``forward``, which
        gives the diagnostics (and an empty batch's 0)."""
        self.initialize_parameters(pred, target, sample_weight)
        if self.balanced and _unsized(self.class_counts):  # inputs forward refuses: its diagnostics
            return self.forward
        fast = self._straight_path(pred, target, sample_weight)
        return self.forward if fast is None else fast

    def _straight_path(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None
    ) -> Callable[..., torch.Tensor] | None:
        if (sample_weight is not None or self.z_loss or self.count or self.reduction == "none"
                or pred.dtype not in (torch.float32, torch.float64) or target.is_complex()):
            return None
        forward, weighted = self.forward, self.class_weight is not None
        convert = target.dtype != torch.long  # int32 from numpy, uint8: torch's kernels take int64
        if pred.dim() == 1:
            if target.dim() != 1 or weighted:
                return None
            if target.is_floating_point():
                if self.balanced:
                    return None  # forward's diagnostic: balanced counts classes

                def binary_probabilities(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                    if target.shape != pred.shape or not pred.shape[0]:
                        return forward(pred, target)
                    return self._binary_probability_form(pred, target, None)

                return binary_probabilities
            if self.balanced:
                if self.label_smoothing or convert:
                    return None
                counted = self._counted_straight()
                buffers = self._buffers  # class_counts read per call: fit() and load_state_dict replace it

                def binary_balanced(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                    counts = buffers["class_counts"]
                    if target.shape != pred.shape or not pred.shape[0] or counts.shape[0] != 2 or distributed.active():
                        return forward(pred, target)
                    return counted(pred, target, counts)

                return binary_balanced
            if self._nothing_to_ignore(target):  # bool or uint8 cannot equal a negative ignore_index

                def binary_flags(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                    if target.shape != pred.shape or not pred.shape[0]:
                        return forward(pred, target)
                    return self._plain_sigmoid_form(pred, target, None)

                return binary_flags

            def binary_labels(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                if target.shape != pred.shape or not pred.shape[0]:
                    return forward(pred, target)
                return self._masked_sigmoid_form(pred, target.long() if convert else target)

            return binary_labels
        if target.is_floating_point() or target.dim() != pred.dim() - 1 or self.label_smoothing:
            return None
        # [N, 1, ...] logits are binary (forward's reshapes); a list of weights fixes the class count.
        classes = self.class_weight.numel() if weighted else None
        if self.balanced:
            if convert:
                return None
            counted = self._counted_straight()
            buffers = self._buffers

            def balanced(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                counts = buffers["class_counts"]
                if (pred.shape[1] < 2 or target.shape[1:] != pred.shape[2:] or target.shape[0] != pred.shape[0]
                        or not target.numel() or counts.shape[0] != pred.shape[1] or distributed.active()):
                    return forward(pred, target)
                return counted(pred, target, counts)

            return balanced

        plain_softmax_form, nll_form, ignore_index = self._plain_softmax_form, self._nll_form, self.ignore_index
        # _plain_softmax_form's first case, its attributes read here: torch's own mean once a read
        # shows a kept target (a negative ignore_index: one max); any other call takes the method.
        torchs_mean = self.reduction == "mean" and not weighted and ignore_index < 0

        def softmax_form(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if convert:
                target = target.long()
            if not torchs_mean:
                return plain_softmax_form(pred, target)
            if host_reads_are_free(target) and target.max().item() > ignore_index:
                return F.cross_entropy(pred, target, ignore_index=ignore_index)
            return nll_form(pred, target)

        if pred.dim() == 2:  # (the signature's: [N, C] logits, [N] targets)

            def class_indices(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                if (pred.shape[1] < 2 or target.shape[0] != pred.shape[0] or not target.shape[0]
                        or (classes is not None and pred.shape[1] != classes)):
                    return forward(pred, target)
                return softmax_form(pred, target)

            return class_indices

        def class_maps(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if (pred.shape[1] < 2 or target.shape[1:] != pred.shape[2:] or target.shape[0] != pred.shape[0]
                    or not target.numel() or (classes is not None and pred.shape[1] != classes)):
                return forward(pred, target)
            return softmax_form(pred, target)

        return class_maps

    def _counted_straight(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """``_balanced_form`` for a training-mode signature (the caller has checked the sizes, the counts'
        among them): on the CPU (outside torch.compile) a batch read to hold only class indices in
        [0, C) while ``ignore_index`` lies outside them has no target to ignore and none out of range,
        so its ones go straight into ``class_counts`` (no copy to count apart and add: nothing can
        raise halfway) and no mask is built: the same counts, values and gradients, fewer ops. Any
        other batch, and eval mode (frozen counts, the unseen-class rule), take ``_balanced_form``."""
        balanced_form, beta, reduction, ignore_index = self._balanced_form, self.beta, self.reduction, self.ignore_index
        term = self

        def counted(pred: torch.Tensor, target: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            classes = counts.shape[0]
            # The term's own mode, read per call: the signature is the module's, and term.eval() alone
            # freezes this term's counts as forward does.
            if not term.training or 0 <= ignore_index < classes or not host_reads_are_free(target):
                return balanced_form(pred, target)
            low, high = torch.aminmax(target)
            if low.item() < 0 or high.item() >= classes:  # ignored targets, or an index out of range (its E402)
                return balanced_form(pred, target)
            labels = target if target.dim() == 1 else target.reshape(-1)
            counts.index_add_(0, labels, torch.ones_like(labels))
            if beta is not None:
                weight = class_balanced_weight(counts, beta, pred.dtype)
            else:
                weight = counts.to(pred.dtype)
                weight = weight.sum() / (classes * weight.clamp_min(1))
            if pred.dim() == 1:  # binary logits: the sigmoid form, each target weighted by its class's weight
                share = weight.index_select(0, target)
                total = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), weight=share, reduction="sum")
                return total if reduction == "sum" else total / share.sum()
            total = F.cross_entropy(pred, target, weight=weight, ignore_index=ignore_index, reduction="sum")
            return total if reduction == "sum" else total / weight[target].sum()

        return counted

    def _general_form(
        self, pred: torch.Tensor, target: torch.Tensor, binary: bool, num_classes: int,
        sample_weight: torch.Tensor | None,
    ) -> torch.Tensor:
        """``mean`` or ``sum`` from the element-wise losses and shares of ``_losses`` (for the
        options the fused kernels lack: ``z_loss``, ``normalize=count``)."""
        losses, share = self._losses(pred, target, binary, num_classes)
        if sample_weight is not None:
            per_element = sample_weight.reshape(-1, *[1] * (losses.dim() - 1))  # a sample's weight, per pixel
            losses = losses * per_element
            if not self.count:  # count divides by the targets alone, as mmpretrain does
                share = share * per_element
        if self.reduction == "sum":
            return losses.sum()
        return weighted_mean(losses.sum(), share.sum())

    def _per_sample(self, pred: torch.Tensor, target: torch.Tensor, binary: bool, num_classes: int) -> torch.Tensor:
        """For group_loss and ``LossModule.per_sample``: [N, 2] of each sample's weighted loss and
        weight, summed over its elements, so a group's mean is ce's own mean over the group (class
        weights and ignored targets alike). With ``reduction=sum`` each weight is 1."""
        losses, share = self._losses(pred, target, binary, num_classes)
        if losses.dim() > 1:  # pixels: a sample's sums over its elements
            losses, share = losses.flatten(1).sum(dim=1), share.flatten(1).sum(dim=1)
        if self.reduction == "sum":
            share = torch.ones_like(share)
        return torch.stack([losses, share], dim=1)

    def _losses(
        self, pred: torch.Tensor, target: torch.Tensor, binary: bool, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``F.cross_entropy(reduction="none")`` [N, ...] (binary logits as the two-class logits
        ``[0, z]``) plus the z-loss, and each element's share of ``mean``'s denominator: its class
        weight (1 with ``normalize=count``), 0 where ignored, 1 for probability targets (torch's
        mean over them counts elements)."""
        if binary:  # the two-class softmax of [0, logit] is sigmoid(logit)
            logits = pred if pred.dim() == 1 else pred[:, 0]
            pred = torch.stack([torch.zeros_like(logits), logits], dim=1)
            if target.is_floating_point():
                probability = target.to(logits.dtype)
                target = torch.stack([1 - probability, probability], dim=1)
        if target.is_floating_point():
            if self.balanced:
                self.fail(1, f"weight={self._counted_weight()} counts classes, so it needs integer class indices, not probabilities")
            weight = self._class_weight(None, None, num_classes, pred.dtype)
            losses = F.cross_entropy(
                pred, target.to(pred.dtype), weight=weight, reduction="none", label_smoothing=self.label_smoothing
            )
            share = torch.ones_like(losses)
        else:
            target = target.long()
            keep = target != self.ignore_index
            labels = target * keep
            weight = self._class_weight(labels, keep, num_classes, pred.dtype)
            losses = F.cross_entropy(
                pred, target, weight=weight, ignore_index=self.ignore_index, reduction="none",
                label_smoothing=self.label_smoothing,
            )
            share = keep.to(pred.dtype) if weight is None else weight[labels] * keep
        if self.z_loss:  # weighed as the element's ce: by its class weight, 0 where ignored
            losses = losses + self.z_loss * torch.logsumexp(pred, dim=1).square() * share
        if self.count and not target.is_floating_point():
            share = keep.to(pred.dtype)
        return losses, share

    @staticmethod
    def _layout_hint(pred: torch.Tensor, target: torch.Tensor) -> str:
        """Language-model logits [B, T, V] with targets [B, T]: torch wants the classes second."""
        if pred.dim() == 3 and not target.is_floating_point() and tuple(target.shape) == tuple(pred.shape[:2]):
            b, t, v = pred.shape
            return (f"; logits [B, T, V] = {(b, t, v)} with targets [B, T] put the classes last: pass "
                    f"pred.transpose(1, 2) (shape {(b, v, t)}), or flatten both, pred.reshape(-1, {v}) and "
                    "target.reshape(-1)")
        return ""

    def _nothing_to_ignore(self, target: torch.Tensor) -> bool:
        """True when no target can equal ignore_index (bool or uint8 targets and a negative index)."""
        return self.ignore_index < 0 and target.dtype in (torch.bool, torch.uint8)

    def _plain_sigmoid_form(
        self, logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None
    ) -> torch.Tensor:
        """Binary logits, 0/1 targets that cannot be ignored, no class weights: torch's own function."""
        y = target.to(logits.dtype)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        if sample_weight is None:
            return F.binary_cross_entropy_with_logits(logits, y, reduction=self.reduction)
        return self.reduce(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), sample_weight)

    def _plain_softmax_form(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Class indices without smoothing or running counts: one NLL kernel that also returns the
        summed weight of the kept targets, so ``mean`` needs no second pass (and is 0, not NaN, when
        every target is ignored).

        On the CPU (outside torch.compile), where reading a value costs no synchronisation, a batch
        read to keep a target takes torch's own ``F.cross_entropy`` mean, whose divisor is then at least 1."""
        if (self.reduction == "mean" and self.class_weight is None and host_reads_are_free(target)
                and self._any_kept(target)):
            return F.cross_entropy(pred, target, ignore_index=self.ignore_index)
        return self._nll_form(pred, target)

    def _nll_form(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``_plain_softmax_form`` without the read: the NLL kernel's sum and kept weight."""
        log_prob = F.log_softmax(pred, dim=1)
        weight = self._class_weight(None, None, pred.shape[1], pred.dtype)
        if pred.dim() == 2:
            total, total_weight = torch.ops.aten.nll_loss_forward(log_prob, target, weight, 2, self.ignore_index)
        else:  # [N, C, ...] as [N, C, L, 1]
            n, c = pred.shape[:2]
            total, total_weight = torch.ops.aten.nll_loss2d_forward(
                log_prob.reshape(n, c, -1, 1), target.reshape(n, -1, 1), weight, 2, self.ignore_index
            )
        if self.reduction == "sum":
            return total
        if weight is None:  # total_weight counts the kept targets: 0 only when none is kept, and then total is 0
            return total / total_weight.clamp_min(1)
        return weighted_mean(total, total_weight)

    def _masked_sigmoid_form(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Binary logits, int64 targets that may equal ignore_index, no class or sample weights: one
        fused kernel weighted by the kept targets; ``mean`` divides by their count (0 when none is kept).

        On the CPU, where reading a value costs no synchronisation, a batch with no ignored target
        takes torch's unweighted kernel instead (not while torch.compile traces: it cannot read values)."""
        if host_reads_are_free(target) and not self._any_ignored(target):
            return self._plain_sigmoid_form(logits, target, None)
        keep = (target != self.ignore_index).to(logits.dtype)
        y = target.to(logits.dtype)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        total = F.binary_cross_entropy_with_logits(logits, y, weight=keep, reduction="sum")
        if self.reduction == "sum":
            return total
        return total / keep.sum().clamp_min(1)  # a count: 0 only when nothing is kept, and then total is 0

    def _any_kept(self, target: torch.Tensor) -> bool:
        """Whether a (non-empty) target differs from ignore_index, read on the host: for a negative
        index, one max over the targets (a target above the index is kept)."""
        if self.ignore_index < 0:
            return int(target.max()) > self.ignore_index
        low, high = torch.aminmax(target)
        return not int(low) == int(high) == self.ignore_index

    def _any_ignored(self, target: torch.Tensor) -> bool:
        """Whether a (non-empty) target equals ignore_index, read on the host. A negative index
        below the smallest target cannot be equal: one min over the targets, cheaper than a comparison."""
        if self.ignore_index < 0:
            return int(target.min()) <= self.ignore_index
        return bool((target == self.ignore_index).any())

    def _balanced_form(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``weight=balanced`` or ``class_balanced`` on int64 class indices (binary logits [N] or
        logits [N, C, ...]), without label smoothing or sample weights, outside torch.distributed, with
        ``class_counts`` sized for the logits' classes.

        In training the batch's kept targets are counted into ``class_counts`` first, so every class a
        kept target names has a count: the unseen-class rule and the all-empty guard of
        ``balanced_weight`` cannot change a weight the loss reads (without smoothing it reads only the
        targets' classes, and an ignored target's weight times 0), and are left out.

        On the CPU (outside torch.compile) a batch read to hold no ignored target skips the mask:
        each target weighs its class's weight times 1, the same values, and the summed weights of a
        non-empty batch are positive, so the division needs no 0/0 guard."""
        keep = None
        if not host_reads_are_free(target) or self._any_ignored(target):
            keep = target != self.ignore_index
        labels = target if keep is None else target * keep  # ignored targets point at class 0 and weigh 0
        counts = self.class_counts
        if self.training:
            ones = torch.ones_like(labels.reshape(-1)) if keep is None else keep.reshape(-1).long()
            # Counted apart, then added: an index out of range raises inside index_add_ after adding
            # the ones before it, and a refused call must leave the counts as they were.
            counts.add_(torch.zeros_like(counts).index_add_(0, labels.reshape(-1), ones))
            if self.beta is not None:
                weight = class_balanced_weight(counts, self.beta, pred.dtype)
            else:
                weight = counts.to(pred.dtype)
                weight = weight.sum() / (counts.numel() * weight.clamp_min(1))
        elif self.beta is not None:
            weight = class_balanced_weight(counts, self.beta, pred.dtype)
        else:
            weight = balanced_weight(counts, pred.dtype)
        if pred.dim() == 1:  # binary logits: the sigmoid form, each target weighted by its class's weight
            share = weight.index_select(0, labels)
            share = share if keep is None else share * keep
            total = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), weight=share, reduction="sum")
            denominator = share.sum()
        else:
            total = F.cross_entropy(pred, target, weight=weight, ignore_index=self.ignore_index, reduction="sum")
            if self.reduction == "sum":
                return total
            # Summed as forward always did (not nll_loss's own total weight), to the last bit.
            denominator = weight[labels].sum() if keep is None else (weight[labels] * keep).sum()
        if self.reduction == "sum":
            return total
        return total / denominator if keep is None else weighted_mean(total, denominator)

    def _binary_probability_form(self, logits: torch.Tensor, target: torch.Tensor,
                                 sample_weight: torch.Tensor | None) -> torch.Tensor:
        """Binary logits [N] with probabilities of class 1, no class weights: F.cross_entropy's
        two-class form of ``[0, z]`` against ``[1 - p, p]`` is exactly the binary cross-entropy
        ``-(1 - p) log sigmoid(-z) - p log sigmoid(z)`` (smoothing included: ``p (1 - e) + e / 2``),
        which torch computes in one kernel."""
        y = target.to(logits.dtype)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        if sample_weight is None and self.reduction != "none":
            return F.binary_cross_entropy_with_logits(logits, y, reduction=self.reduction)
        return self.reduce(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), sample_weight)

    def _sigmoid_form(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        labels: torch.Tensor | None,
        keep: torch.Tensor,
        weight: torch.Tensor | None,
        sample_weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and summed weight of the sigmoid form.

        An ignored target's value (-100) reaches the loss only times a zero weight, which zeroes
        its loss and its gradient, so the targets need no masking of their own.
        """
        smoothing = self.label_smoothing
        # index_select, not weight[labels]: a target of -1 (not ignore_index) raises instead of wrapping to weight[1]
        share = keep.to(logits.dtype) if weight is None else weight.index_select(0, labels) * keep
        if sample_weight is not None:
            share = share * sample_weight
        if weight is None or not smoothing:
            y = target.to(logits.dtype)
            soft_target = y * (1 - smoothing) + smoothing / 2 if smoothing else y
            if share.requires_grad:  # learned sample weights: torch's weight= passes them no gradient
                total = (F.binary_cross_entropy_with_logits(logits, soft_target, reduction="none") * share).sum()
            else:  # one fused kernel
                total = F.binary_cross_entropy_with_logits(logits, soft_target, weight=share, reduction="sum")
            return total, share.sum()
        # F.cross_entropy's smoothing term weighs each class by its own weight.
        nll_1, nll_0 = F.softplus(-logits), F.softplus(logits)
        nll_true = torch.where(labels.bool(), nll_1, nll_0)
        smooth = (weight[0] * nll_0 + weight[1] * nll_1) * keep
        if sample_weight is not None:
            smooth = smooth * sample_weight
        total = (1 - smoothing) * (share * nll_true).sum() + smoothing / 2 * smooth.sum()
        return total, share.sum()

    def _probability_form(
        self, pred: torch.Tensor, target: torch.Tensor, binary: bool, sample_weight: torch.Tensor | None
    ) -> torch.Tensor:
        if self.balanced:
            self.fail(1, f"weight={self._counted_weight()} counts classes, so it needs integer class indices, not probabilities")
        if binary and self.class_weight is None:
            return self._binary_probability_form(pred if pred.dim() == 1 else pred[:, 0], target, sample_weight)
        if binary:  # the two-class form of F.cross_entropy, as for class indices
            logits = pred if pred.dim() == 1 else pred[:, 0]
            pred = torch.stack([torch.zeros_like(logits), logits], dim=1)
            probability = target.to(logits.dtype)
            target = torch.stack([1 - probability, probability], dim=1)
        weight = self._class_weight(None, None, pred.shape[1], pred.dtype)
        losses = F.cross_entropy(
            pred, target.to(pred.dtype), weight=weight, reduction="none", label_smoothing=self.label_smoothing
        )
        return self.reduce(losses, sample_weight)

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
        padded = counts.numel() < num_classes
        if padded:  # first use, or classes that fit() never saw
            counts = F.pad(counts, (0, num_classes - counts.numel()))
        if self.training:
            batch_counts = torch.zeros_like(counts).index_add_(0, labels.reshape(-1), keep.reshape(-1).long())
            if distributed.active():  # every rank counts the global batch
                distributed.all_reduce_counts_(batch_counts)
            counts.add_(batch_counts)
            if padded:  # kept once the batch is counted: a call refused in the count changes nothing
                self.class_counts = counts
            if self.beta is not None:
                return class_balanced_weight(counts, self.beta, dtype)
            # This batch is counted, so only an all-ignored batch has no counts, and it weighs nothing.
            return balanced_weight(counts, dtype, guard_empty=False)
        if self.beta is not None:
            return class_balanced_weight(counts, self.beta, dtype)
        return balanced_weight(counts, dtype)

    def _counted_weight(self) -> str:
        """The weight option that counts classes, as the spec writes it."""
        return "balanced" if self.beta is None else f"class_balanced({self.beta:g})"

    def fit(self, pred: torch.Tensor | None, target: torch.Tensor | None) -> None:
        """Set the class counts from a whole data set's targets (``LossModule.fit`` calls it).

        The class count comes from ``pred``'s shape when given, else from the largest target.
        """
        if not self.balanced or target is None:
            return
        num_classes = 2
        if pred is not None and pred.dim() >= 2 and pred.shape[1] > 1:
            num_classes = pred.shape[1]
        labels = target.reshape(-1).long()
        labels = labels[labels != self.ignore_index]
        self.class_counts = torch.bincount(labels, minlength=num_classes).to(self.class_counts.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # Take the checkpoint's size; an empty one (saved unsized) leaves the counts unsized.
        key = prefix + "class_counts"
        if self.balanced and key in state_dict:
            saved = state_dict[key]
            self.class_counts = UnsizedCounts(saved.device) if _unsized(saved) or not saved.numel() else torch.zeros_like(saved)
            if _unsized(self.class_counts):
                state_dict = {**state_dict, key: self.class_counts}  # nothing to copy into an unsized buffer
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def balanced_weight(counts: torch.Tensor, dtype: torch.dtype, guard_empty: bool = True) -> torch.Tensor:
    """scikit-learn's balanced weights ``n / (C * count_c)``.

    A class not seen yet weighs as much as the rarest class seen (``n / C`` would grow without
    bound as ``n`` does, and only label smoothing would feel it); no counts at all give ones.
    """
    counts = counts.to(dtype)
    total = counts.sum()
    weight = total / (counts.numel() * counts.clamp_min(1))
    seen = counts > 0
    weight = torch.where(seen, weight, weight.masked_fill(~seen, 0).amax())
    if not guard_empty:
        return weight
    return torch.where(total > 0, weight, torch.ones_like(weight))


def class_balanced_weight(counts: torch.Tensor, beta: float, dtype: torch.dtype) -> torch.Tensor:
    """Cui et al. (2019)'s class-balanced weights ``(1 - beta) / (1 - beta^n_c)``, scaled to sum
    to the class count ``C`` as the paper does.

    ``1 - beta^n`` is ``-expm1(n log beta)``, which keeps its digits for ``beta`` near 1 and small
    ``n``. A class not seen yet (``n_c = 0``, whose effective number is 0) weighs as much as the
    rarest class seen, as for ``balanced``; no counts at all give ones.
    """
    computed_in = accumulation_dtype(dtype)
    counts = counts.to(computed_in)
    seen = counts > 0
    if beta == 0:  # every effective number is 1 (0^0 aside): equal weights
        weight = torch.ones_like(counts)
    else:
        weight = (1 - beta) / -torch.expm1(counts.clamp_min(1) * math.log(beta))
        weight = torch.where(seen, weight, weight.masked_fill(~seen, 0).amax())
    weight = torch.where(seen.any(), weight, torch.ones_like(weight))
    return (weight * (counts.numel() / weight.sum())).to(dtype)


def _bce_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.binary_cross_entropy_with_logits."""
    n, c = s.n, s.classes
    return [parity.Case("bce()", parity.shape(n, c), parity.inputs(pred=parity.randn(n, c), target=parity.flags(n, c)),
                        lambda pred, target: F.binary_cross_entropy_with_logits(pred, target), one_call=True)]


@implements("bce", cases=_bce_cases)
class BinaryCrossEntropy(Term):
    """``F.binary_cross_entropy_with_logits(pred, target, pos_weight=...)``; ``target`` has ``pred``'s shape.

    ``pos_weight`` has one entry, or one per label (``pred.shape[-1]``). ``label_smoothing=e``
    replaces the targets by ``y * (1 - e) + e / 2`` (torch's function lacks it). ``reduction=none``
    gives the element-wise losses, of ``pred``'s shape.

    ``weight=[w_1, ..., w_C]`` weighs each label of multi-label targets ``[N, C]`` (or ``[N, ...,
    C]``): every element's loss times its label's weight, as torch's ``weight`` of shape ``[C]``;
    ``sum`` and ``none`` are torch's. By default ``mean`` is torch's too: label weights scale
    each element's loss and ``mean`` divides by the element count,
    ``sum(w_c l_nc) / (N C)``, as ``F.binary_cross_entropy_with_logits(weight=w)`` does (unlike
    ``F.cross_entropy(weight=w)``, which divides by the summed weights: so does ``ce``). With
    ``sample_weight`` the denominator is the elements' summed sample weights, as for every
    lossdsl term. ``pos_weight`` scales the positive part of the loss inside it, as in torch,
    and never enters the denominator.

    ``normalize=weights`` divides by the summed products of label and sample weights, ce's
    convention (only the label weights' ratios matter); ``normalize=count`` by the element count
    whatever the sample weights, mmpretrain's (``weight_reduce_loss``, ``avg_factor=None``).
    Without label or sample weights the three agree.
    """

    per_sample = True

    def __init__(self, params: BCEParams):
        super().__init__()
        self.reduction = params.reduction
        self.label_smoothing = params.label_smoothing
        self.count = params.normalize == "count"
        self.divide_by_label_weight = params.normalize == "weights"
        pos_weight = params.pos_weight
        if isinstance(pos_weight, float):
            pos_weight = (pos_weight,)
        self.register_buffer("pos_weight", torch.tensor(pos_weight, dtype=torch.float64) if pos_weight else None)
        label_weight = params.weight
        self.register_buffer("label_weight", torch.tensor(label_weight, dtype=torch.float64) if label_weight else None)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_real(1, target)
        self.expect_same_shape(1, 0, target, pred)
        pos_weight = None
        if self.pos_weight is not None:
            width = pred.shape[-1] if pred.dim() > 1 else 1
            if self.pos_weight.numel() not in (1, width):
                self.fail(0, f"pos_weight has {self.pos_weight.numel()} entries but pred has {width} labels")
            pos_weight = self.pos_weight.to(pred.dtype)
        target = target.to(pred.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        if self.label_weight is not None or self.count:
            return self._weighted_form(pred, target, pos_weight, sample_weight, parts)
        if sample_weight is None and pred.numel():
            return F.binary_cross_entropy_with_logits(pred, target, pos_weight=pos_weight, reduction=self.reduction)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, self.batch_size(0, pred), pred.dtype)
        losses = F.binary_cross_entropy_with_logits(pred, target, pos_weight=pos_weight, reduction="none")
        return self.reduce(losses, sample_weight, parts)

    def _weighted_form(
        self, pred: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None,
        sample_weight: torch.Tensor | None, parts: bool,
    ) -> torch.Tensor:
        """``weight=[...]`` or ``normalize=count``: each element's loss times its label's weight;
        ``mean`` divides by the element count (weighted by sample weights unless ``count``), or by
        the summed element weights (``weights``)."""
        weight = None
        if self.label_weight is not None:
            width = pred.shape[-1] if pred.dim() > 1 else 1
            if self.label_weight.numel() != width:
                self.fail(0, f"weight has {self.label_weight.numel()} entries, one per label, but pred has {width} labels")
            weight = self.label_weight.to(pred.dtype)
        losses = F.binary_cross_entropy_with_logits(pred, target, weight=weight, pos_weight=pos_weight, reduction="none")
        share = weight.expand(pred.shape) if weight is not None and self.divide_by_label_weight else torch.ones_like(losses)
        if parts:  # [N, 2]: each sample's weighted loss and weight, so a group's mean is bce's own
            rows = (lambda t: t.flatten(1)) if pred.dim() > 1 else (lambda t: t.reshape(-1, 1))
            total = rows(losses).sum(dim=1)
            weights = torch.ones_like(total) if self.reduction == "sum" else rows(share).sum(dim=1)
            return torch.stack([total, weights], dim=1)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, self.batch_size(0, pred), pred.dtype)
            per_element = sample_weight.reshape(-1, *[1] * (pred.dim() - 1))
            losses = losses * per_element
            if not self.count:
                share = share * per_element
        if self.reduction == "none":
            return losses
        computed_in = accumulation_dtype(pred.dtype)
        total = losses.sum(dtype=computed_in)
        if self.reduction == "sum":
            return total.to(pred.dtype)
        return weighted_mean(total, share.sum(dtype=computed_in)).to(pred.dtype)


def _torchvision_sigmoid_focal(pred: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """``torchvision.ops.sigmoid_focal_loss(..., alpha=-1, reduction="mean")``, its code inlined
    (torchvision is not a dependency)."""
    p = torch.sigmoid(pred)
    ce_loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (ce_loss * ((1 - p_t) ** gamma)).mean()


def _monai_softmax_focal(classes: int) -> parity.Reference:
    """MONAI's softmax focal loss, summed over classes: its mean divides by N * C, lossdsl's by N."""
    from monai.losses import FocalLoss

    loss = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)
    return lambda pred, target: loss(pred, target.unsqueeze(1)) * classes


def _monai_softmax_focal_mean() -> parity.Reference:
    """MONAI's softmax focal loss as it is: its mean over N * C is focal(class_reduction=mean)."""
    from monai.losses import FocalLoss

    loss = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)
    return lambda pred, target: loss(pred, target.unsqueeze(1))


def _focal_cases(s: parity.Sizes) -> list[parity.Case]:
    """References: torchvision's sigmoid focal loss, MONAI's softmax one (summed, and as it is)."""
    n, c = s.n, s.classes
    return [
        parity.Case("focal(class_reduction=mean)", parity.shape(n, c),
                    parity.inputs(pred=parity.randn(n, c), target=parity.labels(n, classes=c)),
                    parity.lazy(_monai_softmax_focal_mean), note="monai FocalLoss(use_softmax=True)",
                    variant="softmax class mean"),
        parity.Case("focal()", parity.shape(n, c), parity.inputs(pred=parity.randn(n, c), target=parity.flags(n, c)),
                    _torchvision_sigmoid_focal, note="torchvision.ops.sigmoid_focal_loss's code", variant="sigmoid"),
        parity.Case("focal()", parity.shape(n, c), parity.inputs(pred=parity.randn(n, c), target=parity.labels(n, classes=c)),
                    parity.lazy(lambda: _monai_softmax_focal(c)), note="monai FocalLoss(use_softmax=True) * C",
                    variant="softmax"),
    ]


@implements("focal", cases=_focal_cases)
class Focal(Term):
    """Focal loss (Lin et al., 2017).

    - Sigmoid form, for logits and 0/1 (or probability) targets of one shape (``[N]``, ``[N, 1]``,
      multi-label ``[N, C]``, masks ``[N, C, ...]``): ``torchvision.ops.sigmoid_focal_loss``,
      ``BCE(x, y) * (1 - p_t)^gamma`` with ``p_t = p y + (1 - p)(1 - y)``, times
      ``alpha y + (1 - alpha)(1 - y)`` when ``alpha`` is given; binary logits ``[N, 1, ...]`` also
      take targets ``[N, ...]``. ``pos_weight`` is ``F.binary_cross_entropy_with_logits``'
      (one number, or one per class along dim 1, so masks ``[N, C, H, W]`` need no ``[C, 1, 1]``
      reshape); on 0/1 targets it is MONAI's list ``alpha`` of the sigmoid form, which weighs
      only the positives of each class.
    - Softmax form, for logits ``[N, C, ...]`` and integer targets ``[N, ...]`` or ``[N, 1, ...]``
      (as dice takes them): ``-alpha_y (1 - p_y)^gamma log p_y`` (MONAI's
      ``FocalLoss(use_softmax=True)`` summed over classes), with ``alpha`` a list of one weight
      per class (MONAI's ``alpha``; ``weight`` does the same there, and both multiply).
      ``class_reduction`` says how the one-hot classes of an element combine: ``sum`` (the default,
      as cross-entropy, so ``gamma=0`` is ``F.cross_entropy``) or ``mean``, which divides by ``C``:
      MONAI averages its ``[N, C, ...]`` losses over classes too, so MONAI's
      ``FocalLoss(use_softmax=True)`` (``reduction="mean"``) is ``focal(class_reduction=mean)``;
      a MONAI setting ported without ``class_reduction=mean`` gives ``C`` times MONAI's mean.
      (MONAI's ``reduction="sum"`` averages the spatial dimensions first, and everything when
      there are none; lossdsl's ``sum`` adds every element.) The sigmoid form is not affected: each
      label is an element there, and ``mean`` already averages over labels, as MONAI's sigmoid form does.
    - ``weight``: class weights, one per class (dim 1) or one for all, multiplying each element's
      loss (the sigmoid form's every element of class ``c``; the softmax form's elements whose
      target is ``c``), as MONAI's ``weight``.
    - ``ignore_index``: targets equal to it (class indices, or entries of the sigmoid form's
      targets) add nothing and leave ``mean``'s count. MONAI's ``ignore_index`` with class
      indices divides its mean by the kept pixels, not by pixels times classes: that is
      ``focal(ignore_index=k)`` with the default ``class_reduction=sum``. (For multi-label targets
      of several channels MONAI reads them as one-hot; lossdsl leaves out each entry equal to it.)
    - ``include_background=false`` leaves channel 0 out, as MONAI does: the sigmoid form drops
      channel 0 of logits and targets; the softmax form takes the softmax over channels 1..C-1, and
      background pixels add 0 but still count toward ``mean`` (and ``class_reduction=mean``
      divides by ``C - 1``). Per-class lists then have one entry per remaining channel
      (MONAI's convention). With one channel it changes nothing.
    - ``normalize`` says what ``mean`` divides by. ``weights``: the summed weights,
      ``sum(w l) / sum(w)`` with ``w`` the class weight (``weight``, and the softmax form's list
      ``alpha``) times ``sample_weight``: torch's ``F.cross_entropy`` convention. ``count``: the
      number of (kept) elements, ``sum(w l) / count``: mmpretrain's ``weight_reduce_loss`` and
      MONAI's. Unset (the default): class weights count, as MONAI's, and sample weights weigh
      the mean, as every lossdsl term's ``sample_weight``. ``pos_weight`` and a scalar ``alpha``
      are part of the loss, never of the divisor (as in torch's BCE and torchvision).
    - ``mean`` averages over elements (samples, and labels or pixels). ``gamma=0`` without
      ``alpha`` is cross-entropy. For ``gamma < 1``, ``(1 - p_t)`` is clamped at the smallest
      positive float before the power, so gradients stay finite at saturated logits (for ``gamma >= 1``
      they are finite unclamped). ``reduction=none`` gives the element-wise losses (0 where ignored,
      times the weights): of ``pred``'s shape (sigmoid form, without the background channel if it
      is left out), or ``[N, ...]`` (softmax form).
      Half-precision logits are computed in float32 and the loss comes back in their dtype.
    """

    per_sample = True

    def __init__(self, params: FocalParams):
        super().__init__()
        self.gamma = params.gamma
        self.reduction = params.reduction
        self.class_mean = params.class_reduction == "mean"
        self.ignore_index = params.ignore_index
        self.include_background = params.include_background
        self.normalize = params.normalize
        alpha = params.alpha
        self.scalar_alpha = alpha if isinstance(alpha, float) else None
        self.register_buffer("class_alpha", torch.tensor(alpha, dtype=torch.float64) if isinstance(alpha, tuple) else None)
        self.register_buffer("class_weight", _float64(params.weight))
        self.register_buffer("pos_weight", _float64(params.pos_weight))

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        computed_in = accumulation_dtype(pred.dtype)
        if computed_in != pred.dtype:  # half precision: class weights up to 1e15 and the sums need float32
            result = self.forward(pred.to(computed_in), target, sample_weight, parts=parts)
            return result.to(pred.dtype)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, self.batch_size(0, pred), pred.dtype)
        self.expect_real(1, target)
        one_channel = pred.dim() >= 2 and pred.shape[1] == 1 and target.shape == (pred.shape[0], *pred.shape[2:])
        if target.shape == pred.shape or one_channel:
            loss, class_weight, keep = self._sigmoid_form(pred, target.reshape(pred.shape))
            if target.shape != pred.shape:  # [N, 1, ...] logits with targets [N, ...]: losses of the targets' shape
                loss = loss.reshape(target.shape)
                class_weight = None if class_weight is None else class_weight.expand(pred.shape).reshape(target.shape)
                keep = None if keep is None else keep.reshape(target.shape)
            return self._reduce(loss, class_weight, keep, sample_weight, parts)
        n = self.batch_size(0, pred, "[N], [N, C] or [N, C, ...]")
        indices = (n, *pred.shape[2:])
        given = tuple(target.shape)
        if pred.dim() >= 2 and given == (n, 1, *pred.shape[2:]):  # [N, 1, H, W] class-index maps, as dice takes them
            target = target[:, 0]
        if pred.dim() < 2 or tuple(target.shape) != indices:
            self.fail(1, f"expected 0/1 targets of shape {tuple(pred.shape)} or class indices of shape {indices} "
                         f"(or {(n, 1, *pred.shape[2:])}), got {target.dtype} {given}")
        if target.is_floating_point():
            self.fail(1, f"class indices must be integers, got {target.dtype} values of shape {given} beside logits "
                         f"{tuple(pred.shape)}: pass target.long(), or 0/1 targets of shape {tuple(pred.shape)} "
                         "for the sigmoid form")
        return self._reduce(*self._softmax_form(pred, target.long()), sample_weight, parts)

    def specialise(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> Callable[..., torch.Tensor]:
        """The forward's straight path (see ``Term.specialise``) for float32 or float64 logits
        without sample weights, ``reduction=none``, ``ignore_index``, ``weight``, ``pos_weight`` or
        ``include_background=false``: the sigmoid form on targets of pred's dimensions (a number
        ``alpha`` or none), or the softmax form on integer class indices [N, ...] (no ``alpha``).
        Other sizes of those dimensions (an empty batch, [N, 1, ...] logits beside [N, ...] targets)
        go to ``forward``."""
        fast = self._straight_path(pred, target, sample_weight)
        return self.forward if fast is None else fast

    def _straight_path(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None
    ) -> Callable[..., torch.Tensor] | None:
        if (sample_weight is not None or self.reduction == "none" or pred.dtype not in (torch.float32, torch.float64)
                or target.is_complex() or self.ignore_index is not None or self.pos_weight is not None
                or self.class_weight is not None or not self.include_background):
            return None
        forward, reduce = self.forward, self._plain_reduction
        if target.dim() == pred.dim():
            if self.class_alpha is not None:
                return None
            convert = target.dtype != pred.dtype

            def sigmoid_form(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                if target.shape != pred.shape or not pred.numel():
                    return forward(pred, target)
                return reduce(self._sigmoid_losses(pred, target.to(pred.dtype) if convert else target))

            return sigmoid_form
        if target.dim() != pred.dim() - 1 or pred.dim() < 2 or target.is_floating_point() or self.scalar_alpha is not None:
            return None
        if self.class_alpha is not None:
            return None
        convert = target.dtype != torch.long

        def softmax_form(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if (pred.shape[1] == 1 or target.shape[0] != pred.shape[0] or target.shape[1:] != pred.shape[2:]
                    or not target.numel()):
                return forward(pred, target)
            return reduce(self._softmax_form(pred, target.long() if convert else target)[0])

        return softmax_form

    def _plain_reduction(self, loss: torch.Tensor) -> torch.Tensor:
        """``Term.reduce`` of a non-empty float32 or float64 loss without weights."""
        return loss.mean(dtype=loss.dtype) if self.reduction == "mean" else loss.sum(dtype=loss.dtype)

    def _focused(self, loss: torch.Tensor, one_minus_p: torch.Tensor) -> torch.Tensor:
        """``loss * (1 - p)^gamma``; ``gamma=0`` multiplies by nothing."""
        if self.gamma == 0:
            return loss
        return loss * self._modulation(one_minus_p)

    def _modulation(self, one_minus_p: torch.Tensor) -> torch.Tensor:
        """``(1 - p)^gamma``, its base clamped at the smallest positive float for ``gamma < 1`` only:
        there the power's gradient at 0 is infinite; for ``gamma >= 1`` it is finite, so no clamp."""
        if self.gamma == 1:
            return one_minus_p
        if self.gamma < 1:
            one_minus_p = one_minus_p.clamp_min(torch.finfo(one_minus_p.dtype).tiny)
        return one_minus_p.pow(self.gamma)

    def _per_class(self, values: torch.Tensor | None, loss_shape: torch.Size, name: str,
                   dtype: torch.dtype) -> torch.Tensor | None:
        """A per-class list shaped to broadcast along dim 1 of the sigmoid form's losses."""
        if values is None:
            return None
        channels = loss_shape[1] if len(loss_shape) >= 2 else 1
        if values.numel() == 1:
            return values.to(dtype)
        if values.numel() != channels:
            self.fail(0, f"{name} has {values.numel()} entries but pred has {channels} channels (dim 1)"
                         + ("" if self.include_background else " besides the background"))
        return values.to(dtype).reshape(channels, *[1] * (len(loss_shape) - 2))

    def _sigmoid_form(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Element-wise losses, class weights (broadcastable) and kept elements (None: all)."""
        if self.class_alpha is not None:
            self.fail(0, "a list alpha weighs classes in the softmax form; the sigmoid form takes one number "
                         "(per-class weights: weight, or pos_weight for the positives)")
        keep = None
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            target = torch.where(keep, target, torch.zeros_like(target))  # a finite loss, then masked out
        if not self.include_background and logits.dim() >= 2 and logits.shape[1] > 1:
            logits, target = logits[:, 1:], target[:, 1:]
            keep = None if keep is None else keep[:, 1:]
        y = target.to(logits.dtype)
        pos_weight = self._per_class(self.pos_weight, logits.shape, "pos_weight", logits.dtype)
        loss = self._sigmoid_losses(logits, y, pos_weight)
        return loss, self._per_class(self.class_weight, logits.shape, "weight", logits.dtype), keep

    def _sigmoid_losses(self, logits: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The sigmoid form's element-wise losses, ``y`` of the logits' dtype."""
        prob = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
        p_t = prob * y + (1 - prob) * (1 - y)
        loss = self._focused(bce, 1 - p_t)
        if self.scalar_alpha is not None:
            loss = loss * (self.scalar_alpha * y + (1 - self.scalar_alpha) * (1 - y))
        return loss

    def _softmax_form(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.scalar_alpha is not None:
            self.fail(0, "the softmax form weighs classes with a list alpha, one per class")
        if self.pos_weight is not None:
            self.fail(0, "pos_weight weighs the positives of the sigmoid form; the softmax form takes weight or a list alpha")
        keep = None
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            target = target * keep  # ignored targets point at class 0, then are masked out
        foreground = None
        if not self.include_background and logits.shape[1] > 1:
            # MONAI drops channel 0 before its softmax: background pixels have no class left and add 0
            logits, foreground = logits[:, 1:], target > 0
            target = (target - 1).clamp_min(0)
        log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -log_p if self.gamma == 0 else -self._modulation(-torch.expm1(log_p)) * log_p
        if foreground is not None:
            loss = loss * foreground
        classes = logits.shape[1]
        class_weight = None
        for name, values in (("alpha", self.class_alpha), ("weight", self.class_weight)):
            if values is None:
                continue
            if values.numel() not in (1, classes) or (name == "alpha" and values.numel() != classes):
                self.fail(0, f"{name} has {values.numel()} entries but the logits have {classes} classes"
                             + ("" if self.include_background else " besides the background"))
            values = values.to(logits.dtype)
            per_element = values[target] if values.numel() > 1 else values.expand(target.shape)
            class_weight = per_element if class_weight is None else class_weight * per_element
        if class_weight is not None and foreground is not None:  # a background pixel counts once
            class_weight = torch.where(foreground, class_weight, torch.ones_like(class_weight))
        if self.class_mean:  # the one-hot classes' mean: the C - 1 zero terms count too
            loss = loss / classes
        return loss, class_weight, keep

    def _reduce(
        self,
        loss: torch.Tensor,
        class_weight: torch.Tensor | None,
        keep: torch.Tensor | None,
        sample_weight: torch.Tensor | None,
        parts: bool,
    ) -> torch.Tensor:
        """Reduce by ``normalize``: ``sum(k w l) / sum(k w')``, with ``w`` the class and sample weights
        and ``w'`` those of them that ``normalize`` divides by."""
        divide_by_class = class_weight is not None and self.normalize == "weights"
        divide_by_sample = sample_weight is not None and self.normalize != "count"
        if class_weight is not None:
            loss = loss * class_weight
        if keep is None and not divide_by_class and (sample_weight is None or divide_by_sample):
            return self.reduce(loss, sample_weight, parts)  # Term.reduce: the weighted mean of per-sample means
        share = torch.ones_like(loss) if keep is None else keep.to(loss.dtype)
        if keep is not None:
            loss = loss * share
        if divide_by_class:
            share = share * class_weight
        if self.reduction == "none" or (parts and self.reduction == "sum"):
            return self.reduce(loss, sample_weight, parts)
        acc = accumulation_dtype(loss.dtype)
        if parts:  # a sample's summed loss and its share of mean's divisor
            flat = loss.reshape(loss.shape[0], -1)
            shares = share.reshape(share.shape[0], -1)
            return torch.stack([flat.sum(dim=1, dtype=acc), shares.sum(dim=1, dtype=acc)], dim=1).to(loss.dtype)
        if sample_weight is not None:
            per_element = sample_weight.reshape(-1, *[1] * (loss.dim() - 1))
            loss = loss * per_element
            if divide_by_sample:
                share = share * per_element
        total = loss.sum(dtype=acc)
        if self.reduction == "sum":
            return total.to(loss.dtype)
        return weighted_mean(total, share.sum(dtype=acc)).to(loss.dtype)


def _float64(values: float | tuple[float, ...] | None) -> torch.Tensor | None:
    """A per-class parameter as a float64 buffer (cast to the logits' dtype when used)."""
    if values is None:
        return None
    return torch.tensor(values if isinstance(values, tuple) else (values,), dtype=torch.float64)


def _hinge_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.multi_margin_loss; binary, the hinge on labels mapped to -1/+1."""
    n, c = s.n, s.classes
    return [
        parity.Case("hinge()", parity.shape(n, c), parity.inputs(pred=parity.randn(n, c), target=parity.labels(n, classes=c)),
                    lambda pred, target: F.multi_margin_loss(pred, target), one_call=True),
        parity.Case("hinge()", parity.shape(n), parity.inputs(pred=parity.randn(n), target=parity.flags(n, dtype=torch.long)),
                    lambda pred, target: F.relu(1 - (2 * target.to(pred.dtype) - 1) * pred).mean(), variant="binary"),
    ]


@implements("hinge", cases=_hinge_cases)
class Hinge(Term):
    """Binary: ``relu(margin - s x)`` with ``s = 2 y - 1``. Multi-class: ``F.multi_margin_loss``,
    ``sum over j != y of relu(margin - x_y + x_j) / C``. ``squared=true`` squares each hinge
    (``p=2`` for ``F.multi_margin_loss``). ``reduction=none`` gives one loss per sample ``[N]``."""

    per_sample = True

    def __init__(self, params: HingeParams):
        super().__init__()
        self.margin, self.squared, self.reduction = params.margin, params.squared, params.reduction

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_real(1, target)
        n = self.batch_size(0, pred, "[N], [N, 1] or [N, C]")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, n, pred.dtype)
        if pred.dim() == 1 or (pred.dim() == 2 and pred.shape[1] == 1):
            scores = pred.reshape(-1)
            if target.shape not in (scores.shape, pred.shape):
                self.fail(1, f"binary scores {tuple(pred.shape)} need 0/1 labels [N], got {tuple(target.shape)}")
            sign = 2 * target.reshape(-1).to(pred.dtype) - 1
            loss = F.relu(self.margin - sign * scores)
            return self.reduce(loss.square() if self.squared else loss, sample_weight, parts)
        if pred.dim() != 2 or target.shape != pred.shape[:1] or target.is_floating_point():
            self.fail(1, f"scores {tuple(pred.shape)} need integer class indices of shape ({n},), "
                         f"got {tuple(target.shape)} {target.dtype}")
        target = target.long()  # int32 labels from numpy too: F.multi_margin_loss takes int64
        p = 2 if self.squared else 1
        scores = pred.to(accumulation_dtype(pred.dtype))  # torch has no half-precision kernel on the CPU
        if sample_weight is None and pred.numel():
            return F.multi_margin_loss(scores, target, p=p, margin=self.margin, reduction=self.reduction).to(pred.dtype)
        losses = F.multi_margin_loss(scores, target, p=p, margin=self.margin, reduction="none").to(pred.dtype)
        return self.reduce(losses, sample_weight, parts)


def _soft_f1_reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(pred)
    tp = (p * target).sum(0)
    fp = (p * (1 - target)).sum(0)
    fn = ((1 - p) * target).sum(0)
    return (1 - 2 * tp / (2 * tp + fn + fp)).mean()


def _soft_f1_soft_counts(pred: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """1 - F1 from the soft counts summed over ``dims``: (0, 1) micro, (1,) per sample."""
    p = torch.sigmoid(pred)
    tp = (p * target).sum(dims)
    fp = (p * (1 - target)).sum(dims)
    fn = ((1 - p) * target).sum(dims)
    return (1 - 2 * tp / (2 * tp + fn + fp)).mean()


def _soft_f1_cases(s: parity.Sizes) -> list[parity.Case]:
    n, c = s.n, s.classes
    multi_label = parity.inputs(pred=parity.randn(n, c), target=parity.flags(n, c))
    return [
        parity.Case("soft_f1()", parity.shape(n, c), multi_label, _soft_f1_reference),
        parity.Case("soft_f1(average=micro)", parity.shape(n, c), multi_label,
                    lambda pred, target: _soft_f1_soft_counts(pred, target, (0, 1)), variant="micro"),
        parity.Case("soft_f1(average=samples)", parity.shape(n, c), multi_label,
                    lambda pred, target: _soft_f1_soft_counts(pred, target, (1,)), variant="samples"),
    ]


@implements("soft_f1", cases=_soft_f1_cases)
class SoftF1(Term):
    """``1 - (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP)`` with ``TP = sum(p y)``, ``FP = sum(p (1 - y))``,
    ``FN = sum((1 - p) y)`` and ``p = sigmoid(pred)``. ``average`` is scikit-learn's
    ``f1_score(average=...)`` on these soft counts:

    - ``macro`` (the default, and the behaviour before the option): the counts are summed over the
      batch per label, one F per label; ``mean`` averages the labels, ``sum`` adds them.
    - ``micro``: the counts are summed over the batch and the labels, one F; ``mean`` and ``sum``
      are that one ``1 - F``.
    - ``samples`` (multi-label targets ``[N, C]`` only, as in scikit-learn): the counts are summed
      over each sample's labels, one F per sample; ``mean`` averages the samples (weighted by
      ``sample_weight``, as scikit-learn's ``sample_weight`` does), ``sum`` adds them.

    At 0/1 probabilities this is ``1 - sklearn.metrics.fbeta_score(zero_division=0)``. A label
    (or sample) with no positives and no predicted mass scores F = 0, as scikit-learn's
    ``fbeta_score`` does; an empty batch gives 0. For ``macro`` and ``micro``, ``sample_weight``
    weighs each sample's counts."""

    def __init__(self, params: SoftF1Params):
        super().__init__()
        # F = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP), divided through by 1 + b^2 so that no
        # factor overflows a half-precision loss for a large beta.
        beta2 = params.beta**2
        self.fn_weight, self.fp_weight = beta2 / (1 + beta2), 1 / (1 + beta2)
        self.average = params.average
        self.reduction = params.reduction

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_real(1, target)
        n = self.batch_size(0, pred, "[N], [N, 1] or [N, C]")
        if pred.dim() == 2 and pred.shape[1] == 1 and target.shape == pred.shape[:1]:
            pred = pred[:, 0]
        self.expect_same_shape(1, 0, target, pred)
        if self.average == "samples" and pred.dim() < 2:
            self.fail(0, f"average=samples scores each sample over its labels, so it needs multi-label [N, C], "
                         f"got binary {tuple(pred.shape)} (as in scikit-learn; macro or micro score binary targets)")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, n, pred.dtype).unsqueeze(1)
        if n == 0:  # an empty batch adds nothing
            return pred.sum()
        computed_in = accumulation_dtype(pred.dtype)  # the counts are sums over the batch
        prob = torch.sigmoid(pred.to(computed_in))
        prob, labels = prob.reshape(n, -1), target.reshape(n, -1).to(computed_in)
        score_weight = None
        if sample_weight is not None:
            sample_weight = sample_weight.to(computed_in)
            if self.average == "samples":  # weighs each sample's score, not its counts (which F ignores)
                score_weight, positives = sample_weight[:, 0], labels
            else:
                prob, positives = prob * sample_weight, labels * sample_weight
        else:
            positives = labels
        # The dimensions the counts are summed over: the batch (macro), everything (micro), the labels (samples).
        dims = {"macro": (0,), "micro": (0, 1), "samples": (1,)}[self.average]
        true_positive = (prob * labels).sum(dims)
        predicted = prob.sum(dims)  # TP + FP
        actual = positives.sum(dims)  # TP + FN
        denominator = true_positive + self.fn_weight * (actual - true_positive) + self.fp_weight * (predicted - true_positive)
        f_beta = safe_divide(true_positive, denominator)
        loss = 1 - f_beta
        if score_weight is not None:
            total = (loss * score_weight).sum()
            return (weighted_mean(total, score_weight.sum()) if self.reduction == "mean" else total).to(pred.dtype)
        return (loss.mean() if self.reduction == "mean" else loss.sum()).to(pred.dtype)


def _mmpretrain_asl(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mmpretrain's ``AsymmetricLoss()`` (gamma_pos=0, gamma_neg=4, clip=0.05, eps=1e-8), the
    formula of its asymmetric_loss inlined (mmpretrain is not a dependency)."""
    p = torch.sigmoid(pred)
    pt = (1 - p + 0.05).clamp(max=1) * (1 - target) + p * target
    return (-torch.log(pt.clamp(min=1e-8)) * (1 - pt).pow(4.0 * (1 - target))).mean()


def _asl_cases(s: parity.Sizes) -> list[parity.Case]:
    n, c = s.n, s.classes
    return [parity.Case("asl()", parity.shape(n, c), parity.inputs(pred=parity.randn(n, c), target=parity.flags(n, c)),
                        _mmpretrain_asl, note="mmpretrain AsymmetricLoss's formula")]


@implements("asl", cases=_asl_cases)
class AsymmetricLoss(Term):
    """mmpretrain's ``AsymmetricLoss`` (mmpretrain/models/losses/asymmetric_loss.py), sigmoid form.

    With ``p = sigmoid(pred)``, a positive's ``p_t`` is ``p`` and a negative's is
    ``min(1 - p + clip, 1)`` (``1 - p`` when ``clip=0``); the loss is
    ``-log(max(p_t, eps)) * (1 - p_t)^(gamma_pos y + gamma_neg (1 - y))``. With the defaults,
    positives get plain cross-entropy and easy negatives (``p <= clip``) none at all. As in
    mmpretrain and the paper's code, the clamp at ``eps`` gives a positive with ``p < eps``
    (logit below about -18.4) a constant loss and no gradient.

    Targets are 0/1 labels of ``pred``'s shape (probabilities follow the same formula), or
    integer class indices ``[N]`` / ``[N, 1]`` beside logits ``[N, C]``, made one-hot as mmpretrain
    does. ``mean`` averages over every element (samples times labels). Sample weights:
    ``normalize=weights`` (the default) gives ``sum(w l) / sum(w)``, as every lossdsl term;
    ``normalize=count`` gives mmpretrain's ``mean(w l)`` (``weight_reduce_loss`` without
    ``avg_factor``). Half precision is computed in float32 (``eps`` is below float16's range).
    ``reduction=none`` gives the element-wise losses, of ``pred``'s shape.
    """

    per_sample = True

    def __init__(self, params: ASLParams):
        super().__init__()
        self.gamma_pos, self.gamma_neg = params.gamma_pos, params.gamma_neg
        self.clip, self.eps = params.clip, params.eps
        self.count = params.normalize == "count"
        self.reduction = params.reduction

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_real(1, target)
        n = self.batch_size(0, pred, "[N, C]")
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2, sample_weight, n, pred.dtype)
        if target.shape != pred.shape:
            indices = pred.dim() == 2 and pred.shape[1] > 1 and target.shape in ((n,), (n, 1))
            if not indices:
                self.fail(1, f"expected 0/1 labels of shape {tuple(pred.shape)} or class indices of shape ({n},), "
                             f"got {target.dtype} {tuple(target.shape)}")
            if target.is_floating_point():
                self.fail(1, f"class indices must be integers, got {target.dtype} values of shape {tuple(target.shape)}")
            target = F.one_hot(target.reshape(-1).long(), pred.shape[1])
        computed_in = accumulation_dtype(pred.dtype)
        logits, y = pred.to(computed_in), target.to(computed_in)
        p = torch.sigmoid(logits)
        negative_p_t = 1 - p + self.clip
        if self.clip:
            negative_p_t = negative_p_t.clamp(max=1)
        p_t = p * y + negative_p_t * (1 - y)
        exponent = self.gamma_pos * y + self.gamma_neg * (1 - y)
        # clamped at the smallest float before the power: a gamma below 1 at 1 - p_t = 0 (an easy
        # negative inside the clip) would otherwise give 0 * inf = NaN gradients
        modulation = (1 - p_t).clamp_min(torch.finfo(computed_in).tiny).pow(exponent)
        loss = (-torch.log(p_t.clamp(min=self.eps)) * modulation).to(pred.dtype)
        if self.count and sample_weight is not None and self.reduction == "mean" and not parts:
            per_element = sample_weight.reshape(-1, *[1] * (loss.dim() - 1))
            return self.reduce(loss * per_element)  # mmpretrain: the plain mean of w * l
        return self.reduce(loss, sample_weight, parts)
