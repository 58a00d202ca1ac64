"""Connectionist temporal classification (``nn.CTCLoss``) with input and target lengths."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import parity
from ..registry import Term, accumulation_dtype, implements
from .params.ctc import CTCParams

#: Whether dynamo is tracing (torch.compiler.is_compiling is torch 2.3 and later).
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling


def _values_readable(tensor: torch.Tensor) -> bool:
    """Whether reading ``tensor``'s values costs no synchronisation and breaks no trace: on the CPU,
    outside torch.compile and outside a dispatch mode (``make_fx``, as ``lossdsl explain`` traces)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return tensor.device.type == "cpu" and not _is_compiling() and _get_current_dispatch_mode() is None


def _ctc_cases(s: parity.Sizes) -> list[parity.Case]:
    """Log-softmaxed random scores, targets of 1 to S labels, lengths from T / 2 to T."""
    n, c, frames, longest = s.n, s.classes, 24, 6

    def inputs(g: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            "log_probs": torch.randn(frames, n, c, generator=g).log_softmax(2),
            "targets": torch.randint(1, c, (n, longest), generator=g),
            "input_lengths": torch.randint(frames // 2, frames + 1, (n,), generator=g),
            "target_lengths": torch.randint(1, longest + 1, (n,), generator=g),
        }

    shape = parity.shape(frames, n, c)
    note = "F.ctc_loss, its gradient less the exp(log_probs) share torch's backward adds"
    return [
        parity.Case("ctc()", shape, inputs, ctc_reference("mean"), grad=("log_probs",), note=note),
        parity.Case("ctc(reduction=sum)", shape, inputs, ctc_reference("sum"), grad=("log_probs",), note=note,
                    variant="sum"),
    ]


def ctc_reference(reduction: str, blank: int = 0, zero_infinity: bool = False) -> parity.Reference:
    """``F.ctc_loss``'s value, with the true partial derivatives in ``log_probs``: torch's backward
    returns ``scale_n (exp(log_probs) - posterior)`` over each sequence's frames (the gradient of the
    logits under a log_softmax), so the reference subtracts ``scale_n exp(log_probs)`` there through
    a term of value 0 (``scale_n``: d reduced loss / d loss_n, ``1 / (N * max(length_n, 1))`` for mean)."""

    def reference(log_probs, targets, input_lengths, target_lengths):  # noqa: ANN001, ANN202
        value = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=blank, reduction=reduction,
                           zero_infinity=zero_infinity)
        frames, n = log_probs.shape[:2]
        scale = torch.ones(n, dtype=log_probs.dtype, device=log_probs.device)
        if reduction == "mean":
            scale = scale / (n * target_lengths.clamp(min=1).to(log_probs.dtype))
        occupied = torch.arange(frames, device=log_probs.device)[:, None] < input_lengths[None, :]
        share = (log_probs.exp() * (occupied * scale)[..., None]).sum()
        return value - (share - share.detach())

    return reference


@implements("ctc", cases=_ctc_cases)
class CTC(Term):
    """``nn.CTCLoss``: the negative log-likelihood of each target over all its alignments to the
    frames (blanks between and around the labels, repeats merged), by the forward (alpha) recursion
    in log space.

    - Inputs as torch's: ``log_probs`` ``[T, N, C]`` are log-probabilities (``log_softmax`` over
      ``C``; like torch, the term does not normalise them), ``targets`` ``[N, S]`` padded or
      ``[sum(target_lengths)]`` concatenated, ``input_lengths`` and ``target_lengths`` ``[N]``
      integers. ``blank`` is class 0 by default.
    - ``reduction=mean`` is torch's: each sequence's loss divided by its target length (at least
      1), then the mean over the batch; ``sum`` adds the sequences' losses; ``none`` gives them,
      ``[N]``, undivided (torch's). ``sample_weight`` ``[N]`` weighs the sequences (the weighted
      mean of the length-divided losses, the weighted sum, or each loss times its weight). A
      sequence's own loss (``LossModule.per_sample``) is its loss divided by its target length for
      ``mean``, as the batch's mean counts it, and its loss otherwise. ``group_loss(ctc())`` is
      refused: group_loss groups the rows of the first input, and log_probs' first dimension is time.
    - A target that needs more frames than its sequence has (its length plus its repeated
      neighbours) has no alignment: inf, as torch's, or 0 with ``zero_infinity=true``; either way its
      gradient is 0 (torch's is NaN without ``zero_infinity``). An empty batch gives 0 (torch: NaN).
    - The gradient is autograd's through the recursion: the true partial derivatives. torch's
      backward instead returns ``exp(log_probs) - posterior``, which is the gradient of the logits
      of a ``log_softmax`` ahead of it, not of ``log_probs`` themselves: through a ``log_softmax``
      (the usual model) the two agree to float32 rounding.
    - Lengths and targets are checked on the CPU (E402 naming the input: a length below 0 or
      above ``T`` or ``S``, a class outside ``[0, C)``); on CUDA they are not (that would
      synchronise with the device): a length is clamped into range. A blank inside a target's
      length is read as a label, as torch reads it (pad past the length instead).
    - The forward is a loop over the ``T`` frames of ``[N, 2 S + 1]`` tensors, with no host
      synchronisation: it traces under ``torch.compile(fullgraph=True)`` (which unrolls the loop),
      where ``F.ctc_loss`` breaks the graph. Sums run in float32 at least.
    """

    per_sample = True
    #: The sequences lie along log_probs' second dimension: group_loss, which groups first-dimension
    #: rows, refuses ctc (reduction=none and LossModule.per_sample give its [N] losses).
    batch_dimension = 1

    def __init__(self, params: CTCParams):
        super().__init__()
        self.blank, self.zero_infinity, self.reduction = params.blank, params.zero_infinity, params.reduction
        self.weighted = params.sample_weight is not None

    def forward(
        self, log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor, target_lengths: torch.Tensor,
        sample_weight: torch.Tensor | None = None, *, parts: bool = False,
    ) -> torch.Tensor:
        self.expect_float(0, log_probs)
        if log_probs.dim() != 3:
            self.fail(0, f"expected log-probabilities [T, N, C], got shape {tuple(log_probs.shape)}")
        frames, n, classes = log_probs.shape
        if not 0 <= self.blank < classes:
            self.fail(0, f"blank={self.blank} is no class of the {classes} in log_probs' last dimension")
        input_lengths = self._lengths(2, input_lengths, n)
        target_lengths = self._lengths(3, target_lengths, n)
        padded = self._padded_targets(targets, target_lengths, n)
        if _values_readable(input_lengths):
            self._check_values(input_lengths, target_lengths, padded, frames, classes, concatenated=targets.dim() == 1)
        input_lengths = input_lengths.clamp(0, frames)
        target_lengths = target_lengths.clamp(0, padded.shape[1])
        loss = self._negative_log_likelihood(log_probs, padded, input_lengths, target_lengths)
        if self.reduction == "mean":
            loss = loss / target_lengths.clamp(min=1).to(loss.dtype)
        if parts:  # each sequence's own loss, weight 1 (the callers weigh the sequences themselves)
            return self.reduce(loss, None, parts=True).to(log_probs.dtype)
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(4, sample_weight, n, loss.dtype)
        return self.reduce(loss, sample_weight).to(log_probs.dtype)

    def per_sample_parts(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``[N, 2]`` over the sequences: the batch dimension is log_probs' second, so the weights
        callers size from the first input (``[T]``) are not read; each row has weight 1."""
        return self(*inputs[:4], parts=True)

    def _lengths(self, position: int, lengths: torch.Tensor, n: int) -> torch.Tensor:
        if lengths.is_floating_point() or lengths.is_complex():
            self.fail(position, f"expected integer lengths, got {lengths.dtype}")
        if lengths.shape != (n,):
            self.fail(position, f"expected one length per sequence, shape ({n},), got {tuple(lengths.shape)}")
        return lengths.long()

    def _padded_targets(self, targets: torch.Tensor, target_lengths: torch.Tensor, n: int) -> torch.Tensor:
        """Targets as [N, S]: padded as given, or gathered from torch's concatenated form into
        [N, sum of lengths] (a static width: the longest length would need a read of the device)."""
        if targets.is_floating_point() or targets.is_complex():
            self.fail(1, f"expected integer class indices, got {targets.dtype}")
        if targets.dim() == 2 and targets.shape[0] == n:
            return targets.long()
        if targets.dim() != 1:
            self.fail(1, f"expected targets [N, S] (N = {n}) or [sum(target_lengths)], got shape {tuple(targets.shape)}")
        total = targets.shape[0]
        starts = target_lengths.cumsum(0) - target_lengths
        positions = starts[:, None] + torch.arange(total, device=targets.device)[None, :]
        return targets.long()[positions.clamp(max=max(total - 1, 0))] if total else targets.long().reshape(n, 0)

    def _check_values(self, input_lengths: torch.Tensor, target_lengths: torch.Tensor, padded: torch.Tensor,
                      frames: int, classes: int, concatenated: bool) -> None:
        """On the CPU (no device to synchronise with): lengths in range, targets classes (the blank
        among them: torch reads a blank inside a target as a label, and so does this)."""
        width = padded.shape[1]
        if concatenated and int(target_lengths.sum()) > width:
            self.fail(3, f"the target lengths add up to {int(target_lengths.sum())}, more than the {width} "
                      "concatenated targets")
        for position, lengths, most, what in ((2, input_lengths, frames, "T, log_probs' frames"),
                                              (3, target_lengths, width, "S, the targets' width")):
            bad = (lengths < 0) | (lengths > most)
            if bad.any():
                index = int(bad.nonzero()[0, 0])
                self.fail(position, f"sequence {index} has length {int(lengths[index])}, outside [0, {most}] ({what})")
        within = torch.arange(width)[None, :] < target_lengths[:, None]
        bad = within & ((padded < 0) | (padded >= classes))
        if bad.any():
            row, column = (int(i) for i in bad.nonzero()[0])
            self.fail(1, f"label {column} of sequence {row} is {int(padded[row, column])}: outside [0, {classes})")

    def _negative_log_likelihood(self, log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                                 target_lengths: torch.Tensor) -> torch.Tensor:
        """-log p(target | frames) per sequence [N]: the alpha recursion over the extended target
        (blank, y1, blank, y2, ..., blank) in log space, with a finite stand-in for log 0 (an -inf
        would make the log-sum-exp's gradient 0 / 0)."""
        acc = accumulation_dtype(log_probs.dtype)
        frames, n, classes = log_probs.shape
        width = targets.shape[1]
        states = 2 * width + 1
        log_zero = -1e30 if acc == torch.float32 else -1e300
        extended = torch.full((n, states), self.blank, dtype=torch.long, device=log_probs.device)
        labels = targets.clamp(0, classes - 1)  # (unchecked on CUDA: gathers stay in range)
        extended[:, 1::2] = labels
        # A label may follow the one two states back (skipping the blank between) unless it repeats it.
        skip = torch.zeros(n, states, dtype=torch.bool, device=log_probs.device)
        if width > 1:
            skip[:, 3::2] = labels[:, 1:] != labels[:, :-1]
        emissions = log_probs.to(acc).gather(2, extended[None].expand(frames, n, states))  # [T, N, states]
        state = torch.arange(states, device=log_probs.device)
        alpha = torch.where(state[None, :] < 2, emissions[0], log_zero) if frames else emissions.new_full((n, states), log_zero)
        fill = alpha.new_full((n, 1), log_zero)
        for t in range(1, frames):
            step = torch.cat([fill, alpha], dim=1)[:, :states]  # from the state before
            jump = torch.where(skip, torch.cat([fill, fill, alpha], dim=1)[:, :states], log_zero)  # two before
            moved = _log_sum_exp(alpha, step, jump) + emissions[t]
            alpha = torch.where((t < input_lengths)[:, None], moved, alpha)
        last = (2 * target_lengths)[:, None]
        end_blank = alpha.gather(1, last)[:, 0]
        end_label = torch.where(target_lengths > 0, alpha.gather(1, (last - 1).clamp(min=0))[:, 0], log_zero)
        likelihood = _log_sum_exp(end_blank, end_label, torch.full_like(end_blank, log_zero))
        # Frames a target needs: one per label, and a blank between each pair of equal neighbours.
        inside = torch.arange(width, device=log_probs.device)[None, :] < target_lengths[:, None]
        repeats = ((labels[:, 1:] == labels[:, :-1]) & inside[:, 1:]).sum(1) if width > 1 else torch.zeros_like(target_lengths)
        possible = input_lengths >= target_lengths + repeats
        nll = torch.where(input_lengths > 0, -likelihood, torch.zeros_like(likelihood))  # no frames, empty target: 0
        impossible = 0.0 if self.zero_infinity else float("inf")
        # The where's other branch is a constant: an impossible sequence takes no gradient.
        return torch.where(possible, nll, torch.full_like(nll, impossible))


def _log_sum_exp(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """log(e^a + e^b + e^c) element-wise, shifted by the (detached) largest: it cancels in value and gradient."""
    largest = torch.maximum(torch.maximum(a, b), c).detach()
    return largest + torch.log(torch.exp(a - largest) + torch.exp(b - largest) + torch.exp(c - largest))
