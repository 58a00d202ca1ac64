"""Statistics over the global batch under ``torch.distributed``.

When a default process group is initialised with more than one rank, terms that keep batch
statistics (fairness group sums, ``ce(weight=balanced)`` class counts) sum them over all ranks,
so every rank computes the penalty of the global batch. The check reads only host-side state
(no device synchronisation); the collectives themselves run on the device, like DDP's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


#: Whether this torch has ``torch.distributed`` at all (fixed when torch is built; asked once, not per call).
_AVAILABLE = dist.is_available()


def active() -> bool:
    """Whether sums should be all-reduced: an initialised process group of more than one rank.
    (Terms ask at every call: a group may be initialised after the loss is built.)"""
    return _AVAILABLE and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, differentiably.

    The backward all-reduces the gradient too, so each rank's inputs get ``world_size`` times
    their share of the global statistic's gradient; DDP's averaging of parameter gradients then
    gives exactly the gradient of the global batch's penalty.
    """
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


@torch.no_grad()
def all_reduce_counts_(counts: torch.Tensor) -> torch.Tensor:
    """Sum non-differentiable counts over all ranks, in place."""
    dist.all_reduce(counts)
    return counts
