"""Sequence losses: token-level cross-entropy over ``[B, T, V]`` and the chunked cross-entropy from

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.sequence``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ...declarations import INPUT, Fit, InputOf, Int64, Kinds, ReductionParam, TermParams, declare


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
    """Logits [B, T, V] (the classes along dim 2; synthetic T 4, V 3), token ids [B, T], a scalar count."""
    layout = {"pred": Fit(("N", "T", "C"), classes=2), "target": Fit(("N", "T"), ("labels",))}
    if params.num_items is not None:
        layout["num_items"] = Fit((), ("weight",))
    return (layout,)


class LinearCEParams(TermParams):
    hidden: InputOf("embedding", "real") = Field(
        "hidden", description="hidden states [N, D] (or [B, T, D]): the input of the output layer")
    target: InputOf("labels") = Field("target", description="class (token) ids [N] (or [B, T]); ignore_index is left out")
    head: InputOf("real", "embedding") = Field(
        "head", description="the output layer's weight [V, D] (nn.Linear(D, V).weight, a language model's lm_head.weight)")
    bias: Annotated[str | None, INPUT, Kinds(("real",)), Field(
        description="the input holding the output layer's bias [V]; none by default")] = None
    chunk_size: Literal["auto"] | Annotated[int, Field(ge=1, le=2**31)] = Field(
        "auto", description="rows of logits computed at once; auto: 2^24 // V (64 MiB of float32 logits a chunk)")
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0, description="mass spread uniformly over the V classes")
    ignore_index: Int64 = Field(-100, description="targets equal to this are left out, as in F.cross_entropy")
    reduction: ReductionParam = "mean"


def _linear_ce_layouts(params: LinearCEParams) -> tuple[dict, ...]:
    # the classes are the head's rows: synthetic targets index all V of them
    layout = {"hidden": Fit(("N", "D"), ("embedding", "real")),
              "head": Fit(("C", "D"), ("real", "embedding"), classes=0), "target": Fit(("N",), ("labels",))}
    if params.bias is not None:
        layout["bias"] = Fit(("C",), ("real",))
    return (layout,)


declare(
    "token_ce",
    TokenCEParams,
    "Token-level cross-entropy over logits [B, T, V], padding ignored, per token or per sequence.",
    example="token_ce(shift=true, num_items=n)",
    shapes=_token_ce_layouts,
    implementation="lossdsl.library.sequence:TokenCrossEntropy",
    sample_losses=True,
)


declare(
    "linear_ce",
    LinearCEParams,
    "Cross-entropy from hidden states and the output weight, in chunks: the [N, V] logits never exist whole.",
    example="linear_ce(hidden=h, target=y, head=w, chunk_size=1024)",
    shapes=_linear_ce_layouts,
    implementation="lossdsl.library.sequence:LinearCrossEntropy",
    sample_losses=True,
)
