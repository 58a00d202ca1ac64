"""The checked plan: what ``checking`` proves about a spec, and ``bind`` and ``build`` turn into modules.

Immutable and free of tensors, so one plan is cached per spec text and every
compile builds fresh modules from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from . import ast, trees
from .dual_methods import MULTIPLIER_CAP, constraint_overflow  # noqa: F401  (the checks and the runtime import them here)
from .errors import Diagnostic
from .declarations import TermDef, TermParams


class PlanNode(trees.DataclassNode):
    """Base of the plan's nodes: ``children()``, ``walk()`` and ``find_all()`` over their fields.
    A ``TermValue``'s term is a reference to one of ``Plan.terms``, not a child: a plan's walk
    visits each of its nodes once."""

    __slots__ = ()


PlanNode.tree = PlanNode


@dataclass(frozen=True)
class ParamPlan(PlanNode):
    """``param NAME = VALUE [in [LOW, HIGH]]``."""

    name: str
    default: float
    low: float | None
    high: float | None
    span: ast.Span | None


@dataclass(frozen=True, eq=False)
class TermPlan(PlanNode):
    """One call of a term in the spec."""

    term: TermDef
    params: TermParams
    span: ast.Span | None
    label: str = ""
    #: Term parameters given a ``param`` by name: (parameter, param name); ``bind`` gives them their values.
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
class TermValue(PlanNode):
    term: TermPlan = field(metadata=trees.REFERENCE)  # one of Plan.terms


@dataclass(frozen=True, eq=False)
class LetValue(PlanNode):
    name: str


@dataclass(frozen=True)
class ScheduleValue(PlanNode):
    """``warmup(1000)``, ``linear(0, 1, 5000)``, ...: a number that moves with the step counter."""

    kind: str
    params: object  # the schedule's validated parameter model


@dataclass(frozen=True)
class ParamValue(PlanNode):
    """A ``param``: a number fixed when the module is built (its default, or an override)."""

    name: str


#: The label of the whole loss in ``LossModule.last_terms``.
TOTAL_LABEL = "total"


@dataclass(frozen=True)
class Constant(PlanNode):
    value: float


@dataclass(frozen=True, eq=False)
class Arithmetic(PlanNode):
    op: Literal["+", "-", "*", "/"]
    left: ObjectiveExpr
    right: ObjectiveExpr
    #: Where it is written: params get their values only when the module is built.
    span: ast.Span | None = None


@dataclass(frozen=True, eq=False)
class Negate(PlanNode):
    operand: ObjectiveExpr


@dataclass(frozen=True, eq=False)
class Weighted(PlanNode):
    """``uncertainty(L1, L2)``, ``dwa(L1, L2, T=2)``: losses combined with weights the module learns
    or computes as it trains (``lossdsl.weightings``); a loss."""

    kind: str
    operands: tuple[ObjectiveExpr, ...]
    params: object  # the weighting's validated parameter model
    span: ast.Span | None = None

    @property
    def where(self) -> str:
        """``uncertainty() at specs/a.loss:3:8``; just ``uncertainty()`` for a spec built in Python."""
        if self.span is None:
            return f"{self.kind}()"
        return f"{self.kind}() at {self.span.filename or '<spec>'}:{self.span.line}:{self.span.column}"


ObjectiveExpr = Union[TermValue, LetValue, ParamValue, ScheduleValue, Constant, Arithmetic, Negate, Weighted]


@dataclass(frozen=True, eq=False)
class ConstraintPlan(PlanNode):
    """``subject to VALUE OP BOUND [as NAME] [using METHOD]``: ``VALUE`` a loss, ``BOUND`` a number."""

    name: str
    value: ObjectiveExpr
    op: Literal["<=", ">=", "=="]
    bound: ObjectiveExpr
    method: Literal["adaptive", "lagrangian", "penalty", "augmented"]
    rate: float  # the multiplier's step (adaptive, lagrangian), the weight (penalty) or rho (augmented)
    span: ast.Span | None


@dataclass(frozen=True, eq=False)
class LetPlan(PlanNode):
    name: str
    value: ObjectiveExpr
    span: ast.Span


@dataclass(frozen=True, eq=False)
class Plan(PlanNode):
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


trees.fill_table(PlanNode)  # the table of child fields, derived once at import
