"""``bind``: a checked ``Plan`` plus the params' values, checked, as a ``BoundPlan``.

The checks prove what holds for every value a param may take; what depends on the values comes
here, still static, before any module is built: overrides (known names, numbers, inside their
ranges), arithmetic over params (a divisor at 0, a number beyond float32, a loss's weight beyond
``MAX_LOSS_WEIGHT``, a constraint bound that overflows its method), and each term's arguments
with the params it was given by name. ``lossdsl check`` stops here; ``build`` (the runtime) turns
a ``BoundPlan`` into a ``LossModule`` and checks nothing of this again.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from . import ast
from . import folding
from .errors import Diagnostic, LossSpecError, did_you_mean
from .plan import (
    Arithmetic,
    LetValue,
    Negate,
    ObjectiveExpr,
    Plan,
    ScheduleValue,
    TermPlan,
    TermValue,
    Weighted,
    constraint_overflow,
)
from .declarations import MAX_LOSS_WEIGHT, TermParams


@dataclass(frozen=True, eq=False)
class BoundPlan:
    """A plan with every param's value: all ``build`` needs."""

    plan: Plan
    #: Every ``param``'s value: its default, or the override given.
    params: Mapping[str, float]
    #: Per term of ``plan.terms``: its parameters, with the values of the params it was given by name.
    term_params: tuple[TermParams, ...]
    #: The interval of every number expression of the plan, folded once (``folding.interval``).
    intervals: folding.Intervals


def bind(plan: Plan, params: Mapping[str, float] | None = None,
         overrides: Mapping[str, object] | None = None) -> BoundPlan:
    """``plan`` with its params' values: the defaults, then ``params`` (values already checked, such
    as a module's own for ``with_params``), then ``overrides`` (as a user gave them: checked here).
    A value that breaks the spec is a ``LossSpecError`` (E105, E204, E205)."""
    values = {p.name: float(p.default) for p in plan.params}
    values.update(params or {})
    values.update(check_overrides(plan, overrides or {}))
    term_params = tuple(_term_params(plan, term, values) for term in plan.terms)
    arithmetic = _Arithmetic(values, plan.source)
    arithmetic.check_plan(plan)
    return BoundPlan(plan, values, term_params, arithmetic.known)


def check_overrides(plan: Plan, params: Mapping[str, object]) -> dict[str, float]:
    """Validate ``param`` overrides: known names, numbers, inside each param's range."""
    declared = {p.name: p for p in plan.params}
    diagnostics = []
    values: dict[str, float] = {}
    for name, value in params.items():
        param = declared.get(name)
        if param is None:
            hint = did_you_mean(name, declared) or (
                f"the spec declares {', '.join(declared)}" if declared else "the spec declares no param"
            )
            diagnostics.append(Diagnostic("E105", f"unknown param '{name}'", hint=hint))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= ast.LARGEST_NUMBER:
            diagnostics.append(Diagnostic("E204", f"param '{name}' takes a finite number up to {ast.LARGEST_NUMBER:.4g}, "
                                          f"got {value!r}", param.span))
            continue
        if param.low is not None and param.high is not None and not param.low <= value <= param.high:
            diagnostics.append(
                Diagnostic("E205", f"param '{name}' = {value} lies outside its range [{param.low}, {param.high}]",
                           param.span, source=plan.source)
            )
            continue
        values[name] = float(value)
    if diagnostics:
        raise LossSpecError(diagnostics)
    return values


def _term_params(plan: Plan, term: TermPlan, values: Mapping[str, float]) -> TermParams:
    """The term's parameters, with the values of the params it was given by name (validated again:
    the checks validated the defaults)."""
    if not term.param_args:
        return term.params
    # Only the fields given (a default written back as given trips validators that ask who set it).
    arguments = {name: getattr(term.params, name) for name in term.params.model_fields_set}
    # A param's value is a float; a whole one also fills an integer field (groups=k with k = 2).
    arguments.update({field: _whole_as_int(values[param]) for field, param in term.param_args})
    try:
        return type(term.params)(**arguments)
    except ValidationError as exc:
        error = exc.errors()[0]
        problem = error["msg"].replace("Input should be", "must be").removeprefix("Value error, ")
        if not error["loc"]:  # a check across fields
            given = ", ".join(f"{field}={param} = {values.get(param)}" for field, param in term.param_args)
            message = f"{term.term.name}() with {given}: {problem}"
        else:
            field = str(error["loc"][0])
            param = dict(term.param_args).get(field, "?")
            message = f"'{field}' of {term.term.name}() is param '{param}' = {values.get(param)}, which {problem}"
        raise LossSpecError([Diagnostic("E205", message, term.span, source=plan.source)]) from None


def _whole_as_int(value: float) -> int | float:
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**53 else value


class _Arithmetic:
    """The checks of arithmetic over params, in the order ``build`` once met them (lets, the
    objective, the constraints' bounds, the constraints), so the first problem is the same one."""

    def __init__(self, params: Mapping[str, float], source: str):
        self.params, self.source = params, source
        self.known: folding.Intervals = {}  # each node's interval, once

    def check_plan(self, plan: Plan) -> None:
        for let in plan.lets:
            self.check(let.value)
        if plan.objective is not None:
            self.check(plan.objective)
        for constraint in plan.constraints:  # a literal bound was checked; a param's value comes only now
            bound = self.fold(folding.constant, constraint.bound)
            overflow = constraint_overflow(constraint.method, constraint.rate, bound)
            if overflow is not None:
                names = self._values_of(constraint.bound)
                raise LossSpecError([Diagnostic("E205", f"{overflow} with {names}", constraint.span,
                                                source=self.source)])
        for constraint in plan.constraints:
            self.check(constraint.value)
            self.check(constraint.bound)

    def check(self, expr: ObjectiveExpr) -> None:
        """Every number in ``expr`` has a float32 value, every divisor misses 0, no loss is weighed
        beyond ``MAX_LOSS_WEIGHT``."""
        if isinstance(expr, (TermValue, LetValue, ScheduleValue)):
            return
        if self.fold(folding.constant, expr) is not None:
            return
        if isinstance(expr, Negate):
            self.check(expr.operand)
            return
        if isinstance(expr, Weighted):
            for operand in expr.operands:
                self.check(operand)
            return
        assert isinstance(expr, Arithmetic)
        is_number = self.fold(folding.is_number, expr)
        self.check(expr.left)  # first: a weight too large is shown where it is applied
        self.check(expr.right)
        if not is_number and not folding.weight(expr, self.params, self.known) <= MAX_LOSS_WEIGHT:
            self._fail(expr, f"the loss's weight exceeds {MAX_LOSS_WEIGHT:g}")

    def fold(self, how: typing.Callable[..., typing.Any], expr: ObjectiveExpr) -> typing.Any:
        try:
            return how(expr, self.params, self.known)
        except folding.FoldError as error:
            self._fail(error.node, error.message)  # type: ignore[arg-type]

    def _values_of(self, expr: ObjectiveExpr) -> str:
        return ", ".join(f"{name} = {value:g}" for name, value in self.params.items()
                         if name in folding.params_in(expr))

    def _fail(self, expr: Arithmetic, problem: str) -> typing.NoReturn:
        """Arithmetic the checks could not see: the params' values came only now."""
        names = self._values_of(expr)
        message = f"{problem} with {names}" if names else problem
        raise LossSpecError([Diagnostic("E205", message, expr.span, source=self.source)]) from None
