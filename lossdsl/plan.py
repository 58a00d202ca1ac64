"""The checked plan: what ``checks`` proves about a spec and ``compiler`` turns into modules.

Immutable and free of tensors, so one plan is cached per spec text and every
compile builds fresh modules from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from . import ast
from .errors import Diagnostic
from .registry import TermDef, TermParams


@dataclass(frozen=True)
class ParamPlan:
    """``param NAME = VALUE [in [LOW, HIGH]]``."""

    name: str
    default: float
    low: float | None
    high: float | None
    span: ast.Span | None


@dataclass(frozen=True, eq=False)
class TermPlan:
    """One call of a term in the spec."""

    term: TermDef
    params: TermParams
    span: ast.Span | None
    label: str = ""
    #: Term parameters given a ``param`` by name: (parameter, param name); set when the module is built.
    param_args: tuple[tuple[str, str], ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        """Input names, in the order the term's module takes them."""
        return self.params.input_names()

    @property
    def where(self) -> str:
        """``ce() at specs/a.loss:3:12``; just ``ce()`` for a spec built in Python."""
        if self.span is None:
            return f"{self.term.name}()"
        filename = self.span.filename or "<spec>"
        return f"{self.term.name}() at {filename}:{self.span.line}:{self.span.column}"


# The objective is arithmetic over term values, let values and numbers.


@dataclass(frozen=True, eq=False)
class TermValue:
    term: TermPlan


@dataclass(frozen=True, eq=False)
class LetValue:
    name: str


@dataclass(frozen=True)
class ScheduleValue:
    """``warmup(1000)``, ``linear(0, 1, 5000)``, ...: a number that moves with the step counter."""

    kind: str
    params: object  # the schedule's validated parameter model


@dataclass(frozen=True)
class ParamValue:
    """A ``param``: a number fixed when the module is built (its default, or an override)."""

    name: str


#: The label of the whole loss in ``LossModule.last_terms``.
TOTAL_LABEL = "total"


@dataclass(frozen=True)
class Constant:
    value: float


@dataclass(frozen=True, eq=False)
class Arithmetic:
    op: Literal["+", "-", "*", "/"]
    left: ObjectiveExpr
    right: ObjectiveExpr
    #: Where it is written: params get their values only when the module is built.
    span: ast.Span | None = None


@dataclass(frozen=True, eq=False)
class Negate:
    operand: ObjectiveExpr


ObjectiveExpr = Union[TermValue, LetValue, ParamValue, ScheduleValue, Constant, Arithmetic, Negate]


@dataclass(frozen=True, eq=False)
class ConstraintPlan:
    """``subject to VALUE OP BOUND [as NAME] [using METHOD]``: ``VALUE`` a loss, ``BOUND`` a number."""

    name: str
    value: ObjectiveExpr
    op: Literal["<=", ">=", "=="]
    bound: ObjectiveExpr
    method: Literal["lagrangian", "penalty", "augmented"]
    rate: float  # the multiplier's step (lagrangian), the weight (penalty) or rho (augmented)
    span: ast.Span | None


#: The largest size of a constraint's multiplier: the learned ones saturate here rather than grow
#: until ``lam * g`` overflows (a multiplier of 1e6 weighs the constraint a million times the loss:
#: beyond it, the constraint is infeasible or its scale is wrong).
MULTIPLIER_CAP = 1e6


def constraint_overflow(method: str, rate: float, bound: float) -> str | None:
    """Why a constraint with this bound cannot stay in float32, or None: its contribution with the
    excess ``g`` at twice the bound's size (at least 2: a loss of 0 to twice the bound) and the
    multiplier at ``MULTIPLIER_CAP`` (a penalty's weight for ``penalty``) passes float32's largest."""
    excess = 2 * max(abs(bound), 1.0)
    if method == "penalty":
        worst = rate * excess
    elif method == "lagrangian":
        worst = MULTIPLIER_CAP * excess
    else:  # augmented: lam * g + rho / 2 * g^2
        worst = MULTIPLIER_CAP * excess + rate / 2 * excess * excess
    if worst <= ast.LARGEST_NUMBER:
        return None
    return (f"the constraint's {method} term reaches {worst:.3g} for a loss near its bound {bound:g}, "
            f"beyond float32's largest number ({ast.LARGEST_NUMBER:.3g})")


@dataclass(frozen=True, eq=False)
class LetPlan:
    name: str
    value: ObjectiveExpr
    span: ast.Span


@dataclass(frozen=True, eq=False)
class Plan:
    spec: ast.Spec
    source: str
    filename: str | None
    #: The terms the objective reaches, in source order, labelled.
    terms: tuple[TermPlan, ...]
    #: The lets the objective reaches, each after the lets it uses.
    lets: tuple[LetPlan, ...]
    #: None only for a file checked as one to include (``plan_for(..., library=True)``).
    objective: ObjectiveExpr | None
    #: Every input name the terms read, in first-use order.
    inputs: tuple[str, ...]
    params: tuple[ParamPlan, ...] = ()
    constraints: tuple[ConstraintPlan, ...] = ()
    #: The ``inputs:`` declarations of the inputs the terms read (none without a block).
    declared: tuple[ast.InputDecl, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
