"""Schedules: numbers that move with the loss module's step counter.

``warmup(steps)`` rises from 0 to 1; ``linear(start, end, steps)`` and ``cosine(start, end,
steps)`` move from ``start`` to ``end``; each holds its last value after ``steps``. A schedule
multiplies a loss (``warmup(1000) * kl``) like any number. The counter is the buffer
``step_count`` of the module, advanced once per training-mode call (``loss_fn.step()`` advances
it by hand) and saved in ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
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


def _progress(step: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.clamp(step.to(torch.get_default_dtype()) / float(steps), max=1.0)


def _between(start: float, end: float, share: torch.Tensor) -> torch.Tensor:
    """``start`` moved ``share`` of the way to ``end``, as a weighted mean of the two: the
    difference ``end - start`` would overflow float32 for ``linear(3e38, -3e38, 10)``."""
    return start * (1 - share) + end * share


def _warmup(params: Warmup) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda step: _progress(step, params.steps)


def _linear(params: Ramp) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda step: _between(params.start, params.end, _progress(step, params.steps))


def _cosine(params: Ramp) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda step: _between(
        params.start, params.end, 0.5 * (1 - torch.cos(math.pi * _progress(step, params.steps)))
    )


def value_range(kind: str, params: _ScheduleParams) -> tuple[float, float]:
    """The smallest and the largest value a schedule takes."""
    if isinstance(params, Ramp):
        return min(params.start, params.end), max(params.start, params.end)
    return 0.0, 1.0  # warmup


#: name -> (parameter model, positional parameter names, factory of the function of the step).
SCHEDULES: dict[str, tuple[type[_ScheduleParams], tuple[str, ...], Callable]] = {
    "warmup": (Warmup, ("steps",), _warmup),
    "linear": (Ramp, ("start", "end", "steps"), _linear),
    "cosine": (Ramp, ("start", "end", "steps"), _cosine),
}
