"""Multi-task weightings: ``uncertainty(L1, L2, ...)`` and ``dwa(L1, L2, ..., T=2)``.

A weighting combines losses with weights that the module learns or computes as it trains, where a
number (``0.5 * ce()``) or a schedule (``warmup(800) * kl``) weighs with a value fixed by the spec:

- ``uncertainty`` (Kendall, Gal and Cipolla, "Multi-task learning using uncertainty to weigh
  losses for scene geometry and semantics", CVPR 2018): ``sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i``
  with ``s_i = log sigma_i^2`` learned, an ``nn.Parameter`` of the module (0 at the start: every
  weight 0.5). This is the paper's regression (Gaussian likelihood) form, applied to every task;
  its classification form, ``exp(-s_i) * L_i + 0.5 * s_i``, differs by a factor 2 on the loss,
  which a learned ``s_i`` absorbs (``s_i`` shifts by ``log 2``).
- ``dwa`` (Liu, Johns and Davison, "End-to-end multi-task learning with attention", CVPR 2019,
  Dynamic Weight Average): ``sum_k w_k * L_k``, ``w_k = K * softmax(r / T)_k``,
  ``r_k = L_k(t-1) / L_k(t-2)``, ``w_k = 1`` for the first two steps. The weights are detached;
  the two last values of each loss are buffers (``state_dict``), and a step is a training-mode call.

Each is a module the ``LossModule`` holds (``loss_fn.weightings``), so ``loss_fn.parameters()``
yields the learned weights and ``state_dict``, pickles and copies carry them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import distributed
from .errors import LossSpecError, LossSpecWarning
from .weighting_params import (  # noqa: F401  (re-exported: the checks read them from weighting_params, without torch)
    WEIGHTING_PARAMS,
    DwaParams,
    UncertaintyParams,
    _WeightingParams,
)


#: Backward passes after which the learned weights are compared with their value at the first
#: training call, once (``Uncertainty.watch``): enough for an optimiser that steps every few
#: micro-batches (gradient accumulation up to 8), or whose learning rate starts at 0.
CHECK_AFTER_BACKWARDS = 10


def _stacked(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """The losses as one tensor ``[K, ...]``, in float32 at least (a float16 loss times exp(-s) overflows sooner)."""
    dtype = torch.float32
    for value in values:
        dtype = torch.promote_types(dtype, value.dtype)
    return torch.stack([value.to(dtype) for value in values])


def _per_loss(weights: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """``weights`` ``[K]`` shaped to broadcast against ``stacked`` ``[K, ...]`` (per-sample values are ``[K, N]``)."""
    return weights.to(stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))


class Weighting(nn.Module):
    """Base of the weightings: ``forward(values)`` combines the losses' values into one."""

    def __init__(self, count: int, where: str):
        super().__init__()
        self.count, self.where = count, where

    def watch(self) -> None:
        """Called after each training-mode forward (never under torch.compile): nothing to watch here."""

    def _on_device_of(self, stacked: torch.Tensor, state: torch.Tensor) -> None:
        """The losses and the weighting's state on one device (metadata only, no sync): else E402,
        not torch's message from deep inside the objective."""
        if stacked.device != state.device:
            raise LossSpecError(
                f"{self.where}: the losses are on {stacked.device} but its weights' state is on {state.device}: "
                "move the loss module too, loss_fn.to(device) (before making the optimiser)", code="E402")


class Uncertainty(Weighting):
    """``sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i``, ``s_i = log sigma_i^2`` the parameter ``log_variances``."""

    def __init__(self, params: UncertaintyParams, count: int, where: str):
        super().__init__(count, where)
        self.log_variances = nn.Parameter(torch.zeros(count))
        # The optimiser check (``watch``): plain attributes, outside state_dict; a copy watches anew.
        self._snapshot: torch.Tensor | None = None
        self._backwards = 0
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._watched = False

    def forward(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = _stacked(values)
        self._on_device_of(stacked, self.log_variances)
        s = _per_loss(self.log_variances, stacked)
        return (0.5 * torch.exp(-s) * stacked + 0.5 * s).sum(0)

    def weights(self) -> torch.Tensor:
        """The weight on each loss now, ``0.5 * exp(-s_i)``, detached."""
        return 0.5 * torch.exp(-self.log_variances.detach())

    def watch(self) -> None:
        """The bug users report most: learned weights left out of the optimiser. At the first
        training call this keeps a copy of ``s`` and counts the backward passes that reach it (a
        hook: no host sync); after ``CHECK_AFTER_BACKWARDS`` of them it compares ``s`` with the copy
        once (one host synchronisation, once in the module's life) and warns if it has not moved."""
        if self._watched:
            return
        if self._snapshot is None:
            self._snapshot = self.log_variances.detach().clone()
            self._hook = self.log_variances.register_hook(self._count_backward)
            return
        if self._backwards < CHECK_AFTER_BACKWARDS:
            return
        self._watched = True
        if self._hook is not None:
            self._hook.remove()
        unchanged = torch.equal(self._snapshot.to(self.log_variances.device), self.log_variances.detach())  # the sync
        self._snapshot = None
        if unchanged:
            warnings.warn(
                f"{self.where}: its learned weights (the log-variances s_i) received gradients over "
                f"{self._backwards} backward passes but have not changed: they are not in the optimiser. "
                "Give it the loss's parameters too: torch.optim.Adam([*model.parameters(), *loss_fn.parameters()])",
                LossSpecWarning, stacklevel=5,  # the caller of loss_fn(...)
            )

    def _count_backward(self, grad: torch.Tensor) -> None:
        self._backwards += 1  # a Python count: the gradient's values are not read


class Dwa(Weighting):
    """``sum_k w_k * L_k``, ``w = K * softmax(r / T)``, ``r_k = L_k(t-1) / L_k(t-2)``; 1 for two steps."""

    def __init__(self, params: DwaParams, count: int, where: str):
        super().__init__(count, where)
        self.temperature = params.T
        # The last two values of each loss (row 0: step t-1, row 1: t-2), and how many steps are in them.
        self.register_buffer("history", torch.ones(2, count))
        self.register_buffer("recorded", torch.zeros((), dtype=torch.long))

    def weights(self) -> torch.Tensor:
        """The weight on each loss at this step, detached: 1 until two steps are recorded."""
        ratio = self.history[0] / self.history[1].clamp_min(torch.finfo(self.history.dtype).tiny)
        learned = self.count * torch.softmax(ratio / self.temperature, dim=0)
        return torch.where(self.recorded >= 2, learned, torch.ones_like(learned))

    def forward(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = _stacked(values)
        self._on_device_of(stacked, self.history)
        weights = self.weights()
        total = (_per_loss(weights, stacked) * stacked).sum(0)
        if self.training:  # a step: the values become L(t-1), no sync
            with torch.no_grad():
                current = stacked.detach().reshape(self.count, -1).mean(1).to(self.history.dtype)
                if distributed.active():  # every rank weighs alike: the mean of the ranks' losses
                    current = distributed.all_reduce_counts_(current) / torch.distributed.get_world_size()
                self.history.copy_(torch.stack([current, self.history[0]]))
                self.recorded.copy_(torch.clamp(self.recorded + 1, max=2))
        return total


#: name -> (parameter model, the module's class).
WEIGHTINGS: dict[str, tuple[type[_WeightingParams], Callable[..., Weighting]]] = {
    name: (WEIGHTING_PARAMS[name], module) for name, module in {"uncertainty": Uncertainty, "dwa": Dwa}.items()
}
assert WEIGHTINGS.keys() == WEIGHTING_PARAMS.keys()
