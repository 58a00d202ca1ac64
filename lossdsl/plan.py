"""The checked plan: what ``checks`` proves about a spec and ``compiler`` turns into modules.

Immutable and free of tensors, so one plan is cached per spec text and every
compile builds fresh modules from it.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Literal, TypeVar, Union

from . import ast, trees
from .duals import MULTIPLIER_CAP, constraint_overflow  # noqa: F401  (the checks and the runtime import them here)
from .errors import Diagnostic
from .registry import TermDef, TermParams


class PlanNode:
    """Base of the plan's nodes: ``children()``, ``walk()`` and ``find_all()`` over its fields.

    A field marked ``REFERENCE`` points at a node held elsewhere in the plan (a ``TermValue``'s term
    is one of ``Plan.terms``) and is no child: a plan's walk visits each of its nodes once."""

    __slots__ = ()

    def children(self) -> Iterator[PlanNode]:
        """The plan nodes directly below this one, in field order."""
        return trees.children_from(self, _child_fields(type(self)), PlanNode)

    def walk(self) -> Iterator[PlanNode]:
        """This node and every plan node below it, pre-order, left to right; iterative, so any depth."""
        return trees.walk(self)

    def find_all(self, kind: type[_N] | tuple[type, ...]) -> Iterator[_N]:
        """Every node of the walk that is a ``kind`` (``plan.find_all(ParamValue)``), in walk order."""
        return trees.find_all(self, kind)


_N = TypeVar("_N", bound=PlanNode)

#: Marks a dataclass field that refers to a node held elsewhere (not a child).
REFERENCE = {"reference": True}

#: Per plan node class, the fields that hold plan nodes: derived from the field types once per class.
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _child_fields(cls: type) -> tuple[str, ...]:
    found = _CHILD_FIELDS.get(cls)
    if found is None:
        references = frozenset(f.name for f in fields(cls) if f.metadata.get("reference"))
        hints = typing.get_type_hints(cls)
        found = _CHILD_FIELDS[cls] = trees.child_fields(
            {f.name: hints[f.name] for f in fields(cls)}, lambda t: issubclass(t, PlanNode), references)
    return found


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
class TermValue(PlanNode):
    term: TermPlan = field(metadata=REFERENCE)  # one of Plan.terms


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


ObjectiveExpr = Union[TermValue, LetValue, ParamValue, ScheduleValue, Constant, Arithmetic, Negate]


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


for _node in PlanNode.__subclasses__():  # the table of child fields, filled once at import
    _child_fields(_node)
