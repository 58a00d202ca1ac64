"""Sequence losses: token-level cross-entropy over ``[B, T, V]`` and the chunked cross-entropy from
hidden states for large vocabularies."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from .. import parity
from ..registry import Term, accumulation_dtype, implements, safe_divide
from .params.sequence import CountInput, LinearCEParams, TokenCEParams  # noqa: F401  (re-exported)


def _token_ce_reference(normalize: str, shift: bool = False):
    """F.cross_entropy over the flattened tokens (tokens), or per sequence then averaged (sequences)."""

    def reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if shift:
            pred, target = pred[:, :-1], target[:, 1:]
        if normalize == "tokens":
            return F.cross_entropy(pred.flatten(0, 1), target.flatten())
        # each sequence's own F.cross_entropy mean (every case sequence keeps a token), then their mean
        per_token = F.cross_entropy(pred.transpose(1, 2), target, reduction="none")
        return (per_token.sum(dim=1) / (target != -100).sum(dim=1)).mean()

    return reference


def _padded_labels(b: int, t: int, v: int) -> parity.Maker:
    """Token ids with a random number of trailing -100 (padding) per sequence, every sequence keeping one."""

    def make(g: torch.Generator) -> torch.Tensor:
        ids = torch.randint(0, v, (b, t), generator=g)
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        return ids.masked_fill(torch.arange(t) >= lengths[:, None], -100)

    return make


def _token_ce_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.cross_entropy on the flattened tokens (Hugging Face's ForCausalLMLoss without
    num_items_in_batch), and per sequence for normalize=sequences."""
    b, t, v = max(s.n // 16, 2), 16, max(s.classes, 2) * 10
    make = parity.inputs(pred=parity.randn(b, t, v), target=_padded_labels(b, t, v))
    return [
        parity.Case("token_ce()", parity.shape(b, t, v), make, _token_ce_reference("tokens")),
        parity.Case("token_ce(shift=true)", parity.shape(b, t, v), make, _token_ce_reference("tokens", shift=True),
                    variant="shift"),
        parity.Case("token_ce(normalize=sequences)", parity.shape(b, t, v), make, _token_ce_reference("sequences"),
                    variant="sequences"),
    ]


@implements("token_ce", cases=_token_ce_cases)
class TokenCrossEntropy(Term):
    """Cross-entropy of each token of ``B`` sequences, padding (``ignore_index``, ``-100`` as in
    Hugging Face) left out.

    - ``normalize=tokens`` (the default, Hugging Face's): the sum over the non-padding tokens
      divided by their count, which is ``F.cross_entropy`` over the flattened tokens.
      ``normalize=sequences``: each sequence's mean over its tokens, then the mean over the
      sequences that have at least one token (short sequences weigh as much as long ones).
    - ``shift=true``: Hugging Face's causal-LM convention, ``logits[:, :-1]`` predict
      ``target[:, 1:]`` (the labels are the input ids). Off by default: ``target`` is aligned with
      ``pred``, as in ``F.cross_entropy`` and as a Hugging Face model's ``labels`` are *not*
      (HF shifts inside the model's loss).
    - ``num_items=NAME``: divide by this count (a scalar tensor given at each call) instead of the
      batch's own. With gradient accumulation, give every micro-batch the count of the whole
      accumulated batch (non-padding tokens after the shift for ``tokens``; sequences with a token
      for ``sequences``): the micro-batches' losses then add up to the loss of the whole batch,
      values and gradients, where per-micro-batch means averaged are not (transformers#34191,
      Hugging Face's ``num_items_in_batch``). It is read as a tensor (no host synchronisation);
      under data parallelism give the count over all ranks, and multiply by the world size if
      the gradients are averaged across ranks, as Hugging Face does.
    - ``mean`` of a batch with no token (all padding) is 0, with zero gradients, never NaN.
      ``sum`` is the sum over tokens (``sequences``: of the sequences' means).
      ``reduction=none`` gives the token losses ``[B, T]`` (``[B, T - 1]`` shifted), 0 at padding.
    - ``LossModule.per_sample`` gives each sequence's token mean (its token sum under ``sum``),
      ``num_items`` aside.
    - ``label_smoothing`` is ``F.cross_entropy``'s, over the ``V`` classes.
    - Half-precision logits are computed in float32 (as Hugging Face upcasts them), the loss
      comes back in their dtype.
    """

    def __init__(self, params: TokenCEParams):
        super().__init__()
        self.normalize = params.normalize
        self.shift = params.shift
        self.label_smoothing = params.label_smoothing
        self.ignore_index = params.ignore_index
        self.reduction = params.reduction

    sample_losses = True  # reduction=none and LossModule.per_sample: each sequence's token mean

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, num_items: torch.Tensor | None = None, *, parts: bool = False
    ) -> torch.Tensor:
        self.expect_float(0, pred)
        if pred.dim() != 3:
            self.fail(0, f"expected logits [B, T, V], got shape {tuple(pred.shape)}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            self.fail(1, f"expected integer token ids [B, T], got {target.dtype}")
        if tuple(target.shape) != tuple(pred.shape[:2]):
            self.fail(1, f"logits {tuple(pred.shape)} need token ids of shape {tuple(pred.shape[:2])}, "
                         f"got {tuple(target.shape)}")
        if num_items is not None and num_items.numel() != 1:
            self.fail(2, f"expected one count (a scalar tensor), got shape {tuple(num_items.shape)}")
        dtype = pred.dtype
        computed_in = accumulation_dtype(dtype)
        if self.shift:
            pred, target = pred[:, :-1], target[:, 1:]
        batch, length, vocabulary = pred.shape
        target = target.long()
        losses = F.cross_entropy(
            pred.reshape(-1, vocabulary).to(computed_in), target.reshape(-1), ignore_index=self.ignore_index,
            reduction="none", label_smoothing=self.label_smoothing,
        ).view(batch, length)
        if self.reduction == "none":
            return losses.to(dtype)
        keep = target != self.ignore_index
        if parts:  # [B, 2]: each sequence's summed loss over its token count (weight 1 under sum)
            tokens = keep.sum(dim=1, dtype=computed_in)
            sums = losses.sum(dim=1)
            if self.reduction == "sum":
                tokens = torch.ones_like(tokens)
            elif self.normalize == "sequences":
                sums, tokens = safe_divide(sums, tokens), (tokens > 0).to(computed_in)
            return torch.stack([sums, tokens], dim=1).to(dtype)
        if self.normalize == "tokens":
            total, count = losses.sum(), keep.sum(dtype=computed_in)
        else:
            tokens = keep.sum(dim=1, dtype=computed_in)
            total, count = safe_divide(losses.sum(dim=1), tokens).sum(), (tokens > 0).sum(dtype=computed_in)
        if self.reduction == "sum":
            return total.to(dtype)
        if num_items is not None:
            count = num_items.reshape(()).to(computed_in)
        return safe_divide(total, count).to(dtype)


# -- linear_ce -------------------------------------------------------------------------------------

#: linear_ce's default chunk: as many rows as keep one chunk's float32 logits within 2^24 values
#: (64 MiB): 128 rows at V = 128k, as Liger's fused linear cross-entropy picks for D = 4096.
CHUNK_VALUES = 2**24


def _linear_ce_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: F.cross_entropy(hidden @ head.T, target), the [N, V] logits whole."""
    n, d, v = s.n, s.embed * 4, s.classes * 20
    make = parity.inputs(hidden=parity.randn(n, d), target=parity.labels(n, classes=v), head=parity.randn(v, d))
    chunk = n // 3 + 1  # three chunks, the last one shorter, at every size
    return [parity.Case(f"linear_ce(chunk_size={chunk})", parity.shape(n, d), make,
                        lambda hidden, target, head: F.cross_entropy(hidden @ head.T, target),
                        grad=("hidden", "head"), variant=f"V={v}")]


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Each row's cross-entropy of ``hidden @ weight.T + bias``, ``rows`` rows of logits at a time.

    Only the rows' log-sum-exp ``[N]`` is kept for the backward, which recomputes each chunk's
    logits to form its softmax: the ``[N, V]`` logits never exist whole (Liger's fused linear
    cross-entropy and Apple's Cut Cross-Entropy compute the same, in fused kernels).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index, smoothing, rows):  # noqa: D102
        computed_in = torch.promote_types(hidden.dtype, torch.float32)
        losses, sums = [], []
        for start in range(0, hidden.shape[0], rows):
            logits = _logits(hidden[start:start + rows], weight, bias, computed_in)
            label = target[start:start + rows]
            keep = label != ignore_index
            lse = logits.logsumexp(dim=1)
            loss = lse - logits.gather(1, torch.where(keep, label, 0)[:, None])[:, 0]
            if smoothing:
                loss = (1 - smoothing) * loss + smoothing * (lse - logits.mean(dim=1))
            losses.append(torch.where(keep, loss, 0.0))
            sums.append(lse)
        lse = torch.cat(sums) if sums else hidden.new_zeros(0, dtype=computed_in)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.ignore_index, ctx.smoothing, ctx.rows = ignore_index, smoothing, rows
        return torch.cat(losses) if losses else hidden.new_zeros(0, dtype=computed_in)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):  # noqa: D102
        hidden, weight, bias, target, lse = ctx.saved_tensors
        rows, smoothing, ignore_index = ctx.rows, ctx.smoothing, ctx.ignore_index
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        computed_in = lse.dtype
        vocabulary = weight.shape[0]
        grad_hidden = []
        grad_weight = torch.zeros(weight.shape, dtype=computed_in, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(vocabulary, dtype=computed_in, device=weight.device) if want_bias else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows]
            label = target[start:start + rows]
            keep = label != ignore_index
            logits = _logits(h, weight, bias, computed_in)
            # d loss / d logits = softmax - (1 - s) * onehot - s / V, per row times its incoming gradient
            grad_logits = (logits - lse[start:start + rows, None]).exp()
            grad_logits.scatter_add_(1, torch.where(keep, label, 0)[:, None],
                                     torch.full_like(grad_logits[:, :1], smoothing - 1))
            if smoothing:
                grad_logits -= smoothing / vocabulary
            grad_logits *= torch.where(keep, grad_losses[start:start + rows].to(computed_in), 0.0)[:, None]
            if want_hidden:
                grad_hidden.append((grad_logits.to(weight.dtype) @ weight).to(hidden.dtype))
            if want_weight:
                grad_weight += grad_logits.T @ h.to(computed_in)
            if want_bias:
                grad_bias += grad_logits.sum(dim=0)
        return (
            (torch.cat(grad_hidden) if grad_hidden else torch.zeros_like(hidden)) if want_hidden else None,
            grad_weight.to(weight.dtype) if want_weight else None,
            grad_bias.to(bias.dtype) if want_bias else None,
            None, None, None, None,
        )


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return logits.to(dtype)


@implements("linear_ce", cases=_linear_ce_cases)
class LinearCrossEntropy(Term):
    """``F.cross_entropy(hidden @ head.T + bias, target)`` for large vocabularies: the logits are
    computed ``chunk_size`` rows at a time, and recomputed chunk by chunk in the backward, so that
    memory holds one chunk of logits (and of their gradient), never ``[N, V]``; only each row's
    log-sum-exp ``[N]`` is kept between forward and backward. The idea of Liger's
    ``LigerFusedLinearCrossEntropyLoss`` and Apple's Cut Cross-Entropy, in plain torch (no fused
    kernel: the same matmuls, plus one more for the recomputation).

    - ``head`` is the output layer's weight ``[V, D]``, passed by name at each call
      (``loss_fn(hidden=h, target=y, head=model.lm_head.weight)``) rather than bound: a tied
      embedding, a sharded head or a LoRA-merged weight is passed as it is. Its gradient (and
      ``hidden``'s, and ``bias``'s) is computed in the backward.
    - ``hidden`` ``[N, D]`` or ``[B, T, D]`` with ``target`` ``[N]`` or ``[B, T]``: the rows are
      flattened. For a causal language model shift first (``hidden[:, :-1]``, ``target[:, 1:]``).
    - ``mean`` divides by the kept targets (0, never NaN, when every target is ignored); ``sum``;
      ``reduction=none`` gives the losses of ``target``'s shape, 0 where ignored.
      ``label_smoothing`` is ``F.cross_entropy``'s. ``LossModule.per_sample`` gives each row's loss
      (rows flattened).
    - ``chunk_size=auto`` takes ``2^24 // V`` rows (128 at V = 128k: 64 MiB of float32 logits a
      chunk); ``benchmarks/large_vocab.py`` measures the memory against the whole logits. It
      trades time for memory (one more matmul, and the softmax recomputed): where the logits fit,
      ``ce`` on them is faster (on the CPU, 1.5x faster at V = 128k, about 5x at V = 200).
    - The logits are computed in the inputs' dtype and taken to float32 (at least) for the
      softmax, as Liger does; ``hidden`` and ``head`` must share a dtype.
    - Not differentiable twice (the backward is a hand-written one).
    """

    sample_losses = True  # reduction=none and LossModule.per_sample: each row's loss

    def __init__(self, params: LinearCEParams):
        super().__init__()
        self.chunk_size = params.chunk_size
        self.label_smoothing = params.label_smoothing
        self.ignore_index = params.ignore_index
        self.reduction = params.reduction
        self.has_bias = params.bias is not None

    def forward(self, hidden: torch.Tensor, target: torch.Tensor, head: torch.Tensor,
                bias: torch.Tensor | None = None, *, parts: bool = False) -> torch.Tensor:
        self.expect_float(0, hidden)
        self.expect_float(2, head)
        if hidden.dim() < 2:
            self.fail(0, f"expected hidden states [N, D], got shape {tuple(hidden.shape)}")
        width = hidden.shape[-1]
        if head.dim() != 2 or head.shape[1] != width:
            self.fail(2, f"expected the output weight [V, {width}] (hidden states have D = {width}), "
                         f"got shape {tuple(head.shape)}")
        if head.dtype != hidden.dtype:
            self.fail(2, f"the output weight is {head.dtype} but the hidden states are {hidden.dtype}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            self.fail(1, f"expected integer class ids, got {target.dtype}")
        if tuple(target.shape) != tuple(hidden.shape[:-1]):
            self.fail(1, f"hidden states {tuple(hidden.shape)} need class ids of shape {tuple(hidden.shape[:-1])}, "
                         f"got {tuple(target.shape)}")
        vocabulary = head.shape[0]
        if bias is not None:
            self.expect_float(3, bias)
            if tuple(bias.shape) != (vocabulary,):
                self.fail(3, f"expected the output bias [{vocabulary}], got shape {tuple(bias.shape)}")
            bias = bias.to(hidden.dtype)
        rows = self.chunk_size if self.chunk_size != "auto" else max(1, CHUNK_VALUES // max(vocabulary, 1))
        flat = target.reshape(-1).long()
        losses = _ChunkedLinearCrossEntropy.apply(
            hidden.reshape(-1, width), head, bias, flat, self.ignore_index, self.label_smoothing, rows)
        if self.reduction == "none":
            return losses.view(target.shape).to(hidden.dtype)
        if parts:  # one row is one sample: its loss over its weight (0 where ignored)
            keep = (flat != self.ignore_index).to(losses.dtype)
            weight = torch.ones_like(keep) if self.reduction == "sum" else keep
            return torch.stack([losses, weight], dim=1).to(hidden.dtype)
        if self.reduction == "sum":
            return losses.sum().to(hidden.dtype)
        return safe_divide(losses.sum(), (flat != self.ignore_index).sum(dtype=losses.dtype)).to(hidden.dtype)
