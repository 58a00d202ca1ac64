"""What the checks of one spec share: the spec, the names it defines, the diagnostics so far.

Every part of the checker (``scope``, ``types``, ``arguments``, ``tensor_exprs``, ``constraints``,
``labels``, ``spec``) is a set of functions of a ``Context``; the context is the only state, and
each function is handed what else it needs (a scope, the params a call is given) explicitly.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from .. import ast
from ..errors import Diagnostic, LossSpecError
from ..folding import FoldError
from ..plan import ConstraintPlan, ObjectiveExpr, TermPlan

#: The checks stop after this many errors (diagnostic E009).
MAX_ERRORS = 100


class Type(enum.Enum):
    """The type of an objective expression."""

    NUMBER = "a number"
    LOSS = "a loss"
    ERROR = "an error"  # already reported; suppresses follow-on diagnostics


@dataclasses.dataclass
class LetState:
    """A let as the checks go: its type and value once checked."""

    statement: ast.Let
    type: Type = Type.ERROR
    value: ObjectiveExpr | None = None
    checked: bool = False


class Context:
    """The state of checking one spec (its includes expanded)."""

    def __init__(self, spec: ast.Spec, source: str, filename: str | None, sources: Mapping[str | None, str],
                 library: bool = False):
        self.library = library
        self.spec = spec
        self.source = source
        self.filename = filename
        self.sources = sources  # each file's text, for excerpts of statements that came from includes
        self.diagnostics: list[Diagnostic] = []
        self.lets: dict[str, LetState] = {}
        self.params: dict[str, ast.Param] = {}
        #: Declared inputs, or None without an ``inputs:`` block (then names are inferred from use).
        self.declared: dict[str, ast.InputDecl] | None = None
        self.used_inputs: set[str] = set()
        self.used_params: set[str] = set()
        self.constraints: list[ConstraintPlan] = []
        self.defined_at: dict[str, int] | None = None  # each let's and param's first line, as a statement index
        self.position: dict[int, int] = {}
        self.errors = 0
        self.unreduced_lets: dict[str, TermPlan | None] = {}  # each checked let's first reduction=none term

    def report(self, code: str, message: str, node: ast.Node | ast.Span | None, hint: str | None = None,
               severity: str = "error") -> None:
        span = node if isinstance(node, ast.Span) or node is None else node.span
        source = self.sources.get(span.filename, self.source) if span is not None else self.source
        self.diagnostics.append(Diagnostic(code, message, span, hint, severity, source=source))  # type: ignore[arg-type]
        self.errors += severity == "error"
        if self.errors >= MAX_ERRORS:  # a hostile spec could hold a million; each hint searches the names
            self.diagnostics.append(Diagnostic("E009", f"too many errors: the checks stop after {MAX_ERRORS}",
                                               hint="fix these and check again"))
            raise LossSpecError(self.diagnostics)

    def fold_error(self, expr: ast.BinOp, error: FoldError) -> None:
        """A problem constant folding found, at the divisor or the whole arithmetic."""
        self.report("E205", error.message, expr.right if error.at_divisor else expr)


def name_span(node: ast.Call | ast.Keyword) -> ast.Span | None:
    """The span of a call's or keyword's name alone."""
    span = node.span
    if span is None:
        return None
    return span.model_copy(update={"end_line": span.line, "end_column": span.column + len(node.name)})


def describe(node: ast.Node) -> str:
    if isinstance(node, ast.Name):
        return f"name '{node.id}'"
    if isinstance(node, ast.Call):
        return f"a call of {node.name}()"
    if isinstance(node, ast.Compare):
        return "a comparison"
    return {"number": "a number", "string": "a string", "list": "a list", "tuple": "a tuple"}.get(
        node.kind, "an expression"
    )


def where(span: ast.Span | None, here: ast.Span | None) -> str:
    """``line 3``, or ``base.loss:3`` when ``span`` is in another file than ``here``."""
    if span is None:
        return "?"
    if here is not None and span.filename != here.filename:
        return f"{span.filename or '<spec>'}:{span.line}"
    return f"line {span.line}"

