"""The schedules' parameters, without torch: ``warmup(steps)``, ``linear(start, end, steps)`` and
``cosine(start, end, steps)``, their models and value ranges, which the checks read. The functions of
the step counter (with torch) are in ``lossdsl.schedules``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class _ScheduleParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


#: The most steps a schedule takes: the step counter is an int64, which counts no further.
MAX_STEPS = 2**63 - 1
_STEPS_DESCRIPTION = "at most 2^63 - 1, as far as the int64 step counter counts"


class Warmup(_ScheduleParams):
    steps: PositiveInt = Field(le=MAX_STEPS, description=f"steps to rise from 0 to 1 ({_STEPS_DESCRIPTION})")


class Ramp(_ScheduleParams):
    start: float = Field(description="the value at step 0")
    end: float = Field(description="the value from `steps` on")
    steps: PositiveInt = Field(le=MAX_STEPS, description=f"steps to move from start to end ({_STEPS_DESCRIPTION})")


def value_range(kind: str, params: _ScheduleParams) -> tuple[float, float]:
    """The smallest and the largest value a schedule takes."""
    if isinstance(params, Ramp):
        return min(params.start, params.end), max(params.start, params.end)
    return 0.0, 1.0  # warmup


#: name -> (parameter model, positional parameter names).
SCHEDULE_PARAMS: dict[str, tuple[type[_ScheduleParams], tuple[str, ...]]] = {
    "warmup": (Warmup, ("steps",)),
    "linear": (Ramp, ("start", "end", "steps")),
    "cosine": (Ramp, ("start", "end", "steps")),
}
