"""Reductions of element-wise tensor expressions: ``mean(EXPR)`` and ``sum(EXPR)``.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.reductions``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from pydantic import Field

from ...declarations import SampleWeight, TensorExpression, TermParams, declare


EXPRESSION_DOC = (
    "an element-wise expression over inputs: numbers, + - * /, abs, square, relu, exp, log, sigmoid, "
    "softplus, clamp(x, lo, hi)"
)


class ReductionTermParams(TermParams):
    positional = ("expr",)
    expr: TensorExpression = Field(description=EXPRESSION_DOC)
    sample_weight: SampleWeight = None

    def input_names(self) -> tuple[str, ...]:
        names = self.expr.inputs
        return (*names, self.sample_weight) if self.sample_weight else names


declare(
    "mean",
    ReductionTermParams,
    "The mean of an element-wise tensor expression.",
    example="mean(abs(pred - target))",
    implementation="lossdsl.library.reductions:Mean",
    sample_losses=True,
)


declare(
    "sum",
    ReductionTermParams,
    "The sum of an element-wise tensor expression.",
    example="sum(square(pred - target))",
    implementation="lossdsl.library.reductions:Sum",
    sample_losses=True,
)
