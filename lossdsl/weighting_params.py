"""The weightings' parameters, without torch: ``uncertainty(L1, L2, ...)`` and ``dwa(L1, L2, ..., T=2)``,
which the checks read. The modules that learn or compute the weights (with torch) are in ``lossdsl.weightings``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _WeightingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class UncertaintyParams(_WeightingParams):
    pass


class DwaParams(_WeightingParams):
    T: float = Field(default=2.0, gt=0, le=1e30, description="the softmax temperature: larger evens the weights out")


#: name -> parameter model.
WEIGHTING_PARAMS: dict[str, type[_WeightingParams]] = {
    "uncertainty": UncertaintyParams,
    "dwa": DwaParams,
}
