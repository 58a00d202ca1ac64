"""Hugging Face ``Trainer(compute_loss_func=...)``: a compiled loss called as ``(outputs, labels, num_items_in_batch)``.

Nothing here imports transformers: the function works on anything with ``logits`` (a
``ModelOutput``, a dict, a namespace), so it is tested without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch

from ..errors import LossSpecError, did_you_mean
from ..runtime import LossModule

#: What ``inputs=`` maps a spec input to: a key (or attribute) of the model's outputs, ``"labels"``
#: for the labels, or a function of ``(outputs, labels)`` returning the tensor.
Source = Union[str, Callable[[Any, Any], torch.Tensor]]

#: The spec's ``pred`` and ``target`` when ``inputs=`` does not say otherwise.
DEFAULT_SOURCES: dict[str, Source] = {"pred": "logits", "target": "labels"}

#: Terms whose value is a mean over tokens, with an input (``num_items=NAME``) for the global count.
TOKEN_TERMS = ("token_ce",)


def compute_loss_func(spec_or_module: str | LossModule, inputs: Mapping[str, Source] | None = None) -> HFLoss:
    """A loss for ``transformers.Trainer(compute_loss_func=...)``, called ``(outputs, labels, num_items_in_batch=None)``.

    ``spec_or_module`` is spec text (compiled here) or a ``LossModule``. Each spec input is taken
    from, in this order: ``inputs[name]`` (a key or attribute of ``outputs``, ``"labels"`` for the
    labels, or a function ``(outputs, labels) -> tensor``); for ``pred`` the outputs' ``logits`` and
    for ``target`` the labels; for the ``num_items=NAME`` input of a token-level term
    (``token_ce``) ``num_items_in_batch`` (the micro-batch's own count when it is None); else the
    outputs' key or attribute of the input's own name.

    Token-level terms then divide by ``num_items_in_batch``, the count of the whole accumulated
    batch, so that the micro-batches' losses add up to the global token mean (transformers#34191).
    A token-level term without ``num_items=`` would divide by its micro-batch's own count: when
    ``num_items_in_batch`` is given that is E403, naming the term and the fix.
    """
    from .. import compile as compile_spec  # the package's, after its terms are registered

    if isinstance(spec_or_module, str):
        loss_fn = compile_spec(spec_or_module)
    elif isinstance(spec_or_module, LossModule):
        loss_fn = spec_or_module
    else:
        raise TypeError(f"compute_loss_func takes spec text or a LossModule, got {type(spec_or_module).__name__}")
    return HFLoss(loss_fn, inputs)


class _TokenCount:
    """A token-level term's ``num_items`` input: what it counts when ``num_items_in_batch`` is not given."""

    def __init__(self, term: Any):
        params = term.params
        self.where, self.input, self.target = term.where, params.num_items, params.target
        self.sequences, self.shift, self.ignore_index = params.normalize == "sequences", params.shift, params.ignore_index

    def own(self, target: torch.Tensor) -> torch.Tensor:
        """The micro-batch's own count, as the term computes it (no host synchronisation)."""
        if self.shift:
            target = target[:, 1:]
        keep = target != self.ignore_index
        return keep.any(dim=1).sum() if self.sequences else keep.sum()


class HFLoss:
    """``compute_loss_func``'s callable: ``loss(outputs, labels, num_items_in_batch=None)`` -> scalar.

    ``loss_fn`` is the ``LossModule`` (its ``last_terms`` hold the last call's terms); it is moved
    to the logits' device on the first call, as the Trainer moves the model but not this.
    """

    def __init__(self, loss_fn: LossModule, inputs: Mapping[str, Source] | None = None):
        given = dict(inputs or {})
        for name, source in given.items():
            if name not in loss_fn.inputs:
                hint = did_you_mean(name, list(loss_fn.inputs))
                raise LossSpecError(f"compute_loss_func: inputs= maps '{name}', which the spec does not read; "
                                    + (hint or f"it reads {', '.join(loss_fn.inputs)}"), code="E401")
            if not (isinstance(source, str) or callable(source)):
                raise TypeError(f"compute_loss_func: inputs['{name}'] must be an output key (str) or a function "
                                f"(outputs, labels) -> tensor, got {type(source).__name__}")
        self.loss_fn = loss_fn
        self.inputs = given
        # The token-level terms' count inputs that num_items_in_batch feeds (those inputs= leaves alone).
        counts = [_TokenCount(t) for t in loss_fn.plan.terms
                  if t.term.name in TOKEN_TERMS and getattr(t.params, "num_items", None) is not None]
        self._counts = [c for c in counts if c.input not in given]
        self._uncounted = [t.where for t in loss_fn.plan.terms
                           if t.term.name in TOKEN_TERMS and getattr(t.params, "num_items", None) is None]
        self._sources = {name: given.get(name, DEFAULT_SOURCES.get(name, name)) for name in loss_fn.inputs
                         if name not in {c.input for c in self._counts}}
        self._device: torch.device | None = None

    @property
    def last_terms(self) -> dict[str, torch.Tensor]:
        """The ``LossModule``'s ``last_terms``."""
        return self.loss_fn.last_terms

    def __call__(self, outputs: Any, labels: Any = None, num_items_in_batch: Any = None) -> torch.Tensor:
        if num_items_in_batch is not None and self._uncounted:
            raise LossSpecError(
                f"compute_loss_func: {self._uncounted[0]} divides by its micro-batch's own token count, but the "
                "Trainer passed num_items_in_batch (the accumulated batch's count), so the micro-batches' losses "
                "would not add up to the batch's mean (transformers#34191); write token_ce(..., "
                "num_items=num_items_in_batch) and it divides by the count given", code="E403")
        tensors = {name: self._fetch(name, source, outputs, labels) for name, source in self._sources.items()}
        first = next((t for t in tensors.values() if isinstance(t, torch.Tensor)), None)
        device = first.device if first is not None else None
        for count in self._counts:
            if num_items_in_batch is None:
                target = tensors.get(count.target)
                tensors[count.input] = count.own(target) if isinstance(target, torch.Tensor) else target
            elif count.sequences:
                raise LossSpecError(
                    f"compute_loss_func: {count.where} averages over sequences, but num_items_in_batch counts the "
                    f"accumulated batch's tokens; give inputs={{'{count.input}': ...}} a function (outputs, labels) "
                    "returning the accumulated batch's count of sequences with a token", code="E403")
            else:  # an int or a tensor: HF gives a tensor on the device (summed over ranks when averaged)
                tensors[count.input] = torch.as_tensor(num_items_in_batch, device=device)
        if device is not None and device != self._device:
            self.loss_fn.to(device)  # once: buffers (step counter, multipliers) follow the model's outputs
            self._device = device
        return self.loss_fn(**tensors)

    def _fetch(self, name: str, source: Source, outputs: Any, labels: Any) -> Any:
        if callable(source) and not isinstance(source, str):
            return source(outputs, labels)
        if source == "labels":
            if labels is None:
                raise LossSpecError(f"compute_loss_func: input '{name}' is the labels, but the Trainer gave none "
                                    "(the batch has no 'labels' key)", code="E401")
            return labels
        if isinstance(outputs, Mapping) and source in outputs:
            return outputs[source]
        if not isinstance(outputs, Mapping) and hasattr(outputs, source):
            return getattr(outputs, source)
        if isinstance(outputs, Mapping):
            keys = list(outputs.keys())
        else:
            keys = [k for k in getattr(outputs, "__dict__", {}) if not k.startswith("_")]
        hint = did_you_mean(source, keys)
        available = f"; {hint}" if hint else (f"; they hold {', '.join(map(str, keys))}" if keys else "")
        raise LossSpecError(
            f"compute_loss_func: input '{name}' is read from the model's outputs as '{source}', which they lack"
            f"{available}; map it with inputs={{'{name}': 'KEY'}} or inputs={{'{name}': lambda outputs, labels: ...}}",
            code="E401")
