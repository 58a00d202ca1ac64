"""Weight penalties over a bound model's parameters: ``l1`` and ``l2``.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.penalties``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from pydantic import Field, NonNegativeFloat

from ...declarations import MAX_LOSS_WEIGHT, TermParams, declare


class PenaltyParams(TermParams):
    weight: NonNegativeFloat = Field(
        1.0, le=MAX_LOSS_WEIGHT,
        description="the penalty's coefficient, at most 1e15 (as any loss's weight: beyond, float32 overflows)",
    )
    include_bias: bool = Field(False, description="penalise biases too (parameters named '...bias')")
    include_norm: bool = Field(False, description="penalise normalisation layers too (BatchNorm, LayerNorm, GroupNorm, ...)")


declare(
    "l1",
    PenaltyParams,
    "L1 penalty: weight * sum(|w|) over a bound model's weights.",
    example="l1(weight=1e-5)",
    implementation="lossdsl.library.penalties:L1",
)


declare(
    "l2",
    PenaltyParams,
    "L2 penalty: weight * sum(w^2) over a bound model's weights.",
    example="l2(weight=1e-4)",
    implementation="lossdsl.library.penalties:L2",
)
