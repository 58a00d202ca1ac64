"""Domain constraints as soft penalties: ``soft_bound(COMPARISON, penalty=..., margin=...)``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import parity
from ..conditions import Any, Compare, ConditionIR
from ..operators import COMPARISONS
from ..registry import Term, accumulation_dtype, implements
from ..tensor_eval import compile_tensor_expr, simplified
from ..tensor_expr import Arith, Const, TensorIR
from .params.soft_bound import BARRIER_EDGE, PENALTY_LIMIT, SoftBoundParams  # noqa: F401  (re-exported)


def _square(violation: torch.Tensor) -> torch.Tensor:
    """``violation * violation``: its backward multiplies the incoming gradient by each factor, so a
    gradient of 0 (an ``or`` whose other side holds) stays 0 for a violation of 3e38, where
    ``square``'s ``2 * violation`` overflows first and gives 0 * inf = NaN."""
    return violation * violation


def _either(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The penalty of ``p or q``, ``P(p) * P(q)``, and 0 where either side is 0 (the condition holds
    there) even when the other side is inf (0 * inf is NaN). A NaN on the other side stays NaN. Both
    factors are replaced by 1 where the side holds, so the masked product passes no NaN gradient
    (its true gradient there is 0: a squared or hinge penalty is flat where it is 0)."""
    holds = ((a == 0) & ~b.isnan()) | ((b == 0) & ~a.isnan())
    product = torch.where(holds, 1.0, a) * torch.where(holds, 1.0, b)
    return torch.where(holds, 0.0, product)


def _soft_bound_cases(s: parity.Sizes) -> list[parity.Case]:
    """Reference: the squared excess past each bound, in plain torch."""
    n, o = s.n, s.outputs
    return [parity.Case("soft_bound(0 <= y <= 1)", parity.shape(n, o),
                        parity.inputs(y=lambda g: 1.4 * torch.rand(n, o, generator=g) - 0.2),
                        lambda y: F.relu(-y).square().mean() + F.relu(y - 1).square().mean(), grad=("y",))]


@implements("soft_bound", cases=_soft_bound_cases)
class SoftBound(Term):
    """Penalises the violation of each comparison, element-wise.

    - Each link ``a OP b`` of the comparison is violated by ``relu(a - b + margin)`` for ``a <= b``
      and ``a < b``, by ``relu(b - a + margin)`` for ``a >= b`` and ``a > b``, and by ``|a - b|``
      for ``a == b`` (the margin does not apply to ``==``; ``<`` is treated as ``<=``). The
      penalty is the violation squared (``squared``) or itself (``hinge``), reduced over
      elements; a chain ``0 <= y <= 1`` adds its links' penalties (it is ``0 <= y and y <= 1``).
      A number bound absorbs the margin when the module is built: ``y <= 100`` with ``margin=0.1``
      computes ``relu(y - 99.9)``, one op (its last bit may differ from ``(y - 100) + 0.1``).
    - ``penalty=softplus(k)`` is the smooth hinge ``softplus(k * e) / k`` of the signed excess
      ``e = a - b + margin`` (k = 1 when written ``softplus``). ``penalty=log_barrier`` is
      ``-log(-e)``: it grows as a satisfied bound is approached, and from ``e = -0.01`` on it
      continues as the tangent line, so a violation gets a finite, growing penalty, never inf.
      ``==`` links take ``squared`` (``(a - b)^2``) or ``hinge`` (``|a - b|``) only.
    - Comparisons combine with ``and``, ``or``, ``not`` and ``implies`` (loosest last: ``not`` binds
      tighter than ``and``, ``and`` than ``or``, ``or`` than ``implies``, which groups to the
      right), with the semantics of DL2 (Fischer et al., 2019), element-wise before the reduction:
      ``and`` adds its sides' penalties, ``or`` multiplies them, ``not`` is pushed into the
      comparisons (``not a <= b`` is ``a > b``; De Morgan for ``and`` and ``or``), and ``p implies
      q`` is ``not p or q``. Each side is then 0 exactly where it holds, so the combination is too
      (up to strictness: ``<`` counts as ``<=``). A product needs a penalty that is 0 where a
      comparison holds, so ``or`` and ``implies`` take ``squared`` or ``hinge`` only; ``not (a ==
      b)`` is refused (``a != b`` has no gradient); write ``a <= b - 0.1 or a >= b + 0.1``.
    - The operands are tensor expressions: input names, numbers, ``+ - * /``, unary minus,
      parentheses and the element-wise functions of ``mean`` (``soft_bound(upper - lower >= 0)``,
      ``soft_bound(abs(y) <= 3)``). A string, list or ``let`` name is E204; a link between two
      constants (``soft_bound(3 <= 4)``) or a nested comparison is E303.
    - All inputs of one condition have the same shape (E402; no broadcasting). Integer and bool
      inputs are cast to the default float dtype. An empty input gives 0. The term reads the
      names of its condition, in order. ``reduction=none`` gives the element-wise penalties, of
      the inputs' shape.
    """

    sample_losses = True

    def __init__(self, params: SoftBoundParams):
        super().__init__()
        self.weighted = params.sample_weight is not None
        penalty = params.penalty
        self.penalty, self.sharpness = (penalty[0], penalty[1]) if isinstance(penalty, tuple) else (penalty, 1.0)
        self._penalty = {
            "squared": self._squared, "hinge": F.relu, "softplus": self._softplus, "log_barrier": self._log_barrier,
        }[self.penalty]
        self._equality_penalty = _square if self.penalty == "squared" else (lambda x: x)
        self.margin = params.margin
        self.reduction = params.reduction
        # The condition's own names: sample_weight comes last and may repeat one (sample_weight=y).
        position = {name: i for i, name in enumerate(params.condition.inputs)}
        # The condition as one closure over the input tensors, resolved once: the forward compares no strings.
        self._violation = self._compile(params.condition.root, position)

    def forward(self, *tensors: torch.Tensor, parts: bool = False) -> torch.Tensor:
        sample_weight = None
        if self.weighted:
            *tensors, sample_weight = tensors
        tensors = tuple(self._as_float(i, t) for i, t in enumerate(tensors))
        if sample_weight is not None:
            batch = tensors[0].shape[0] if tensors[0].dim() else 1
            sample_weight = self.expect_sample_weight(len(tensors), sample_weight, batch, tensors[0].dtype)
        for i, tensor in enumerate(tensors[1:], start=1):
            if tensor.shape != tensors[0].shape:
                self.fail(i, f"shape {tuple(tensor.shape)} differs from {self.input_names[0]}'s {tuple(tensors[0].shape)}")
        return self.reduce(self._violation(tensors), sample_weight, parts)

    def specialise(self, *tensors: torch.Tensor) -> Callable[..., torch.Tensor]:
        """The forward's straight path (see ``Term.specialise``) for floating-point inputs of one
        dtype without ``sample_weight``: no casts, the shapes compared per call (other shapes and
        empty inputs go to ``forward``, for its diagnostic and its 0)."""
        if self.weighted or not tensors or any(not t.is_floating_point() or t.dtype != tensors[0].dtype for t in tensors):
            return self.forward
        forward, violation, reduction = self.forward, self._violation, self.reduction
        computed_in = accumulation_dtype(tensors[0].dtype)
        cast_back = computed_in != tensors[0].dtype
        if len(tensors) == 1 and not cast_back and reduction == "mean":  # soft_bound(y <= 100): no shapes to compare

            def straight_mean(y: torch.Tensor) -> torch.Tensor:
                if not y.numel():
                    return forward(y)
                return violation((y,)).mean()  # (its own dtype: float32 or float64 sums in it)

            return straight_mean

        def straight(*tensors: torch.Tensor) -> torch.Tensor:
            shape = tensors[0].shape
            if not tensors[0].numel() or any(tensor.shape != shape for tensor in tensors[1:]):
                return forward(*tensors)
            loss = violation(tensors)
            if reduction == "none":
                return loss
            total = loss.mean(dtype=computed_in) if reduction == "mean" else loss.sum(dtype=computed_in)
            return total.to(tensors[0].dtype) if cast_back else total

        return straight

    def _compile(self, node: ConditionIR, position: dict[str, int]) -> Callable:
        """The element-wise penalty of a lowered condition (DL2): an ``All`` adds its items'
        penalties, an ``Any`` multiplies them, left to right."""
        if isinstance(node, Compare):
            return self._link(node, position)
        parts = [self._compile(item, position) for item in node.items]
        combine = _either if isinstance(node, Any) else torch.add

        def combined(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
            total = parts[0](tensors)
            for part in parts[1:]:  # a plain loop: torch.compile traces it (not math.prod)
                total = combine(total, part(tensors))
            return total

        return combined

    def _link(self, compare: Compare, position: dict[str, int]) -> Callable:
        """One comparison ``a OP b``: its penalty per element."""
        if compare.op == "==":
            equality, difference = self._equality_penalty, compile_tensor_expr(Arith("-", compare.lhs, compare.rhs), position)
            return lambda tensors: equality(difference(tensors).abs())
        # How far past the (tightened) bound: positive when violated. Built as one expression and
        # folded (tensor_expr.simplified): y <= 100 is y - 100, 0 <= y is -y, no 1 * or + 0.
        penalty = self._penalty
        excess = compile_tensor_expr(self._excess(compare), position)
        return lambda tensors: penalty(excess(tensors))

    def _excess(self, compare: Compare) -> TensorIR:
        """``a - b + margin`` for ``a <= b`` (``b - a + margin`` for ``a >= b``), the margin folded
        into the bound when the bound is a number: ``y <= 100`` with ``margin=0.1`` is ``y - 99.9``
        (computed in float64, then once in the inputs' dtype)."""
        first, second = (compare.lhs, compare.rhs) if COMPARISONS[compare.op].upper else (compare.rhs, compare.lhs)
        first, second = simplified(first), simplified(second)
        if self.margin and isinstance(second, Const):
            return Arith("-", first, Const(second.value - self.margin))
        if self.margin and isinstance(first, Const):
            return Arith("-", Const(first.value + self.margin), second)
        return Arith("+", Arith("-", first, second), Const(self.margin))

    @staticmethod
    def _squared(excess: torch.Tensor) -> torch.Tensor:
        violation = torch.relu(excess)  # (F.relu's op, without its Python layer)
        return violation * violation  # _square's product

    def _softplus(self, excess: torch.Tensor) -> torch.Tensor:
        return F.softplus(excess, beta=self.sharpness)

    @staticmethod
    def _log_barrier(excess: torch.Tensor) -> torch.Tensor:
        """-log(-excess) inside the bound, continued linearly (with matching slope) from
        excess = -BARRIER_EDGE on, so it never returns inf and still pushes a violation back."""
        inside = -excess
        safe = torch.clamp(inside, min=BARRIER_EDGE)
        barrier = -torch.log(safe)
        linear = -math.log(BARRIER_EDGE) + (excess + BARRIER_EDGE) / BARRIER_EDGE
        return torch.where(inside > BARRIER_EDGE, barrier, linear)

    def _as_float(self, position: int, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor
        if tensor.dtype == torch.bool or not tensor.is_complex():
            return tensor.to(torch.get_default_dtype())
        self.fail(position, f"expected a real tensor, got {tensor.dtype}")
