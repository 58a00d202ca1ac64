"""The term registry: every callable term of the language, with its parameter model.

A term is a name, a pydantic model of its parameters (types, ranges, defaults
and a description each), and the ``nn.Module`` class that computes it. The
parameters that name input tensors are marked ``Input``; the checker resolves a
bare identifier given to them as an input name, and one given to a
``Literal[...]`` parameter as an option. The module is built with the validated
parameters and called with the input tensors in the order of
``TermParams.input_roles()``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat
from torch import nn

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
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, strict=True)

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
    module: type[nn.Module]
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
    #: The term's reference implementation and benchmark inputs: a function of ``lossdsl.parity.Sizes``
    #: that gives ``lossdsl.parity.Case`` objects. The parity test and ``benchmarks/terms.py`` read them;
    #: None for a term that gives none (the benchmark refuses to run without them).
    cases: Callable[[Any], Sequence[Any]] | None = None

    def layouts(self, params: TermParams) -> tuple[Layout, ...]:
        """The layouts this term accepts with these parameters, most preferred first."""
        if callable(self.shapes):
            return tuple(self.shapes(params)) or ({},)
        return (dict(self.shapes),)


REGISTRY: dict[str, TermDef] = {}


def register(
    name: str,
    params: type[TermParams],
    doc: str,
    example: str = "",
    noun: str = "value",
    shapes: dict[str, Shape] | Callable[[Any], Sequence[Layout]] | None = None,
    cases: Callable[[Any], Sequence[Any]] | None = None,
):
    """Class decorator: register an ``nn.Module`` subclass as the term ``name``.

    ``cases`` (a function of ``lossdsl.parity.Sizes`` giving ``lossdsl.parity.Case`` objects) are the
    term's reference and benchmark inputs: with them, registering is all a term needs for
    ``lossdsl terms``, docs/terms.md, the parity test and ``benchmarks/terms.py``.
    """

    def decorate(module: type[nn.Module]) -> type[nn.Module]:
        if name in REGISTRY:
            raise ValueError(f"term '{name}' is registered twice")
        REGISTRY[name] = TermDef(
            name=name, params=params, module=module, doc=doc, example=example or f"{name}()", noun=noun,
            shapes=shapes if callable(shapes) else tuple((shapes or {}).items()), cases=cases,
        )
        return module

    return decorate


class Term(nn.Module):
    """Base of term modules: knows where it stands in the spec, for error messages."""

    where: str = ""
    input_names: tuple[str, ...] = ()
    reduction: str = "mean"
    #: Whether the term can give one loss per sample (for ``group_loss``, ``reduction=none`` and
    #: ``LossModule.per_sample``): its forward takes ``sample_weight`` last and reduces through
    #: ``reduce`` when given one.
    per_sample: ClassVar[bool] = False
    #: Whether the term has per-sample losses although ``group_loss`` cannot take it (its inputs
    #: are read by name, as soft_bound's and mean's are): ``reduction=none`` and ``LossModule.per_sample``.
    sample_losses: ClassVar[bool] = False

    @classmethod
    def has_sample_losses(cls) -> bool:
        """Whether the term gives one loss per sample: ``reduction=none``, ``LossModule.per_sample``."""
        return cls.per_sample or cls.sample_losses

    def per_sample_parts(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``[N, 2]``: each sample's numerator and denominator of the term's mean, so that a group's
        mean loss is ``sum(numerators) / sum(denominators)`` over its samples (``group_loss``) and a
        sample's own loss is its row's quotient (``LossModule.per_sample``).

        ``inputs`` are the forward's, ``sample_weight`` included (``group_loss`` passes ones). A term
        with sample losses implements it by taking the keyword ``parts`` in its forward and handing it
        to ``reduce`` (which then gives each sample's mean, or sum for ``reduction=sum``, over its
        elements, weight 1); ce gives its class-weighted sums instead.
        """
        if not self.has_sample_losses():
            raise TypeError(f"{type(self).__name__} is computed over the whole batch: it has no per-sample parts")
        return self(*inputs, parts=True)

    def specialise(self, *inputs: torch.Tensor) -> Callable[..., torch.Tensor]:
        """The forward for inputs like these: the same dtypes, dimensions and devices, in the module's
        current training mode (the input signature). ``LossModule`` calls it once per signature, in
        eager mode only, with that call's tensors, and then calls what it returns instead of ``forward``.

        A term may check here, once, whatever depends only on the signature (raising as ``forward``
        would), and return a function of the same inputs that skips those checks and the ops these
        inputs make unneeded (no ignore_index mask for 0/1 targets, ...). It must give what ``forward``
        gives, values, gradients and state updates, for every input of that signature; checks on sizes
        stay in it. The default is ``forward`` itself (which skips ``nn.Module.__call__``'s hooks: a
        term's own hooks are not a supported extension point).
        """
        return self.forward

    def fusion_key(self) -> Hashable | None:
        """Terms of one spec with equal keys (not None), of one class, reading the same inputs, are
        computed by one call of ``type(self).fuse(terms)``: work they share (one ``index_add`` over
        the groups for several fairness statistics) is done once. None (the default): computed alone."""
        return None

    @classmethod
    def fuse(cls, terms: Sequence[Term]) -> Callable[..., tuple[torch.Tensor, ...]]:
        """For terms with one ``fusion_key``: a function of their (shared) inputs giving what each
        term's ``forward`` gives, in order, values, gradients and state updates alike."""
        raise NotImplementedError(f"{cls.__name__} gives no fusion_key")

    def bind_context(self, where: str, input_names: tuple[str, ...]) -> None:
        """``where`` reads like "ce() at specs/a.loss:3:12"; ``input_names`` follow the forward's order."""
        self.where, self.input_names = where, input_names

    def fail(self, position: int, problem: str) -> typing.NoReturn:
        """Raise for the input the term's forward takes at ``position``."""
        from .errors import LossSpecError

        name = self.input_names[position] if position < len(self.input_names) else "?"
        raise LossSpecError(f"input '{name}' of {self.where}: {problem}", code="E402")

    def expect_float(self, position: int, tensor: torch.Tensor) -> None:
        if not tensor.is_floating_point():
            self.fail(position, f"expected a floating-point tensor, got {tensor.dtype}")

    def expect_real(self, position: int, tensor: torch.Tensor) -> None:
        """Targets and labels may be bool, integer or floating point; complex values are no labels."""
        if tensor.is_complex():
            self.fail(position, f"expected bool, integer or floating-point values, got {tensor.dtype}")

    def batch_size(self, position: int, tensor: torch.Tensor, shape: str = "[N, ...]") -> int:
        """The size of the sample dimension of the input at ``position``; a scalar has none."""
        if tensor.dim() == 0:
            self.fail(position, f"expected a batch of shape {shape}, got a scalar")
        return tensor.shape[0]

    def expect_sample_weight(self, position: int, weight: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample weights as a [batch] tensor of ``dtype``."""
        if weight.shape != (batch,):
            self.fail(position, f"expected per-sample weights of shape ({batch},), got {tuple(weight.shape)}")
        return weight.to(dtype)

    def reduce(self, loss: torch.Tensor, sample_weight: torch.Tensor | None = None, parts: bool = False) -> torch.Tensor:
        """Reduce an element-wise loss [N, ...] by ``self.reduction``, weighting samples by ``sample_weight`` [N].

        With ``parts`` (from ``per_sample_parts``), return ``[N, 2]`` instead: each sample's own
        reduction over its elements (its mean, or its sum for ``reduction=sum``) and its weight
        (1), the numerator and denominator of a group's mean loss.

        Weighted, ``mean`` is the weighted mean of the per-sample means, ``sum(w * l) / sum(w)``,
        and 0 when every weight is 0; ``sum`` is ``sum(w * l)``; ``none`` is ``l`` itself (times
        each sample's weight). Sums and counts accumulate in float32 at least (a float16 sum of
        65,536 ones is inf); the result has the loss's dtype.
        """
        if parts:  # per_sample_parts: [N, 2] of each sample's mean loss, weight 1
            acc = accumulation_dtype(loss.dtype)
            flat = loss.flatten(1) if loss.dim() > 1 else loss.reshape(-1, 1)
            means = flat.sum(dim=1, dtype=acc) if self.reduction == "sum" else flat.mean(dim=1, dtype=acc)
            means = means.to(loss.dtype)
            return torch.stack([means, torch.ones_like(means)], dim=1)
        if self.reduction == "none":
            if sample_weight is None:
                return loss
            return loss * sample_weight.reshape(-1, *[1] * (loss.dim() - 1)).to(loss.dtype)
        if loss.numel() == 0:  # torch's mean of nothing is NaN; an empty batch adds nothing
            return loss.sum()
        acc = accumulation_dtype(loss.dtype)
        if sample_weight is None:
            total = loss.mean(dtype=acc) if self.reduction == "mean" else loss.sum(dtype=acc)
            return total.to(loss.dtype)
        per_sample = loss.flatten(1) if loss.dim() > 1 else loss.reshape(-1, 1)
        per_sample = per_sample.mean(dim=1, dtype=acc) if self.reduction == "mean" else per_sample.sum(dim=1, dtype=acc)
        sample_weight = sample_weight.to(acc)
        total = (sample_weight * per_sample).sum()
        if self.reduction == "sum":
            return total.to(loss.dtype)
        return weighted_mean(total, sample_weight.sum()).to(loss.dtype)

    def expect_same_shape(self, a: int, b: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape != y.shape:
            other = self.input_names[b]
            self.fail(a, f"shape {tuple(x.shape)} differs from {other}'s {tuple(y.shape)}; reshape one of them")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and counts over a batch accumulate in: float32 for half precision (whose
    largest value is 65,504, and whose bfloat16 sums stop growing at 256 ones), else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def weighted_mean(total: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``total / weight``, and 0 with zero gradients when the weight is 0 (never NaN or inf).

    Dividing by a clamped tiny weight instead would scale the gradients by 1/tiny, which
    overflows before the zero weights can cancel it.
    """
    return safe_divide(total, weight)


def safe_divide(
    numerator: torch.Tensor, denominator: torch.Tensor, defined: torch.Tensor | None = None
) -> torch.Tensor:
    """``numerator / denominator`` where ``defined`` (``denominator > 0`` unless given), and
    ``numerator / 1`` elsewhere, with no gradient through the denominator there: never the NaN or
    inf of 0 / 0 in the value or the gradient. The caller masks the undefined entries if they
    matter (a group without samples, an empty class).

    A ``where`` after the division would not do: the gradient of the unused ``x / 0`` branch is
    still NaN, and NaN * 0 is NaN.
    """
    if defined is None:
        defined = denominator > 0
    return numerator / torch.where(defined, denominator, torch.ones_like(denominator))
