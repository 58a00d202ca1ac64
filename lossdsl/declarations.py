"""The term declarations: what the checks know of every term, without torch.

A term is a name, a pydantic model of its parameters (types, ranges, defaults and a description
each), its docs and input layouts, and the ``nn.Module`` class that computes it. The parameters that
name input tensors are marked ``Input``; the checker resolves a bare identifier given to them as an
input name, and one given to a ``Literal[...]`` parameter as an option. The module is built with the
validated parameters and called with the input tensors in the order of ``TermParams.input_roles()``.

This module imports no torch: ``lossdsl check`` runs every static pass with it alone. A built-in
term is *declared* here (``declare``, from ``lossdsl/library/params/<family>.py``) with the path of
its module class, which ``TermDef.module`` imports on first use; the implementation, beside its class,
is marked ``@implements(name)`` (``lossdsl.registry``, with torch), which fills in the class and its
reference cases and refuses a class whose flags differ from the declaration. ``lossdsl.registry``
re-exports everything here.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat

from . import kinds
from .conditions import LoweredCondition, lowered_condition
from .tensor_expr import LoweredExpression, lowered_expression


class _InputMarker:
    """Marks a parameter whose value is the name of an input tensor."""

    def __repr__(self) -> str:
        return "Input"


class _ConditionMarker:
    """Marks a parameter that takes a comparison over tensors, such as ``y <= 100``."""

    def __repr__(self) -> str:
        return "Condition"


class _TensorMarker:
    """Marks a parameter that takes an element-wise tensor expression, such as ``abs(pred - target)``."""

    def __repr__(self) -> str:
        return "TensorExpression"


INPUT = _InputMarker()
CONDITION = _ConditionMarker()
TENSOR = _TensorMarker()

#: The kinds an ``inputs:`` block may declare (``lossdsl.kinds``: one row each).
INPUT_KINDS = kinds.NAMES


#: The most groups a fairness term sizes its per-group slots for (``groups=K``, ``group[N] of K``):
#: every call works over all K slots (a K of 2^24 took 5 s and 871 MB a call at N = 4), and a typo of a
#: few extra digits is a diagnostic, not an allocation of gigabytes. More groups: leave ``groups=``
#: out, and the codes are ranked within each batch (at most N slots).
MAX_GROUPS = 2**16
#: The most values of per-group state (``window=ema`` running sums, float64) the terms of one spec keep
#: in all: 2^24 values, 128 MiB.
MAX_GROUP_STATE = 2**24


#: The largest factor a loss may be multiplied by (numbers, params and schedules together, and a
#: penalty's own ``weight``): a loss above 3.4e23 times more overflows float32; beyond, it is a typo.
MAX_LOSS_WEIGHT = 1e15


@dataclass(frozen=True)
class Kinds:
    """The input kinds a parameter accepts, checked against an ``inputs:`` declaration."""

    names: tuple[str, ...]


def InputOf(*kinds: str) -> Any:  # noqa: N802 - used as a type annotation
    """An input parameter that accepts only inputs declared as one of ``kinds``."""
    assert set(kinds) <= set(INPUT_KINDS), kinds
    return Annotated[str, INPUT, Kinds(kinds)]

class InnerLoss:
    """A loss term called inside another term's argument: ``group_loss_gap(huber(delta=2))``.

    ``form`` is the wrapping call's name and ``inner`` the checked plan of the inner term (a
    ``TermPlan``). A parameter annotated ``Annotated[InnerLoss, InnerForms(...)]`` accepts it.
    """

    __slots__ = ("form", "inner", "text")

    def __init__(self, form: str, inner: Any, text: str = ""):
        self.form, self.inner, self.text = form, inner, text or f"{form}({inner.term.name}(...))"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InnerLoss) and (self.form, self.inner) == (other.form, other.inner)

    def __hash__(self) -> int:
        return hash(self.form)  # consistent with __eq__, which compares the inner plans too

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class InnerForms:
    """The call names (``group_loss``, ...) under which a parameter takes an ``InnerLoss``."""

    names: tuple[str, ...]


Input = Annotated[str, INPUT]
#: A condition, lowered from the checked AST when the parameters are built (``lossdsl.conditions``):
#: the term reads its IR, never the AST.
Condition = Annotated[LoweredCondition, CONDITION, BeforeValidator(lowered_condition)]
#: An element-wise tensor expression, lowered likewise (``lossdsl.tensor_expr``).
TensorExpression = Annotated[LoweredExpression, TENSOR, BeforeValidator(lowered_expression)]
Reduction = Literal["mean", "sum", "none"]
#: The reduction parameter every loss term takes (give the default at the field). ``none`` is
#: accepted only by terms with a per-sample form (``Term.has_sample_losses``); the checks refuse it on
#: batch-level terms.
ReductionParam = Annotated[
    Reduction,
    Field(description="mean (weighted by sample_weight, if given), sum, or none: the unreduced losses, "
          "of torch's reduction='none' shape (times sample_weight, if given)"),
]
#: The reduction parameter of a batch-level term (dice, soft_f1): it has no per-sample form.
BatchReductionParam = Annotated[Literal["mean", "sum"], Field(description="mean (weighted by sample_weight, if given) or sum")]
#: The per-sample weight input every loss term takes.
SampleWeight = Annotated[
    str | None,
    INPUT,
    Kinds(("weight", "real", "mask", "binary")),
    Field(description="the input holding per-sample weights [N]; mean becomes sum(w * loss) / sum(w)"),
]
#: A list of positive numbers, one per class or label.
Weights = Annotated[tuple[PositiveFloat, ...], Field(min_length=1)]
#: A value a tensor of int64 can hold.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class TermParams(BaseModel):
    """Base of every term's parameter model."""

    # strict: a spec's "0.1" is a string, not a number; ints still pass as floats.
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, strict=True, defer_build=True)

    #: Parameters that may be given positionally, in order.
    positional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def fields_marked(cls, marker: object) -> tuple[str, ...]:
        return tuple(name for name, field in cls.model_fields.items() if marker in field.metadata)

    @classmethod
    def options(cls, name: str) -> tuple[str, ...]:
        """The string options a parameter accepts (its ``Literal`` members)."""
        return tuple(_literal_strings(cls.model_fields[name].annotation))

    @classmethod
    def kinds(cls, name: str) -> tuple[str, ...] | None:
        """The input kinds parameter ``name`` accepts; None for any."""
        for item in cls.model_fields[name].metadata:
            if isinstance(item, Kinds):
                return item.names
        return None

    @classmethod
    def inner_forms(cls, name: str) -> tuple[str, ...]:
        """The call names under which parameter ``name`` takes an inner loss term (``group_loss``)."""
        for item in cls.model_fields[name].metadata:
            if isinstance(item, InnerForms):
                return item.names
        return ()

    @classmethod
    def accepts_bool(cls, name: str) -> bool:
        return cls.accepts(name, bool)

    @classmethod
    def accepts(cls, name: str, kind: type) -> bool:
        """Whether parameter ``name``'s annotation admits ``kind`` (bool, tuple, ...)."""
        return _mentions(cls.model_fields[name].annotation, kind)

    def input_roles(self) -> tuple[str, ...]:
        """The input parameters this instance reads, in the order its module takes them."""
        return tuple(role for role in self.fields_marked(INPUT) if getattr(self, role) is not None)

    def input_names(self) -> tuple[str, ...]:
        return tuple(getattr(self, role) for role in self.input_roles())

    def beyond_float32(self) -> tuple[str, str] | None:
        """(argument, problem) when valid arguments still make a value float32 cannot hold (the
        checks report it as E205 at that argument); None when they do not."""
        return None

    def nested_terms(self) -> tuple[Any, ...]:
        """Plans of the terms this one calls (``group_loss(mse)``'s ``mse``); their inputs come first."""
        return ()


def _literal_strings(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is Literal:
        return [a for a in typing.get_args(annotation) if isinstance(a, str)]
    found: list[str] = []
    for arg in typing.get_args(annotation):
        found += _literal_strings(arg)
    return found


def _mentions(annotation: Any, kind: type) -> bool:
    return (
        annotation is kind
        or typing.get_origin(annotation) is kind
        or any(_mentions(arg, kind) for arg in typing.get_args(annotation))
    )


#: A symbolic shape: "N" the batch, "C" the classes, other names 4, numbers as they are.
Shape = tuple[str | int, ...]


class Lengths(NamedTuple):
    """What a lengths input holds, in a term's layout: for each of its entries a length along
    dimension ``dim`` of the input of role ``of``: that dimension's size when ``full``, else one
    from 1 to it (``ctc``'s input_lengths, the frames of log_probs [T, N, C]: ``Lengths("log_probs",
    0, full=True)``)."""

    of: str
    dim: int
    full: bool = False


class Fit(NamedTuple):
    """An input's shape in one of a term's layouts, and the kinds (of those its parameter accepts)
    that fit there: ``Fit(("N", 4, 4), ("labels",))`` for class indices beside logits [N, C, 4, 4].

    ``classes``: the dimension of this input that counts the classes the labels beside it index
    (None: dimension 1 of logits and probs, ``[N, C, ...]``; 2 for token logits ``[B, T, V]``, 0 for
    an output layer's weight ``[V, D]``). ``lengths``: the input holds lengths (see ``Lengths``)."""

    shape: Shape
    kinds: tuple[str, ...] = ()
    classes: int | None = None
    lengths: Lengths | None = None


#: How a term's inputs may be shaped together: role -> shape (or Fit); roles left out are [N].
Layout = Mapping[str, Shape | Fit]


def same_shape_layouts(*roles: str, kinds: Mapping[str, tuple[str, ...]] | None = None,
                       last: int | None = None) -> tuple[Layout, ...]:
    """Layouts of an element-wise term whose ``roles`` share one shape: [N], [N, C], [N, C, 4, 4]; or
    [N, last] and [N, C, last] when an argument fixes the last dimension (one entry per label)."""
    shapes: tuple[Shape, ...] = (("N",), ("N", "C"), ("N", "C", 4, 4)) if last is None else (("N", last), ("N", "C", last))
    kinds = kinds or {}
    return tuple({role: Fit(shape, kinds.get(role, ())) for role in roles} for shape in shapes)


def class_layouts(classes: int | str = "C", binary: bool = True, pred: str = "pred",
                  target: str = "target") -> tuple[Layout, ...]:
    """Layouts of logits with integer class indices: binary logits [N] with 0/1 labels (when
    ``binary``), then logits [N, classes] and [N, classes, 4, 4] with class indices."""
    layouts: list[Layout] = [{pred: ("N",), target: Fit(("N",), ("labels", "binary"))}] if binary else []
    layouts += [
        {pred: ("N", classes), target: Fit(("N",), ("labels",))},
        {pred: ("N", classes, 4, 4), target: Fit(("N", 4, 4), ("labels",))},
    ]
    return tuple(layouts)




@dataclass(frozen=True)
class TermDef:
    name: str
    params: type[TermParams]
    doc: str
    #: A one-line spec that uses the term, for the docs.
    example: str = ""
    #: What the positional parameter is called in messages ("statistic" for fairness).
    noun: str = "value"
    #: How the inputs are shaped, for synthetic inputs (``lossdsl verify`` and ``explain``): the
    #: shapes of the roles that are not [N] (role -> shape), or a function of the term's parameters
    #: that gives the layouts it accepts, most preferred first (``lossdsl.synthetic`` picks one per
    #: term so that inputs shared between terms agree).
    shapes: tuple[tuple[str, Shape], ...] | Callable[[Any], Sequence[Layout]] = ()
    #: Where the module class lives, ``"package.module:Class"``: ``module`` imports it on first use.
    implementation: str = ""
    #: The module class's flags, which the checks read without importing it (``Term.per_sample``,
    #: ``Term.sample_losses``, ``batch_dimension``); ``@implements`` refuses a class whose flags differ.
    per_sample: bool = False
    sample_losses: bool = False
    #: The dimension of the first input that counts the samples (``Term.batch_dimension``, 1 for ctc's
    #: log_probs [T, N, C]): ``group_loss`` and ``group_dro`` group along dimension 0 only.
    batch_dimension: int = 0
    # Filled in by ``implement`` (``@implements``, or ``register`` at once): not part of the identity.
    _module: type | None = field(default=None, init=False, compare=False, repr=False)
    _cases: Callable[[Any], Sequence[Any]] | None = field(default=None, init=False, compare=False, repr=False)

    def has_sample_losses(self) -> bool:
        """Whether the term gives one loss per sample: ``reduction=none``, ``LossModule.per_sample``."""
        return self.per_sample or self.sample_losses

    @property
    def module(self) -> type:
        """The term's ``nn.Module`` class, its implementation imported (with torch) on first use."""
        if self._module is None:
            path = self.implementation.partition(":")[0]
            importlib.import_module(path)  # its @implements(name) calls implement
            if self._module is None:
                raise RuntimeError(f"term '{self.name}' is declared as implemented by {self.implementation}, "
                                   f"but {path} marks no class @implements({self.name!r})")
        return self._module

    @property
    def cases(self) -> Callable[[Any], Sequence[Any]] | None:
        """The term's reference implementation and benchmark inputs: a function of ``lossdsl.parity.Sizes``
        that gives ``lossdsl.parity.Case`` objects. The parity test and ``benchmarks/terms.py`` read them;
        None for a term that gives none (the benchmark refuses to run without them)."""
        self.module  # noqa: B018  (the implementation gives the cases)
        return self._cases

    def implement(self, module: type, cases: Callable[[Any], Sequence[Any]] | None) -> None:
        """Attach the module class (checked against the declaration) and its cases."""
        found = f"{module.__module__}:{module.__qualname__}"
        declared = (self.implementation, *self.flags())
        implemented = (found, *module_flags(module))
        if implemented != declared:
            raise ValueError(
                f"term '{self.name}' is declared as {_described(declared)}, but implemented by "
                f"{_described(implemented)}: make the declaration and the class agree")
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_cases", cases)

    def flags(self) -> tuple[bool, bool, int]:
        """``per_sample``, ``sample_losses``, ``batch_dimension``: what the checks read of the class."""
        return self.per_sample, self.sample_losses, self.batch_dimension

    def layouts(self, params: TermParams) -> tuple[Layout, ...]:
        """The layouts this term accepts with these parameters, most preferred first."""
        if callable(self.shapes):
            return tuple(self.shapes(params)) or ({},)
        return (dict(self.shapes),)


def module_flags(module: type) -> tuple[bool, bool, int]:
    """A module class's ``per_sample``, ``sample_losses`` and ``batch_dimension`` (``TermDef.flags``)."""
    return (bool(getattr(module, "per_sample", False)), bool(getattr(module, "sample_losses", False)),
            int(getattr(module, "batch_dimension", 0)))


def _described(implementation: tuple[str, bool, bool, int]) -> str:
    path, per_sample, sample_losses, batch_dimension = implementation
    return f"{path} (per_sample={per_sample}, sample_losses={sample_losses}, batch_dimension={batch_dimension})"


REGISTRY: dict[str, TermDef] = {}


def declare(
    name: str,
    params: type[TermParams],
    doc: str,
    example: str = "",
    noun: str = "value",
    shapes: Mapping[str, Shape] | Callable[[Any], Sequence[Layout]] | None = None,
    *,
    implementation: str,
    per_sample: bool = False,
    sample_losses: bool = False,
    batch_dimension: int = 0,
) -> TermDef:
    """Declare the term ``name``, implemented by the class at ``implementation`` ("package.module:Class",
    marked ``@implements(name)``); ``per_sample``, ``sample_losses`` and ``batch_dimension`` are that
    class's flags (``TermDef.flags``)."""
    if name in REGISTRY:
        raise ValueError(f"term '{name}' is registered twice")
    definition = TermDef(
        name=name, params=params, doc=doc, example=example or f"{name}()", noun=noun,
        shapes=shapes if callable(shapes) else tuple((shapes or {}).items()),
        implementation=implementation, per_sample=per_sample, sample_losses=sample_losses,
        batch_dimension=batch_dimension,
    )
    REGISTRY[name] = definition
    return definition
