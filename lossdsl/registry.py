"""The term registry, with torch: the base of term modules (``Term``), ``register`` and ``implements``.

What the checks read of a term (its parameter model, docs, layouts and flags) is declared without
torch in ``lossdsl.declarations``, re-exported here: ``REGISTRY``, ``TermDef``, ``TermParams``,
the parameter types. The module is built with the validated parameters and called with the input
tensors in the order of ``TermParams.input_roles()``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .declarations import (  # noqa: F401  (re-exported: the registry's names, as before the split)
    CONDITION,
    INPUT,
    INPUT_KINDS,
    MAX_GROUP_STATE,
    MAX_GROUPS,
    MAX_LOSS_WEIGHT,
    REGISTRY,
    TENSOR,
    BatchReductionParam,
    Condition,
    Fit,
    InnerForms,
    InnerLoss,
    Input,
    InputOf,
    Int64,
    Kinds,
    Layout,
    Lengths,
    Reduction,
    ReductionParam,
    SampleWeight,
    Shape,
    TensorExpression,
    TermDef,
    TermParams,
    Weights,
    class_layouts,
    declare,
    module_flags,
    same_shape_layouts,
)


def register(
    name: str,
    params: type[TermParams],
    doc: str,
    example: str = "",
    noun: str = "value",
    shapes: dict[str, Shape] | Callable[[Any], Sequence[Layout]] | None = None,
    cases: Callable[[Any], Sequence[Any]] | None = None,
):
    """Class decorator: declare an ``nn.Module`` subclass as the term ``name`` and implement it at once
    (custom terms and plug-ins; the built-in terms are declared without torch and marked ``implements``).

    ``cases`` (a function of ``lossdsl.parity.Sizes`` giving ``lossdsl.parity.Case`` objects) are the
    term's reference and benchmark inputs: with them, registering is all a term needs for
    ``lossdsl terms``, docs/terms.md, the parity test and ``benchmarks/terms.py``.
    """

    def decorate(module: type[nn.Module]) -> type[nn.Module]:
        per_sample, sample_losses, batch_dimension = module_flags(module)
        definition = declare(
            name, params, doc, example, noun, shapes, implementation=f"{module.__module__}:{module.__qualname__}",
            per_sample=per_sample, sample_losses=sample_losses, batch_dimension=batch_dimension,
        )
        definition.implement(module, cases)
        return module

    return decorate


def implements(name: str, cases: Callable[[Any], Sequence[Any]] | None = None):
    """Class decorator: the module class of the declared term ``name`` (``lossdsl.declarations.declare``),
    with its reference and benchmark ``cases``. Refuses a class other than the declared one, or one
    whose flags (``per_sample``, ``sample_losses``, ``batch_dimension``) differ from the declaration's:
    the checks read those without importing the class."""

    def decorate(module: type[nn.Module]) -> type[nn.Module]:
        REGISTRY[name].implement(module, cases)
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


def host_reads_are_free(tensor: torch.Tensor) -> bool:
    """Whether a term may read ``tensor``'s values on the host to choose a cheaper path: a plain CPU
    tensor in eager mode, where the read costs no synchronisation. Not on CUDA (a sync), nor under
    torch.compile, a torch.func transform (vmap, grad: its tensors are wrapped) or tracing (make_fx
    in ``lossdsl explain``, fake tensors: their modes), where a read of data is an error. (A plain
    dispatch mode, such as a FLOP counter, sees the same ops as a call without it.)"""
    if not tensor.is_cpu or torch.compiler.is_compiling():
        return False
    functorch = torch._C._functorch
    if functorch.is_functorch_wrapped_tensor(tensor) or functorch.peek_interpreter_stack() is not None:
        return False
    if not torch._C._len_torch_dispatch_stack():  # no mode at all, the usual call: none to look up (called per call)
        return True
    return all(torch._C._get_dispatch_mode(key) is None for key in _TRACING_MODES)


#: The dispatch modes under which a tensor's data cannot be read (``host_reads_are_free``).
_TRACING_MODES = (torch._C._TorchDispatchModeKey.PROXY, torch._C._TorchDispatchModeKey.FAKE,
                  torch._C._TorchDispatchModeKey.FUNCTIONAL)


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
