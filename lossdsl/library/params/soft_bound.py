"""Domain constraints as soft penalties: ``soft_bound(COMPARISON, penalty=..., margin=...)``.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.soft_bound``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Literal
import math

from pydantic import Field, PositiveFloat, model_validator

from ...ast import LARGEST_NUMBER
from ...conditions import Any, Compare, ConditionIR
from ...declarations import Condition, ReductionParam, SampleWeight, TermParams, declare
from ...operators import COMPARISONS
from ...tensor_expr import value_range


#: Where the log barrier turns linear: ``excess = -BARRIER_EDGE``.
BARRIER_EDGE = 1e-2


#: The largest element-wise penalty the checks accept for inputs of size 1: float32's largest number
#: over a million elements, so the mean's sum still fits.
PENALTY_LIMIT = LARGEST_NUMBER / 1e6


class SoftBoundParams(TermParams):
    positional = ("condition",)
    condition: Condition = Field(
        description="a comparison over inputs and numbers, e.g. y <= 100 or 0 <= p <= 1, or comparisons "
        "combined with and, or, not, implies"
    )
    penalty: Literal["squared", "hinge", "softplus", "log_barrier"] | tuple[Literal["softplus"], PositiveFloat] = Field(
        "squared",
        description="squared (squared hinge), hinge, softplus(k) (smooth hinge, k=1 by default) or log_barrier",
    )
    margin: float = Field(0.0, ge=0.0, description="tighten each inequality by this much")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None

    @model_validator(mode="after")
    def _penalties_that_fit_the_condition(self) -> SoftBoundParams:
        zero_when_satisfied = self.penalty in ("squared", "hinge")
        ops = [link.op for link in self.condition.root.find_all(Compare)]
        if any(op in ("==", "!=") for op in ops) and not zero_when_satisfied:
            raise ValueError("an == comparison takes penalty=squared or penalty=hinge")
        if "!=" in ops:  # not (a == b)
            raise ValueError("'not (a == b)' has no gradient to follow: write the two bounds, "
                             "a <= b - 0.1 or a >= b + 0.1")
        if next(self.condition.root.find_all(Any), None) is not None and not zero_when_satisfied:
            raise ValueError("'or' and 'implies' multiply their sides' penalties, which must be 0 exactly where "
                             "they hold: use penalty=squared or penalty=hinge")
        return self

    def beyond_float32(self) -> tuple[str, str] | None:
        """A penalty its numbers alone push past float32: ``y >= 1e20`` squares a violation of 1e20."""
        size = self._penalty_size(self.condition.root)
        if size <= PENALTY_LIMIT:
            return None
        culprit = "margin" if self._link_size(self.margin) > PENALTY_LIMIT else "condition"
        return culprit, (f"the {self.penalty if isinstance(self.penalty, str) else 'softplus'} penalty reaches "
                         f"{size:.3g} for inputs in [-1, 1], beyond {PENALTY_LIMIT:.3g} (float32's largest number "
                         "over a million elements): scale the comparison, e.g. y / 1e20 >= 1 for y >= 1e20")

    def _penalty_size(self, node: ConditionIR) -> float:
        """The largest element-wise penalty for inputs in [-1, 1]; mirrors ``SoftBound._compile``.
        An ``Any`` counts each item alone too: an item that holds at size 1 (``y <= 100``) is violated
        by larger inputs, and then the other items' penalties are the product's factors."""
        if isinstance(node, Compare):
            (a, b), (c, d) = value_range(node.lhs), value_range(node.rhs)
            if node.op == "==":
                return self._link_size(max(abs(b - c), abs(d - a)), equality=True)
            upper = COMPARISONS[node.op].upper  # a <= b is violated by a - b + margin
            excess = (b - c if upper else d - a) + self.margin
            return self._link_size(max(excess, 0.0))
        sizes = [self._penalty_size(item) for item in node.items]
        if isinstance(node, Any):
            return max(math.prod(sizes), *sizes)
        return math.fsum(sizes)

    def _link_size(self, excess: float, equality: bool = False) -> float:
        """The penalty of a violation of size ``excess``."""
        if self.penalty == "squared":
            return excess * excess
        if self.penalty == "hinge" or equality:
            return excess
        if self.penalty == "log_barrier":
            return -math.log(BARRIER_EDGE) + (excess + BARRIER_EDGE) / BARRIER_EDGE
        sharpness = self.penalty[1] if isinstance(self.penalty, tuple) else 1.0
        return excess + math.log(2) / sharpness  # softplus(k e) / k <= e + log(2) / k

    def input_names(self) -> tuple[str, ...]:
        names = self.condition.inputs
        return (*names, self.sample_weight) if self.sample_weight else names


declare(
    "soft_bound",
    SoftBoundParams,
    "Soft penalty on where a comparison over inputs (or a combination with and/or/not/implies) is violated.",
    example="soft_bound(0 <= pred <= 10, margin=0.1, penalty=hinge)",
    implementation="lossdsl.library.soft_bound:SoftBound",
    sample_losses=True,
)
