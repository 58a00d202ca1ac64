"""Connectionist temporal classification (``nn.CTCLoss``) with input and target lengths.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.ctc``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from pydantic import Field

from ...declarations import Fit, InputOf, Layout, Lengths, ReductionParam, SampleWeight, TermParams, declare


class CTCParams(TermParams):
    log_probs: InputOf("logits", "real") = Field(
        "log_probs", description="log-probabilities [T, N, C] (log_softmax over C, as nn.CTCLoss takes them: "
        "they are not normalised here)")
    targets: InputOf("labels") = Field(
        "targets", description="target classes [N, S] (not the blank), padded past each target length, or "
        "[sum(target_lengths)] concatenated")
    input_lengths: InputOf("labels") = Field("input_lengths", description="frames of each sequence [N], at most T")
    target_lengths: InputOf("labels") = Field(
        "target_lengths", description="labels of each target [N], at most S (padded targets)")
    blank: int = Field(0, ge=0, description="the blank class, in [0, C)")
    zero_infinity: bool = Field(False, description="an alignment that cannot exist (too few frames) gives 0, not inf")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


#: Synthetic targets' width S, and frames T = 2 S + 1: enough for any target of up to S labels
#: (one frame a label, a blank between repeats), so that every synthetic sequence has an alignment.
_SYNTHETIC_WIDTH = 4


def _ctc_layouts(params: CTCParams) -> tuple[Layout, ...]:
    """log_probs [T, N, C] (classes along dim 2), targets [N, S], every input length T and target
    lengths from 1 to S."""
    width = _SYNTHETIC_WIDTH
    return ({
        "log_probs": Fit((2 * width + 1, "N", "C"), classes=2),
        "targets": ("N", width),
        "input_lengths": Fit(("N",), lengths=Lengths("log_probs", 0, full=True)),
        "target_lengths": Fit(("N",), lengths=Lengths("targets", 1)),
    },)


declare(
    "ctc",
    CTCParams,
    "Connectionist temporal classification, as F.ctc_loss (blank, zero_infinity, torch's mean over target lengths).",
    example="ctc(log_probs=log_probs, targets=targets, input_lengths=frames, target_lengths=lengths)",
    shapes=_ctc_layouts,
    implementation="lossdsl.library.ctc:CTC",
    per_sample=True,
    batch_dimension=1,
)
