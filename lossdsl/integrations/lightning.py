"""Lightning: ``LossDSLCallback`` logs a compiled loss's ``last_terms`` and audits its constraints.

Lightning is imported when this module is, not by ``import lossdsl``: the callback subclasses
``lightning.pytorch.Callback`` (else ``pytorch_lightning.Callback``) when one is installed, and is
a plain object otherwise, so its hooks run with any trainer and module that have the attributes
they read (``log_dict``, ``current_epoch``), as the tests' fakes do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..errors import LossSpecError
from ..runtime import LossModule


def _callback_base() -> type:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name).Callback
        except ImportError:
            continue
    return object


#: What ``audit=`` returns: the loss's inputs over the audit data (a mapping of tensors), or
#: batches of them, concatenated along the first dimension.
AuditInputs = Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]]


class LossDSLCallback(_callback_base()):
    """Log ``last_terms`` after each training batch; audit the constraints at each epoch's end.

    - ``loss_attr``: the attribute of the LightningModule holding the ``LossModule``.
    - ``log_every``: log every ``log_every``-th batch (by ``batch_idx``, the same on every rank),
      through ``pl_module.log_dict(..., sync_dist=True)``: each value is reduced across ranks,
      which needs the same keys on every rank at every step; ``last_terms``' keys are fixed
      when the module is built. Only scalars are logged (a ``reduction=none`` term is not).
    - ``audit``: a function ``(trainer, pl_module) -> inputs`` giving the loss's inputs over the
      audit data (the model's predictions on it, the labels, the group codes...), or an iterable
      of such batches; at each training epoch's end ``lossdsl.audit`` runs on them and
      ``audit/<constraint>`` (1 holds, 0 violated), ``audit/<constraint>.value`` and
      ``audit/holds`` are logged; ``last_audit`` keeps the report.
    - Schedules need no stepping here: each training-mode call of the loss advances its counter
      (one per micro-batch under gradient accumulation); the callback never steps it.
    """

    def __init__(self, loss_attr: str = "loss_fn", log_every: int = 1,
                 audit: Callable[[Any, Any], AuditInputs] | None = None, prefix: str = "loss/"):
        if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
            raise TypeError(f"log_every must be a positive int, got {log_every!r}")
        if audit is not None and not callable(audit):
            raise TypeError(f"audit must be a function (trainer, pl_module) -> inputs, got {type(audit).__name__}")
        super().__init__()
        self.loss_attr, self.log_every, self.audit, self.prefix = loss_attr, log_every, audit, prefix
        self.last_audit = None

    def loss_fn(self, pl_module: Any) -> LossModule:
        loss_fn = getattr(pl_module, self.loss_attr, None)
        if isinstance(loss_fn, LossModule):
            return loss_fn
        inner = getattr(loss_fn, "loss_fn", None)  # compute_loss_func's wrapper
        if isinstance(inner, LossModule):
            return inner
        raise TypeError(f"LossDSLCallback: {type(pl_module).__name__}.{self.loss_attr} must be a lossdsl LossModule "
                        f"(lossdsl.compile(...)), got {type(loss_fn).__name__}; name the attribute with loss_attr=")

    def metrics(self, pl_module: Any) -> dict[str, torch.Tensor]:
        """What is logged: the scalar ``last_terms``, keyed ``<prefix><label>``."""
        return {f"{self.prefix}{label}": value for label, value in self.loss_fn(pl_module).last_terms.items()
                if value.dim() == 0}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx % self.log_every:
            return
        metrics = self.metrics(pl_module)
        if metrics:  # nothing before the loss's first call
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.audit is None:
            return
        from ..audit import audit

        loss_fn = self.loss_fn(pl_module)
        with torch.no_grad():
            inputs = _concatenated(self.audit(trainer, pl_module))
        report = audit(loss_fn, **inputs)
        self.last_audit = report
        device = next((t.device for t in inputs.values()), None)
        logged = {f"audit/{name}": float(c.holds) for name, c in report.constraints.items()}
        logged.update({f"audit/{name}.value": c.value for name, c in report.constraints.items()})
        logged["audit/holds"] = float(report.holds)
        pl_module.log_dict({k: torch.tensor(v, device=device) for k, v in logged.items()},
                           on_step=False, on_epoch=True, sync_dist=True)


def _concatenated(given: AuditInputs) -> dict[str, torch.Tensor]:
    """The audit's inputs: a mapping as it is, or batches of them concatenated along dimension 0."""
    if isinstance(given, Mapping):
        return dict(given)
    batches = list(given)
    if not batches or not all(isinstance(b, Mapping) for b in batches):
        raise LossSpecError("LossDSLCallback: audit= must return the loss's inputs (a mapping of tensors) or "
                            "batches of them, got " + ("no batch" if not batches else type(batches[0]).__name__),
                            code="E401")
    keys = list(batches[0])
    return {key: torch.cat([b[key] for b in batches]) for key in keys}
