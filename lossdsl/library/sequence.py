"""Sequence losses: token-level cross-entropy over ``[B, T, V]`` and the chunked cross-entropy from
hidden states for large vocabularies."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .. import parity
from ..registry import (
    INPUT,
    Fit,
    InputOf,
    Int64,
    Kinds,
    ReductionParam,
    Term,
    TermParams,
    accumulation_dtype,
    register,
    safe_divide,
)

#: The global count of a gradient-accumulation step, given at call time: a scalar tensor, integer
#: (Hugging Face's ``num_items_in_batch``) or floating point.
CountInput = Annotated[
    str | None,
    INPUT,
    Kinds(("weight", "real", "labels")),
    Field(description="the input holding the count to divide by instead of this batch's own (a scalar tensor): "
          "the non-padding tokens (normalize=tokens) or the sequences with a token (normalize=sequences) of the "
          "whole accumulated batch, as Hugging Face's num_items_in_batch"),
]


class TokenCEParams(TermParams):
    pred: InputOf("logits") = Field("pred", description="logits [B, T, V]: B sequences of T tokens over a vocabulary of V")
    target: InputOf("labels") = Field("target", description="token ids [B, T]; padding equals ignore_index")
    normalize: Literal["tokens", "sequences"] = Field(
        "tokens", description="mean over the batch's non-padding tokens (Hugging Face's), or each sequence's token "
        "mean averaged over the sequences that have a token")
    shift: bool = Field(False, description="logits[:, :-1] predict target[:, 1:], as Hugging Face's causal-LM loss "
                        "(off: target is already aligned with pred, as in F.cross_entropy)")
    num_items: CountInput = None
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0, description="mass spread uniformly over the vocabulary")
    ignore_index: Int64 = Field(-100, description="targets equal to this are padding, left out (Hugging Face's -100)")
    reduction: ReductionParam = "mean"


def _token_ce_layouts(params: TokenCEParams) -> tuple[dict, ...]:
    # T = V = 4: synthetic labels index the classes of the scores' second dimension
    layout = {"pred": ("N", 4, 4), "target": Fit(("N", 4), ("labels",))}
    if params.num_items is not None:
        layout["num_items"] = Fit((1,), ("weight",))
    return (layout,)


def _token_ce_reference(normalize: str, shift: bool = False):
    """F.cross_entropy over the flattened tokens (tokens), or per sequence then averaged (sequences)."""

    def reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if shift:
            pred, target = pred[:, :-1], target[:, 1:]
        if normalize == "tokens":
            return F.cross_entropy(pred.flatten(0, 1), target.flatten())
        return torch.stack([F.cross_entropy(p, t) for p, t in zip(pred, target)]).mean()

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


@register(
    "token_ce",
    TokenCEParams,
    "Token-level cross-entropy over logits [B, T, V], padding ignored, per token or per sequence.",
    example="token_ce(shift=true, num_items=n)",
    shapes=_token_ce_layouts,
    cases=_token_ce_cases,
)
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
