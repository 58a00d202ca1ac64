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


class Warmup(_ScheduleParams):
    steps: PositiveInt = Field(description="steps to rise from 0 to 1")


class Ramp(_ScheduleParams):
    start: float = Field(description="the value at step 0")
    end: float = Field(description="the value from `steps` on")
    steps: PositiveInt = Field(description="steps to move from start to end")


def _progress(step: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.clamp(step.to(torch.get_default_dtype()) / steps, max=1.0)


def _warmup(params: Warmup) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda step: _progress(step, params.steps)


def _linear(params: Ramp) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda step: params.start + (params.end - params.start) * _progress(step, params.steps)


def _cosine(params: Ramp) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda step: params.end + (params.start - params.end) * 0.5 * (
        1 + torch.cos(math.pi * _progress(step, params.steps))
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
