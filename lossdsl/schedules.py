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

from .schedule_params import (  # noqa: F401  (re-exported: the checks read them from schedule_params, without torch)
    MAX_STEPS,
    SCHEDULE_PARAMS,
    Ramp,
    Warmup,
    _ScheduleParams,
    value_range,
)


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


#: name -> (parameter model, positional parameter names, factory of the function of the step).
SCHEDULES: dict[str, tuple[type[_ScheduleParams], tuple[str, ...], Callable]] = {
    name: (*SCHEDULE_PARAMS[name], factory)
    for name, factory in {"warmup": _warmup, "linear": _linear, "cosine": _cosine}.items()
}
assert SCHEDULES.keys() == SCHEDULE_PARAMS.keys()
