"""Copies and pickles of a compiled loss: ``copy.deepcopy``, ``pickle``, ``torch.save``, spawned processes.

A ``LossModule`` is data plus state. Its closures (the objective's arithmetic, the terms' compiled
conditions and statistics) are rebuilt, never pickled. A pickle holds:

- the spec as checked: the parsed spec with its includes already expanded, and the main file's
  text and name. Unpickling checks it again and reads no file (an included file may have changed,
  or be gone, in the process that loads it), and messages still name the spec's lines;
- the values of the params, and the function or class of each custom term, by reference (imported
  when unpickled, which registers the term);
- the state, as it is (device, dtype): every buffer and parameter, each submodule's training flag,
  the last call's values (detached), a custom module term's own module, and the binding of
  ``l1``/``l2`` when the bound model travels in the same pickle (it holds the loss as a submodule).

``copy.deepcopy`` shares the plan (it is immutable) and copies the state; it also keeps the binding
when the bound model is copied in the same call (``deepcopy(model)`` of a model that holds the loss).
"""

from __future__ import annotations

import copy
import pickle
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checking import check
from .custom import _CustomTerm, term
from .registry import REGISTRY, TermDef
from .library.penalties import _Penalty

if TYPE_CHECKING:
    from .plan import Plan, TermPlan
    from .runtime import LossModule

#: The layout of a pickled ``LossModule``; another one is refused with a clear message.
FORMAT = 1


@dataclass
class State:
    """What a copy carries besides the spec: each part as the original holds it."""

    training: tuple[bool, ...]
    #: Every buffer and parameter, by its name in ``named_buffers()`` / ``named_parameters()``.
    tensors: dict[str, torch.Tensor]
    #: The user's module inside each custom module term, by the term's name in ``named_modules()``.
    custom_modules: dict[str, nn.Module]
    #: The last call's values, detached (``last_terms``).
    last: tuple[torch.Tensor, ...]
    bound_model: nn.Module | None = None
    #: The parameters each penalty term reads, by the term's name in ``named_modules()``.
    bound_parameters: dict[str, tuple[nn.Parameter, ...]] = field(default_factory=dict)
    #: ``LossModule.check_finite``, an attribute outside ``state_dict``.
    check_finite: bool = False
    format: int = FORMAT


def reduce(module: LossModule) -> tuple[Any, ...]:
    """``__reduce_ex__``: rebuild from the checked spec, then restore the state."""
    plan = module.plan
    payload = {
        "format": FORMAT,
        "spec": plan.spec,
        "source": plan.source,
        "filename": plan.filename,
        "params": dict(module.params),
        "terms": tuple(filter(None, (_registration(definition) for definition in _term_definitions(plan)))),
    }
    bound = module._bound_model
    return _rebuild, (type(module), payload), capture(module, keep_binding=bound is not None and _holds(bound, module))


def _rebuild(cls: type[LossModule], payload: dict[str, Any]) -> LossModule:
    if payload.get("format") != FORMAT:
        raise pickle.UnpicklingError(
            f"this LossModule was pickled in format {payload.get('format')!r}, this lossdsl reads format {FORMAT}: "
            "compile the spec again and load its state_dict()"
        )
    for registration in payload["terms"]:
        _register(registration)
    plan = check(payload["spec"], payload["source"], payload["filename"])
    return cls(plan, payload["params"])


def deep_copy(module: LossModule, memo: dict[int, Any]) -> LossModule:
    """``__deepcopy__``: a new module over the same (immutable) plan, with a deep copy of the state."""
    new = type(module)(module.plan, dict(module.params))
    memo[id(module)] = new
    bound = module._bound_model
    keep = bound is not None and (id(bound) in memo or _holds(bound, module))
    restore(new, copy.deepcopy(capture(module, keep), memo))
    return new


def shallow_copy(module: LossModule) -> LossModule:
    """``__copy__``: new term modules sharing the original's tensors (as a shallow copy of a module does)."""
    new = type(module)(module.plan, dict(module.params))
    restore(new, capture(module, keep_binding=True))
    return new


def capture(module: LossModule, keep_binding: bool) -> State:
    tensors: dict[str, torch.Tensor] = dict(module.named_buffers())
    tensors.update(module.named_parameters())
    custom = {name: sub.inner for name, sub in module.named_modules() if isinstance(sub, _CustomTerm) and sub.is_module}
    state = State(
        training=tuple(sub.training for sub in module.modules()),
        tensors=tensors,
        custom_modules=custom,
        last=tuple(value.detach() for value in module._last[0]),
        check_finite=module.check_finite,
    )
    if keep_binding:
        state.bound_model = module._bound_model
        state.bound_parameters = {
            name: sub._parameters_of_model
            for name, sub in module.named_modules()
            if isinstance(sub, _Penalty) and sub._parameters_of_model is not None
        }
    return state


def restore(module: LossModule, state: State) -> None:
    """Put a captured state into a module freshly built from the same plan."""
    if state.format != FORMAT:
        raise pickle.UnpicklingError(f"a LossModule state in format {state.format!r}; this lossdsl reads {FORMAT}")
    submodules = dict(module.named_modules())
    for name, inner in state.custom_modules.items():
        submodules[name].adopt(inner)
    submodules = dict(module.named_modules())
    for name, tensor in state.tensors.items():
        owner, _, leaf = name.rpartition(".")
        holder = submodules.get(owner)
        slots = None if holder is None else holder._parameters if isinstance(tensor, nn.Parameter) else holder._buffers
        if slots is None or leaf not in slots:
            raise pickle.UnpicklingError(f"the rebuilt LossModule has no tensor {name!r}")
        slots[leaf] = tensor  # as saved: its device and dtype too
    for sub in module.modules():  # state derived from the buffers (a group count that fit learned)
        if hasattr(sub, "state_restored"):
            sub.state_restored()
    modules = list(module.modules())
    if len(modules) != len(state.training):
        raise pickle.UnpicklingError("the rebuilt LossModule has other submodules than the pickled one")
    for sub, training in zip(modules, state.training):
        sub.training = training
    module._last[0] = tuple(state.last)
    module.check_finite = state.check_finite
    if state.bound_model is not None:
        object.__setattr__(module, "_bound_model", state.bound_model)  # not a submodule
        for name, parameters in state.bound_parameters.items():
            submodules[name]._parameters_of_model = parameters


def _holds(model: nn.Module, module: nn.Module) -> bool:
    """Whether ``model`` holds ``module`` as a submodule: then it travels with the loss's pickle anyway."""
    return any(sub is module for sub in model.modules())


def _term_definitions(plan: Plan) -> list[TermDef]:
    """The definitions of the terms the plan calls, nested ones (``group_loss(mse())``) too."""
    found: dict[str, TermDef] = {}

    def visit(term_plan: TermPlan) -> None:
        found.setdefault(term_plan.term.name, term_plan.term)
        for nested in term_plan.params.nested_terms():
            visit(nested)

    for term_plan in plan.terms:
        visit(term_plan)
    return list(found.values())


def _registration(definition: TermDef) -> tuple[Any, ...] | None:
    """What registers a term that ``import lossdsl`` does not: a custom term's function or class (with
    its parameter model, doc and example), or another package's module class, each by reference."""
    module = definition.module
    if issubclass(module, _CustomTerm):
        name, target, params, doc, example = module.registration
        _require_importable(name, target, "its function" if not module.is_module else "its class")
        if params is not None:
            _require_importable(name, params, "its parameter model")
        return ("custom", name, target, params, doc, example)
    if module.__module__.startswith("lossdsl."):  # a built-in: importing lossdsl registers it
        return None
    _require_importable(definition.name, module, "its module class")
    return ("class", definition.name, module)


def _register(registration: tuple[Any, ...]) -> None:
    """Register a custom term the unpickling process lacks. Unpickling the function imported its
    module, which registers it in the usual case; a term registered by hand is registered here."""
    if registration[0] != "custom":  # another package's class: unpickling it imported (registered) it
        return
    _, name, target, params, doc, example = registration
    existing = REGISTRY.get(name)
    if existing is None:
        term(name, params, doc, example)(target)
        return
    registered = getattr(existing.module, "registration", (None, None))[1]
    if registered is not target:
        shown = _qualified(registered) if registered is not None else "a built-in term"
        raise pickle.UnpicklingError(
            f"the pickled loss's term '{name}' is {_qualified(target)}, but here '{name}' is {shown}"
        )


def _require_importable(name: str, obj: Any, what: str) -> None:
    """Refuse plainly what pickle would fail on with a less helpful message (or a process could not load)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    found: Any = module
    for part in getattr(obj, "__qualname__", "<?>").split("."):
        found = getattr(found, part, None)
    if found is not obj:
        raise pickle.PicklingError(
            f"cannot pickle this LossModule: {what} of the custom term '{name}', {_qualified(obj)}, "
            "cannot be imported by name (a lambda, or defined inside a function?); define it at the top "
            "level of a module. copy.deepcopy works regardless."
        )


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
