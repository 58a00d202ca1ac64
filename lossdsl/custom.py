"""Custom terms: ``@lossdsl.term("name")`` on a function or an ``nn.Module`` class, and plug-ins.

    @lossdsl.term("abs_error")
    def abs_error(pred, target):
        return (pred - target).abs().mean()

    class MarginParams(lossdsl.TermParams):
        margin: float = Field(1.0, gt=0, description="the margin")

    @lossdsl.term("ranking", params=MarginParams)
    class Ranking(torch.nn.Module):
        def __init__(self, margin):
            super().__init__()
            self.margin = margin
        def forward(self, pos, neg):
            return torch.relu(self.margin - pos + neg).mean()

The forward's (or function's) parameters are the inputs the term reads, each by its own name
unless the spec names another (``abs_error(pred=head2)``); the fields of ``params`` are the
term's parameters, given to the class's constructor (or to the function) as keywords. A custom
term is checked, documented and reported exactly like a built-in one. Third-party packages
register theirs through the entry-point group ``lossdsl.terms``: each entry point is loaded
(imported) when lossdsl is imported, and may also be a callable that registers terms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, create_model
from torch import nn

from .plugins import ENTRY_POINT_GROUP, load_plugins  # noqa: F401  (re-exported: their home needs no torch)
from .registry import Input, Term, TermParams, register


def term(
    name: str, params: type[TermParams] | None = None, doc: str | None = None, example: str | None = None,
    cases: Callable[[Any], Any] | None = None,
) -> Callable[[Any], Any]:
    """Register a function or an ``nn.Module`` class as the term ``name``; returns it unchanged.

    ``cases``: its reference implementation and benchmark inputs (see ``lossdsl.parity``), for the
    parity test and ``benchmarks/terms.py``.
    """

    def decorate(target: Any) -> Any:
        if not name.isidentifier():
            raise ValueError(f"a term name is an identifier, got {name!r}")
        is_module = inspect.isclass(target) and issubclass(target, nn.Module)
        if not is_module and not callable(target):
            raise TypeError(f"@lossdsl.term needs a function or an nn.Module class, got {target!r}")
        base = params or TermParams
        signature = inspect.signature(target.forward if is_module else target)
        parameter_names = set(base.model_fields)
        inputs = [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.name not in parameter_names
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not inputs:
            raise TypeError(f"term '{name}' reads no input: give its forward (or function) tensor parameters")
        input_fields: dict[str, Any] = {
            role: (Input, Field(role, description=f"the input read as {role}")) for role in inputs
        }
        model = create_model(f"{name}_params", __base__=base, **input_fields)
        own_doc = inspect.cleandoc(target.__doc__) if target.__doc__ else ""  # not nn.Module's, inherited
        summary = doc or (own_doc or f"Custom term {name}.").split("\n")[0]
        adapter = type(
            f"{name}_term",
            (_CustomTerm,),
            {"__doc__": own_doc or summary, "target": target if is_module else staticmethod(target),
             "is_module": is_module, "parameters": tuple(sorted(parameter_names)),
             "registration": (name, target, params, doc, example)},
        )
        register(name, model, summary, example=example or f"{name}()", cases=cases)(adapter)
        return target

    return decorate


class _CustomTerm(Term):
    """Adapts a user's function or module to the term interface."""

    target: Any = None
    is_module = False
    parameters: tuple[str, ...] = ()
    #: The decorator's arguments: (name, target, params, doc, example). A pickle of a loss holds
    #: them (the target by reference) to register the term where it is unpickled.
    registration: tuple[Any, ...] = ()

    def __init__(self, params: TermParams):
        super().__init__()
        kwargs = {name: getattr(params, name) for name in self.parameters}
        if self.is_module:
            self.inner = type(self).target(**kwargs)
            self._call = self.inner
        else:
            function = type(self).target
            self._call = (lambda *tensors: function(*tensors, **kwargs)) if kwargs else function

    def adopt(self, inner: nn.Module) -> None:
        """Take ``inner``, a copy of the user's module, as this term's: copies keep all its state."""
        self.inner = inner
        self._call = inner

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        value = self._call(*tensors)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            from .errors import LossSpecError

            raise LossSpecError(f"{self.where} must return a scalar tensor, got {shape}", code="E404")
        return value
