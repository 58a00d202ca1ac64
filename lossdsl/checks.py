"""Static checks: names, terms, arguments and types. AST in, ``Plan`` out.

Every problem in a spec becomes a ``Diagnostic``; all of them are collected
before ``LossSpecError`` is raised. Error codes are stable and documented in
``docs/language.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from . import ast
from .checking.folding import INVALID as _INVALID, FoldError, fold, literal as _literal, literal_number as _number, number_value
from .duals import DEFAULT_METHOD, METHODS
from .errors import Diagnostic, LossSpecError, did_you_mean
from .formatting import format_expr
from .parsing import MAX_NESTING
from .plan import (
    MULTIPLIER_CAP,
    Arithmetic,
    ConstraintPlan,
    Constant,
    LetPlan,
    LetValue,
    Negate,
    ObjectiveExpr,
    ParamPlan,
    ParamValue,
    Plan,
    ScheduleValue,
    TOTAL_LABEL,
    TermPlan,
    TermValue,
    constraint_overflow,
)
from .registry import CONDITION, INPUT, INPUT_KINDS, MAX_GROUP_STATE, MAX_GROUPS, REGISTRY, TENSOR, InnerLoss, TermDef
from .schedules import SCHEDULES
from .tensor_expr import FUNCTIONS, names_in

#: ``using METHOD(ARG)``: the argument's name and default.
_METHODS = {name: (argument, default) for name, (_, argument, default) in METHODS.items()}
_BOOLEANS = {"true": True, "false": False}
#: An input's name, as the grammar's NAME token spells it (grammar/loss.lark).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


class Type(enum.Enum):
    NUMBER = "a number"
    LOSS = "a loss"
    ERROR = "an error"  # already reported; suppresses follow-on diagnostics


#: The checks stop after this many errors (diagnostic E009).
MAX_ERRORS = 100


def check(spec: ast.Spec, source: str = "", filename: str | None = None, *,
          sources: Mapping[str | None, str] | None = None, library: bool = False) -> Plan:
    """The check pass: a spec (its includes already expanded) to its ``Plan``; every problem a
    ``LossSpecError``. Pure: no I/O. ``source`` is the text of ``filename``, ``sources`` each
    included file's, for the diagnostics' excerpts. ``library=True`` accepts a file without an
    objective (one meant to be included), with a warning; its plan has no objective."""
    texts = dict(sources or {})
    texts.setdefault(filename, source)
    return _Checker(spec, source, filename, texts, library).run()


def check_nesting(spec: ast.Spec) -> None:
    """E004 for an expression nested deeper than ``MAX_NESTING``, as the parser reports it: a Spec
    built in Python has not been through the parser, and every pass after this one recurses."""
    _check_nesting(spec)


def _check_nesting(spec: ast.Spec) -> None:
    """E004 for an expression nested deeper than ``MAX_NESTING``, as the parser reports it: a Spec
    built in Python has not been through the parser, and every pass after this one recurses."""
    stack: list[tuple[Any, int]] = [(statement, 0) for statement in spec.statements]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (tuple, list)):
            stack += [(item, depth) for item in node]
            continue
        if not isinstance(node, ast.Node):
            continue
        if depth > MAX_NESTING:  # (statements are depth 0: an expression of MAX_NESTING levels passes)
            raise LossSpecError([Diagnostic("E004", f"expression nested too deeply (the limit is {MAX_NESTING} levels)",
                                            node.span, hint="split it with 'let' statements")])
        stack += [(getattr(node, name), depth + 1) for name in type(node).model_fields if name != "span"]


class _Scope:
    """The names defined above a statement (a statement index), without copying them into a set."""

    def __init__(self, defined_at: dict[str, int], position: int):
        self.defined_at, self.position = defined_at, position

    def __contains__(self, name: object) -> bool:
        index = self.defined_at.get(name)  # type: ignore[call-overload]
        return index is not None and index < self.position

    def __iter__(self) -> Iterator[str]:  # for did-you-mean hints only
        return (name for name, index in self.defined_at.items() if index < self.position)


@dataclasses.dataclass
class _Let:
    statement: ast.Let
    type: Type = Type.ERROR
    value: ObjectiveExpr | None = None
    checked: bool = False


class _Checker:
    def __init__(
        self, spec: ast.Spec, source: str, filename: str | None, sources: dict[str | None, str], library: bool = False
    ):
        self.library = library
        self.spec = spec
        self.source = source
        self.filename = filename
        self.sources = sources  # each file's text, for excerpts of statements that came from includes
        self.diagnostics: list[Diagnostic] = []
        self.lets: dict[str, _Let] = {}
        self.params: dict[str, ast.Param] = {}
        #: Declared inputs, or None without an ``inputs:`` block (then names are inferred from use).
        self.declared: dict[str, ast.InputDecl] | None = None
        self.used_inputs: set[str] = set()
        self.used_params: set[str] = set()
        self.constraints: list[ConstraintPlan] = []
        self._call_param_args: list[tuple[str, str]] = []
        self._defined_at: dict[str, int] | None = None  # each let's and param's first line, as a statement index
        self._position: dict[int, int] = {}
        self._errors = 0
        self._unreduced_lets: dict[str, TermPlan | None] = {}  # each checked let's first reduction=none term

    # -- reporting --
    def report(self, code: str, message: str, node: ast.Node | ast.Span | None, hint: str | None = None,
               severity: str = "error") -> None:
        span = node if isinstance(node, ast.Span) or node is None else node.span
        source = self.sources.get(span.filename, self.source) if span is not None else self.source
        self.diagnostics.append(Diagnostic(code, message, span, hint, severity, source=source))  # type: ignore[arg-type]
        self._errors += severity == "error"
        if self._errors >= MAX_ERRORS:  # a hostile spec could hold a million; each hint searches the names
            self.diagnostics.append(Diagnostic("E009", f"too many errors: the checks stop after {MAX_ERRORS}",
                                               hint="fix these and check again"))
            raise LossSpecError(self.diagnostics)

    # -- statements --
    def run(self) -> Plan:
        objectives: list[ast.LossStmt] = []
        subject_to: list[ast.SubjectTo] = []
        for statement in self.spec.statements:
            if isinstance(statement, (ast.Let, ast.Param)):
                first = self.lets[statement.name].statement if statement.name in self.lets else self.params.get(
                    statement.name
                )
                if first is not None:
                    self.report("E102", f"'{statement.name}' is defined twice", statement,
                                hint=f"it is first defined at {self._where(first.span, statement.span)}")
                    continue
                if isinstance(statement, ast.Let):
                    if statement.name == TOTAL_LABEL:
                        self.report("E102", f"'{TOTAL_LABEL}' names the whole loss in last_terms", statement,
                                    hint="choose another name for the let")
                    self.lets[statement.name] = _Let(statement)
                else:
                    self._check_param(statement)
                    self.params[statement.name] = statement  # even if invalid: its uses are not inputs
            elif isinstance(statement, ast.LossStmt):
                objectives.append(statement)
            elif isinstance(statement, ast.Inputs):
                self._declare(statement)
            elif isinstance(statement, ast.SubjectTo):
                subject_to.append(statement)
        for let in self.lets.values():
            self._check_let(let)
        objective: ObjectiveExpr | None = None
        if not objectives and self.library and self.spec.statements:
            self.report("W004", "no objective: checked as a file to include", self.spec.span,
                        hint="a spec to compile needs 'loss = ...'", severity="warning")
        elif not objectives:
            self.report("E103", "the spec has no objective", self.spec.span,
                        hint="add a line 'loss = ...', or write the objective as a bare expression")
        else:
            for extra in objectives[1:]:
                self.report("E103", "the spec has more than one objective", extra,
                            hint=f"the first is at line {objectives[0].span.line}" if objectives[0].span else None)
            kind, objective = self.objective(objectives[0].value, defined=self._lets_before(objectives[0]))
            if kind is Type.NUMBER:
                self.report("E301", "the objective is a constant number, not a loss", objectives[0].value,
                            hint="build it from terms such as ce() or mse()")
        self.constraints = self._name_constraints(subject_to)
        if any(d.severity == "error" for d in self.diagnostics):
            raise LossSpecError(self.diagnostics)
        return self._plan(objective)

    def _unreduced_term(self, expr: ObjectiveExpr | None) -> TermPlan | None:
        """The first term with ``reduction=none`` in an objective expression, lets followed."""
        pending = [expr]
        while pending:
            node = pending.pop()
            if isinstance(node, TermValue):
                if getattr(node.term.params, "reduction", None) == "none":
                    return node.term
            elif isinstance(node, LetValue):
                if node.name in self._unreduced_lets:  # each let is searched once, when it is checked:
                    found = self._unreduced_lets[node.name]  # a chain of lets would be quadratic, or
                    if found is not None:  # exponential when each uses the one before twice
                        return found
                    continue
                let = self.lets.get(node.name)
                pending.append(let.value if let is not None else None)
            elif isinstance(node, Arithmetic):
                pending += [node.right, node.left]
            elif isinstance(node, Negate):
                pending.append(node.operand)
        return None

    def _constraint(self, statement: ast.SubjectTo) -> ConstraintPlan | None:
        """The checked constraint; unnamed, its name is "" until ``_name_constraints`` gives one."""
        compare = statement.constraint
        usage = "a constraint compares a loss with a number: subject to fairness(eo_gap, group=sex) <= 0.02"
        if not isinstance(compare, ast.Compare) or len(compare.ops) != 1 or compare.ops[0] in ("<", ">"):
            if isinstance(compare, ast.Logic) and compare.op == "and":
                usage = "write one 'subject to' line per constraint"
            self.report("E303", "a constraint is one comparison with <=, >= or ==", compare, hint=usage)
            return None
        defined = self._lets_before(statement)
        kind, value = self.objective(compare.operands[0], defined)
        bound_kind, bound = self.objective(compare.operands[1], defined)
        if Type.ERROR in (kind, bound_kind):
            return None
        if kind is not Type.LOSS or bound_kind is not Type.NUMBER or isinstance(bound, ScheduleValue):
            self.report("E302", "a constraint bounds a loss by a number", compare, hint=usage)
            return None
        unreduced = self._unreduced_term(value)
        if unreduced is not None:
            self.report("E302", f"a constraint bounds one number, but {unreduced.term.name}() has reduction=none "
                        "(a loss per sample)", unreduced.span, hint="bound its mean: leave out reduction=none")
            return None
        method, rate = DEFAULT_METHOD, _METHODS[DEFAULT_METHOD][1]
        if statement.method is not None:
            chosen = statement.method
            name = chosen.id if isinstance(chosen, ast.Name) else chosen.name if isinstance(chosen, ast.Call) else ""
            if name not in _METHODS:
                self.report("E201", f"unknown constraint method '{name or format_expr(chosen)}'", chosen,
                            hint=did_you_mean(name, _METHODS) or ", ".join(
                                f"{method}({argument}={default:g})" for method, (argument, default) in _METHODS.items()))
                return None
            method, rate = name, _METHODS[name][1]
            if isinstance(chosen, ast.Call):
                arguments = [*chosen.args, *(k.value for k in chosen.keywords)]
                wrong = [k.name for k in chosen.keywords if k.name != _METHODS[name][0]]
                number = _number(arguments[0]) if len(arguments) == 1 else None
                if wrong or len(arguments) > 1 or (arguments and (number is None or number <= 0)):
                    self.report("E204", f"{name}() takes one positive number, {_METHODS[name][0]}", chosen)
                    return None
                if name == "augmented" and arguments and number < 1 / ast.LARGEST_NUMBER:  # it divides lam by rho
                    self.report("E205", f"{name}()'s {_METHODS[name][0]} is too small for float32: {format_expr(arguments[0])}",
                                chosen)
                    return None
                rate = number if arguments else rate
        literal = _literal(bound)
        overflow = None if literal is None else constraint_overflow(method, rate, literal)
        if overflow is not None:  # a bound's params are known when the module is built: checked there
            self.report("E205", overflow, compare.operands[1],
                        hint=f"bound a loss of the data's scale; a learned multiplier saturates at {MULTIPLIER_CAP:g}")
            return None
        return ConstraintPlan(statement.name or "", value, compare.ops[0], bound,  # type: ignore[arg-type]
                              method, float(rate), statement.span)

    def _name_constraints(self, statements: list[ast.SubjectTo]) -> list[ConstraintPlan]:
        """The checked constraints, each with its label in last_terms: ``as NAME``, which must not be
        a let's name, another constraint's or ``total`` (E102), else ``constraint_<i>`` (with a
        trailing ``_`` while that is taken)."""
        named: dict[str, ast.SubjectTo] = {}
        for statement in statements:
            name = statement.name
            if name == TOTAL_LABEL:
                self.report("E102", f"'{TOTAL_LABEL}' names the whole loss in last_terms", statement,
                            hint="choose another name for the constraint")
            elif name is not None and (name in self.lets or name in named):
                first = self.lets[name].statement if name in self.lets else named[name]
                self.report("E102", f"'{name}' is defined twice", statement,
                            hint=f"it is first defined at {self._where(first.span, statement.span)}")
            if name is not None:
                named.setdefault(name, statement)
        taken = {*self.lets, *named, TOTAL_LABEL}
        constraints = []
        for index, statement in enumerate(statements, 1):
            plan = self._constraint(statement)
            if plan is None:
                continue
            if statement.name is None:
                name = f"constraint_{index}"
                while name in taken:
                    name += "_"
                taken.add(name)
                plan = dataclasses.replace(plan, name=name)
            constraints.append(plan)
        return constraints

    @staticmethod
    def _where(span: ast.Span | None, here: ast.Span | None) -> str:
        """``line 3``, or ``base.loss:3`` when ``span`` is in another file than ``here``."""
        if span is None:
            return "?"
        if here is not None and span.filename != here.filename:
            return f"{span.filename or '<spec>'}:{span.line}"
        return f"line {span.line}"

    def _lets_before(self, statement: ast.Node) -> _Scope:
        """The lets and params defined above ``statement``: a name can be used only below its definition."""
        if self._defined_at is None:  # built once: a set per statement would be quadratic in lets
            self._position = {}
            self._defined_at = {}
            for index, other in enumerate(self.spec.statements):
                self._position.setdefault(id(other), index)
                if isinstance(other, (ast.Let, ast.Param)):
                    self._defined_at.setdefault(other.name, index)
        return _Scope(self._defined_at, self._position.get(id(statement), len(self.spec.statements)))

    def _declare(self, block: ast.Inputs) -> None:
        if self.declared is None:
            self.declared = {}
        for decl in block.decls:
            if decl.name in self.declared:
                first = self.declared[decl.name].span
                self.report("E102", f"input '{decl.name}' is declared twice", decl,
                            hint=f"it is first declared at line {first.line}" if first else None)
                continue
            if decl.type not in INPUT_KINDS:
                self.report("E106", f"unknown input kind '{decl.type}'", decl,
                            hint=did_you_mean(decl.type, INPUT_KINDS) or f"the kinds are {', '.join(INPUT_KINDS)}")
            elif decl.groups is not None and decl.type != "group":
                self.report("E204", f"'of {decl.groups}' counts groups: it applies to group inputs, not {decl.type}",
                            decl)
            elif decl.groups is not None and not 1 <= decl.groups <= MAX_GROUPS:
                self.report("E205", f"'of {decl.groups}': a group input has 1 to {MAX_GROUPS} groups", decl)
            self.declared[decl.name] = decl

    def _check_input(self, name: str, node: ast.Node | ast.Span | None, reader: str | None = None,
                     kinds: tuple[str, ...] | None = None) -> bool:
        """With an ``inputs:`` block, ``name`` must be declared, and of a kind the reader accepts."""
        self.used_inputs.add(name)
        if self.declared is None:
            return True
        decl = self.declared.get(name)
        if decl is None:
            hint = did_you_mean(name, self.declared) or "declare it in the inputs: block"
            what = f"{reader} reads input '{name}'" if reader else f"input '{name}'"
            self.report("E104", f"{what}, which is not declared", node, hint=hint)
            return False
        if kinds and decl.type not in kinds:
            line = decl.span.line if decl.span else "?"
            self.report("E204", f"{reader} takes {' or '.join(kinds)}, but '{name}' is declared {decl.type} "
                                f"(line {line})", node)
            return False
        return True

    def _check_param(self, param: ast.Param) -> None:
        if param.low is None or param.high is None:
            return
        if param.low > param.high:
            self.report("E205", f"the range of '{param.name}' is empty: {param.low} > {param.high}", param)
        elif not param.low <= param.value <= param.high:
            self.report("E205", f"'{param.name}' = {param.value} lies outside its range [{param.low}, {param.high}]",
                        param)

    def _check_let(self, let: _Let) -> None:
        if let.checked:
            return
        let.checked = True
        let.type, let.value = self.objective(let.statement.value, defined=self._lets_before(let.statement))
        self._unreduced_lets[let.statement.name] = self._unreduced_term(let.value)
        if let.type is Type.NUMBER:
            self.report("E301", f"'{let.statement.name}' is a constant number, not a loss", let.statement.value,
                        hint="a let names a sub-objective built from terms")
            let.type = Type.ERROR

    # -- the objective: arithmetic over losses --
    def objective(self, expr: ast.Node, defined: _Scope) -> tuple[Type, ObjectiveExpr | None]:
        if isinstance(expr, ast.Number):
            return Type.NUMBER, Constant(float(expr.value))
        if isinstance(expr, ast.Call) and expr.name in SCHEDULES:
            return self._schedule(expr)
        if isinstance(expr, ast.Call):
            term = self.call(expr)
            return (Type.LOSS, TermValue(term)) if term else (Type.ERROR, None)
        if isinstance(expr, ast.Name):
            return self._objective_name(expr, defined)
        if isinstance(expr, ast.Neg):
            kind, operand = self.objective(expr.operand, defined)
            if isinstance(operand, Constant):
                return kind, Constant(-operand.value)
            return kind, Negate(operand) if operand else None
        if isinstance(expr, ast.BinOp):
            return self._objective_binop(expr, defined)
        if isinstance(expr, ast.Compare):
            self.report("E304", "a comparison is not a loss", expr,
                        hint=f"penalise its violation: soft_bound({format_expr(expr)})")
            return Type.ERROR, None
        if isinstance(expr, (ast.Logic, ast.Not)):
            self.report("E304", f"'{getattr(expr, 'op', 'not')}' combines comparisons, not losses", expr,
                        hint="add losses with +; combine comparisons inside soft_bound(y <= 1 or z <= 1)")
            return Type.ERROR, None
        what = {"string": "a string", "list": "a list", "tuple": "a tuple"}[expr.kind]
        self.report("E301", f"{what} is not a loss", expr, hint="a loss is built from terms such as ce() or mse()")
        return Type.ERROR, None

    def _objective_name(self, expr: ast.Name, defined: _Scope) -> tuple[Type, ObjectiveExpr | None]:
        name = expr.id
        if name in defined and name in self.params:
            self.used_params.add(name)
            return Type.NUMBER, ParamValue(name)
        if name in defined:
            let = self.lets[name]
            self._check_let(let)
            return let.type, LetValue(name)
        if name in self.lets or name in self.params:
            statement = self.lets[name].statement if name in self.lets else self.params[name]
            keyword = "let" if name in self.lets else "param"
            line = statement.span.line if statement.span else "?"
            self.report("E104", f"'{name}' is used before its definition", expr,
                        hint=f"move '{keyword} {name}' (line {line}) above this line")
            return Type.ERROR, None
        suggestion = did_you_mean(name, defined)
        if suggestion or name in REGISTRY:
            hint = suggestion or f"'{name}' is a term: call it, {name}()"
            self.report("E104", f"undefined name '{name}'", expr, hint=hint)
            return Type.ERROR, None
        if self.declared is not None and name not in self.declared:
            known = [*defined, *self.declared]
            self.report("E104", f"undefined name '{name}'", expr,
                        hint=did_you_mean(name, known) or "declare inputs in the inputs: block")
            return Type.ERROR, None
        self.report("E301", f"'{name}' is an input tensor, not a loss", expr,
                    hint=f"reduce it with a term, e.g. mse(pred={name}) or soft_bound({name} <= 1)")
        return Type.ERROR, None

    def _objective_binop(self, expr: ast.BinOp, defined: _Scope) -> tuple[Type, ObjectiveExpr | None]:
        left_type, left = self.objective(expr.left, defined)
        right_type, right = self.objective(expr.right, defined)
        if Type.ERROR in (left_type, right_type):
            return Type.ERROR, None
        assert left is not None and right is not None
        value = Arithmetic(expr.op, left, right, expr.span)
        if left_type is Type.NUMBER and right_type is Type.NUMBER:
            if not (isinstance(left, Constant) and isinstance(right, Constant)):
                return Type.NUMBER, value  # arithmetic over params, computed when the module is built
            folded = self._fold(expr, left.value, right.value)
            return (Type.NUMBER, Constant(folded)) if folded is not _INVALID else (Type.ERROR, None)
        op = expr.op
        if op in "+-":
            unreduced = self._unreduced_term(left) or self._unreduced_term(right) if left_type is right_type else None
            if unreduced is not None:  # [N] and [N, C, H, W] would broadcast, or worse, silently
                self.report("E302", f"cannot {'add' if op == '+' else 'subtract'} losses when one is per sample: "
                            f"{unreduced.term.name}() has reduction=none", expr,
                            hint="loss_fn.per_sample(...) gives each sample's sum of the terms; or reduce the term")
                return Type.ERROR, None
            if left_type is right_type:
                return Type.LOSS, value
            self.report("E302", f"cannot {'add' if op == '+' else 'subtract'} a number and a loss", expr,
                        hint="a constant does not change the gradients; weight the loss instead: 0.5 * ce()")
            return Type.ERROR, None
        if op == "*":
            if Type.NUMBER in (left_type, right_type):
                return Type.LOSS, value
            self.report("E302", "cannot multiply two losses", expr,
                        hint="weight a loss by a number, e.g. 0.1 * fairness(...), and add losses with +")
            return Type.ERROR, None
        if right_type is Type.NUMBER:  # Loss / Number
            if isinstance(right, Constant) and right.value == 0:
                self.report("E205", "division by zero", expr.right)
                return Type.ERROR, None
            if isinstance(right, Constant) and abs(right.value) < 1 / ast.LARGEST_NUMBER:
                self.report("E205", f"dividing by {format_expr(expr.right)} weighs the loss beyond float32's range", expr.right)
                return Type.ERROR, None
            return Type.LOSS, value
        self.report("E302", "cannot divide by a loss", expr, hint="divide a loss by a number, e.g. ce() / 2")
        return Type.ERROR, None

    def _fold(self, expr: ast.BinOp, left: float, right: float) -> Any:
        """The value of constant arithmetic, or ``_INVALID`` after reporting a division by zero or an overflow."""
        try:
            return fold(expr.op, left, right)
        except FoldError as error:
            self._fold_error(expr, error)
            return _INVALID

    def _fold_error(self, expr: ast.BinOp, error: FoldError) -> None:
        self.report("E205", error.message, expr.right if error.at_divisor else expr)

    def _constant(self, node: ast.Node) -> Any:
        """The value of pure number arithmetic; None for anything else; ``_INVALID`` once reported."""
        return number_value(node, self._fold_error)

    def _schedule(self, call: ast.Call) -> tuple[Type, ObjectiveExpr | None]:
        model, positional, _ = SCHEDULES[call.name]
        if len(call.args) > len(positional):
            self.report("E207", f"{call.name}() takes {len(positional)} positional arguments: "
                                f"{call.name}({', '.join(positional)})", call)
            return Type.ERROR, None
        values: dict[str, Any] = {}
        for name, arg in [*zip(positional, call.args), *((k.name, k.value) for k in call.keywords)]:
            number = _number(arg)
            if name not in model.model_fields:
                self.report("E203", f"unknown argument '{name}' for {call.name}()", arg,
                            hint=did_you_mean(name, model.model_fields) or f"{call.name}({', '.join(positional)})")
                return Type.ERROR, None
            if number is None:
                self.report("E204", f"'{name}' of {call.name}() takes a number; got {_describe(arg)}", arg)
                return Type.ERROR, None
            values[name] = number
        try:
            params = model(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            code = "E206" if error["type"] == "missing" else "E205" if error["type"] in _RANGE_ERRORS else "E204"
            field = error["loc"][0] if error["loc"] else "?"
            problem = "is missing" if code == "E206" else error["msg"].replace("Input should be", "must be")
            self.report(code, f"'{field}' of {call.name}() {problem}", call,
                        hint=f"{call.name}({', '.join(positional)})")
            return Type.ERROR, None
        return Type.NUMBER, ScheduleValue(call.name, params)

    # -- term calls --
    def call(self, call: ast.Call) -> TermPlan | None:
        term = REGISTRY.get(call.name)
        if term is None:
            self.report("E202", f"unknown term '{call.name}'", _name_span(call),
                        hint=did_you_mean(call.name, REGISTRY) or "`lossdsl terms` lists the terms")
            return None
        fields = term.params.model_fields
        given: dict[str, ast.Node] = {}
        ok = True
        self._call_param_args = []
        positional = term.params.positional
        for index, arg in enumerate(call.args):
            if index >= len(positional):
                count = len(positional)
                self.report("E207", f"{call.name}() takes {count} positional argument{'s' * (count != 1)}", arg,
                            hint="name the argument, e.g. " + _example_keyword(term))
                ok = False
                continue
            given[positional[index]] = arg
        for keyword in call.keywords:
            if keyword.name == "reduction" and _names_none(keyword.value) and not term.module.has_sample_losses():
                self._no_sample_losses(term, keyword)
                ok = False
            elif keyword.name not in fields:
                self.report("E203", f"unknown argument '{keyword.name}' for {call.name}()", _name_span(keyword),
                            hint=did_you_mean(keyword.name, fields) or f"{call.name}() takes {', '.join(fields)}")
                ok = False
            elif keyword.name in given:
                self.report("E207", f"argument '{keyword.name}' of {call.name}() is given twice", keyword)
                ok = False
            else:
                given[keyword.name] = keyword.value
        values: dict[str, Any] = {}
        for name, node in given.items():
            value = self.argument(term, name, node)
            if value is _INVALID:
                ok = False
            else:
                values[name] = value
        group = values.get("group")
        if "groups" in fields and "groups" not in values and isinstance(group, str) and self.declared:
            decl = self.declared.get(group)
            if decl is not None and decl.groups and decl.groups <= MAX_GROUPS:  # (a larger K is reported there)
                values["groups"] = decl.groups  # `group[N] of K` sizes the group slots
        try:
            params = term.params(**values)
        except ValidationError as exc:
            # After a bad argument, a "missing" report is most likely that same argument again.
            self._validation_errors(term, call, given, values, exc, report_missing=ok)
            return None
        if not ok:
            return None
        beyond = params.beyond_float32()
        if beyond is not None:
            name, problem = beyond
            self.report("E205", f"{call.name}(): {problem}", given.get(name) or call)
            return None
        for role in params.input_roles():
            value = getattr(params, role)
            reader = f"{call.name}()" if role in given else f"{call.name}() (by default)"
            for name in value if isinstance(value, tuple) else (value,):
                if not self._check_input(name, given.get(role) or _name_span(call), reader, term.params.kinds(role)):
                    return None
        return TermPlan(term=term, params=params, span=call.span, param_args=tuple(self._call_param_args))  # type: ignore[arg-type]

    def argument(self, term: TermDef, name: str, node: ast.Node) -> Any:
        """The Python value of one argument, before the parameter model validates it."""
        metadata = term.params.model_fields[name].metadata
        if CONDITION in metadata:
            if not isinstance(node, (ast.Compare, ast.Logic, ast.Not)):
                self.report("E204", f"{term.name}() needs a comparison, such as y <= 100", node)
                return _INVALID
            return node if self.condition(node) else _INVALID
        if TENSOR in metadata:
            if not self._tensor_expr(node):
                return _INVALID
            if not _reads_input(node):
                self.report("E303", f"{term.name}() of a constant is a constant, not a loss", node,
                            hint=f"reduce an input, e.g. {term.name}(abs(pred - target))")
                return _INVALID
            return node
        if isinstance(node, ast.Call) and node.name in term.params.inner_forms(name):
            return self._inner_loss(term, node)
        if INPUT in metadata:
            if isinstance(node, ast.Tuple) and term.params.accepts(name, tuple):
                names = [self.argument(term, name, item) for item in node.items]
                return _INVALID if _INVALID in names else tuple(names)
            if isinstance(node, (ast.Name, ast.String)):
                input_name = node.id if isinstance(node, ast.Name) else node.value
                if not _is_input_name(input_name):
                    # The module reads inputs by these names: "" or "a b" could never be passed (or, for
                    # "", be told apart from no input at all), so the spec could not be called.
                    got = "an empty string" if not input_name else f'the string "{input_name}"'
                    self.report("E204", f"'{name}' of {term.name}() names an input by an identifier; got {got}",
                                node, hint=_input_name_hint(term, name, input_name))
                    return _INVALID
                if input_name in self.lets:
                    self.report("E204", f"'{input_name}' is a loss defined with let, not an input tensor", node,
                                hint=f"'{name}' of {term.name}() names an input")
                    return _INVALID
                return input_name
            self.report("E204", f"'{name}' of {term.name}() names an input; got {_describe(node)}", node)
            return _INVALID
        if isinstance(node, ast.Name):
            if node.id in _BOOLEANS and term.params.accepts_bool(name):
                return _BOOLEANS[node.id]
            if node.id in self.params and node.id not in term.params.options(name):
                self.used_params.add(node.id)
                self._call_param_args.append((name, node.id))
                return self.params[node.id].value  # validated now; an override is validated at compile time
            if term.params.options(name):
                return node.id
            self.report("E204", f"'{name}' of {term.name}() takes {_expected(term, name)}; got name '{node.id}'", node)
            return _INVALID
        if isinstance(node, ast.String):
            return node.value
        number = _number(node)
        if number is not None:
            return number
        if isinstance(node, ast.List):
            items = [_number(item) for item in node.items]
            if all(item is not None for item in items):
                return tuple(items)
            self.report("E204", f"'{name}' of {term.name}() takes a list of numbers", node)
            return _INVALID
        if isinstance(node, ast.Call) and term.params.options(name) and not node.keywords:
            numbers = [_number(arg) for arg in node.args]
            if all(n is not None for n in numbers):  # an option with arguments: penalty=softplus(10)
                return (node.name, *numbers)
            if node.name in term.params.options(name):
                self.report("E204", f"the arguments of {node.name}() in '{name}' of {term.name}() are numbers",
                            node, hint=f"write the number, as in {node.name}(0.1)")
                return _INVALID
        self.report("E204", f"'{name}' of {term.name}() takes {_expected(term, name)}; got {_describe(node)}", node)
        return _INVALID

    def _no_sample_losses(self, term: TermDef, keyword: ast.Keyword) -> None:
        """``reduction=none`` on a batch-level term (fairness, dice, l2, ...)."""
        have = ", ".join(name for name, t in REGISTRY.items() if t.module.has_sample_losses() and "reduction" in t.params.model_fields)
        self.report("E204", f"{term.name}() has no per-sample form: it is computed over the whole batch, so it "
                    "takes no reduction=none", keyword, hint=f"reduction=none is for terms that average over samples: {have}")

    def _inner_loss(self, term: TermDef, call: ast.Call) -> Any:
        """``group_loss(mse)``, ``group_loss_gap(huber(delta=2))``: a per-sample loss term inside an argument."""
        usage = f"{call.name}(mse) or {call.name}(huber(delta=2))"
        if call.keywords or len(call.args) != 1:
            self.report("E207", f"{call.name}() takes one loss term: {usage}", call)
            return _INVALID
        inner = call.args[0]
        if isinstance(inner, ast.Name):
            inner = ast.Call(name=inner.id, span=inner.span)
        if not isinstance(inner, ast.Call):
            self.report("E204", f"{call.name}() takes a loss term, as in {usage}; got {_describe(inner)}", inner)
            return _INVALID
        inner_term = REGISTRY.get(inner.name)
        if inner_term is not None and not inner_term.module.per_sample:
            per_sample = ", ".join(name for name, t in REGISTRY.items() if t.module.per_sample)
            self.report("E204", f"{call.name}() needs a loss with one value per sample, which {inner.name}() has not",
                        _name_span(inner), hint=f"these have one: {per_sample}")
            return _INVALID
        for keyword in inner.keywords:
            if keyword.name in ("reduction", "sample_weight"):
                self.report("E204", f"{call.name}() averages {inner.name}() per group itself: leave out "
                            f"'{keyword.name}'", keyword, hint=f"give sample_weight= to {term.name}()")
                return _INVALID
        outer_param_args = self._call_param_args
        plan = self.call(inner)
        inner_param_args, self._call_param_args = self._call_param_args, outer_param_args
        if plan is None:
            return _INVALID
        if inner_param_args:
            self.report("E204", f"a param cannot set an argument of the term inside {call.name}() yet", inner,
                        hint="write the number")
            return _INVALID
        return InnerLoss(call.name, plan, format_expr(call))

    def _validation_errors(self, term: TermDef, call: ast.Call, given: dict[str, ast.Node],
                           values: dict[str, Any], exc: ValidationError, report_missing: bool) -> None:
        by_field: dict[str, list[dict[str, Any]]] = {}
        for error in exc.errors():
            by_field.setdefault(str(error["loc"][0]) if error["loc"] else "", []).append(error)
        for name, errors in by_field.items():
            if not name:  # a rule across parameters (a model validator)
                message = errors[0]["msg"].removeprefix("Value error, ")
                self.report("E204", f"{call.name}(): {message}", call)
                continue
            node = given.get(name)
            where: ast.Node | ast.Span | None = node if node is not None else _name_span(call)
            value = values.get(name)
            types = {e["type"] for e in errors}
            options = tuple(dict.fromkeys(term.params.options(name))) if name in term.params.model_fields else ()
            if "missing" in types:
                if not report_missing:
                    continue
                description = term.params.model_fields[name].description
                self.report("E206", f"{call.name}() is missing its argument '{name}'", where,
                            hint=f"{name}: {description}" if description else None)
            elif isinstance(value, str) and value in term.params.inner_forms(name):
                self.report("E204", f"{value} takes the loss it averages per group, as in {value}(mse)", where)
            elif isinstance(value, str) and options:
                noun = term.noun if name in term.params.positional else "value"
                self.report("E201", f"unknown {noun} '{value}' for {call.name}()", where,
                            hint=did_you_mean(value, options) or f"expected one of: {', '.join(options)}")
            elif "value_error" in types:  # a parameter's own validator explains the problem
                error = next(e for e in errors if e["type"] == "value_error")
                message = error["msg"].removeprefix("Value error, ")
                self.report("E204", f"'{name}' of {call.name}() got {_show(value)}: {message}", where)
            elif types & _RANGE_ERRORS:
                error = next(e for e in errors if e["type"] in _RANGE_ERRORS)
                message = error["msg"].replace("Input should be", "must be")
                self.report("E205", f"'{name}' of {call.name}() {message}, got {_show(value)}", where)
            else:
                self.report("E204", f"'{name}' of {call.name}() takes {_expected(term, name)}; got {_show(value)}",
                            where)

    # -- comparisons over tensors (soft_bound) --
    def condition(self, compare: ast.Node) -> bool:
        """A comparison over tensors, or comparisons combined with and / or / not / implies."""
        if isinstance(compare, ast.Logic):
            return self.condition(compare.left) & self.condition(compare.right)
        if isinstance(compare, ast.Not):
            return self.condition(compare.operand)
        if not isinstance(compare, ast.Compare):
            self.report("E204", f"'and', 'or', 'not' and 'implies' combine comparisons; got {_describe(compare)}",
                        compare, hint="compare it: soft_bound(y <= 1 or z <= 1)")
            return False
        ok = all(self._tensor_expr(operand) for operand in compare.operands)
        if not ok:
            return False
        for index, op in enumerate(compare.ops):
            left, right = compare.operands[index], compare.operands[index + 1]
            if not _reads_input(left) and not _reads_input(right):
                self.report("E303", f"'{format_expr(left)} {op} {format_expr(right)}' compares two constants",
                            compare, hint="compare an input, e.g. soft_bound(y <= 100)")
                ok = False
        return ok

    def _tensor_expr(self, node: ast.Node) -> bool:
        if isinstance(node, ast.Number):
            return True
        if isinstance(node, ast.Name):
            if node.id in self.lets:
                self.report("E204", f"'{node.id}' is a loss, not a tensor: it cannot be compared element-wise", node)
                return False
            if node.id in self.params:
                self.report("E204", f"param '{node.id}' cannot be used inside a tensor expression yet", node,
                            hint="write the number, or weigh the term by the param: lam * soft_bound(...)")
                return False
            return self._check_input(node.id, node)
        if isinstance(node, ast.Neg):
            return self._tensor_expr(node.operand)
        if isinstance(node, ast.BinOp):
            if not self._tensor_expr(node.left) & self._tensor_expr(node.right):
                return False
            if not _reads_input(node):
                return self._constant(node) is not _INVALID
            divisor = self._constant(node.right) if node.op == "/" else None
            if divisor == 0:
                self.report("E205", "division by zero", node.right)
                return False
            if isinstance(divisor, float) and abs(divisor) < 1 / ast.LARGEST_NUMBER:  # 0 in float32
                self.report("E205", f"dividing by {format_expr(node.right)} is beyond float32's range", node.right)
                return False
            return True
        if isinstance(node, (ast.Compare, ast.Logic, ast.Not)):
            self.report("E303", "a comparison cannot be part of a tensor expression", node,
                        hint="write a chain as 0 <= y <= 1, and penalise a comparison with soft_bound(...)")
            return False
        if isinstance(node, ast.Call):
            return self._tensor_function(node)
        self.report("E204", f"a tensor expression takes inputs, numbers, + - * / and functions; got {_describe(node)}",
                    node)
        return False

    def _tensor_function(self, call: ast.Call) -> bool:
        """``abs(x)``, ``clamp(x, lo, hi)``, ...: an element-wise function inside a tensor expression."""
        if call.name not in FUNCTIONS:
            hint = did_you_mean(call.name, FUNCTIONS) or f"the functions are {', '.join(FUNCTIONS)}"
            if call.name in REGISTRY:
                hint = f"{call.name}() is a loss term, not an element-wise function; {hint}"
            self.report("E202", f"unknown function '{call.name}' in a tensor expression", _name_span(call), hint=hint)
            return False
        arity = FUNCTIONS[call.name][0]
        if call.keywords or len(call.args) != arity:
            usage = "clamp(x, lo, hi)" if call.name == "clamp" else f"{call.name}(x)"
            self.report("E207", f"{call.name}() takes {arity} positional argument{'s' * (arity != 1)}: {usage}", call)
            return False
        if not self._tensor_expr(call.args[0]):
            return False
        for bound in call.args[1:]:
            if _number(bound) is None:
                self.report("E204", f"the bounds of {call.name}() are numbers; got {_describe(bound)}", bound)
                return False
        return True

    # -- the plan --
    def _plan(self, objective: ObjectiveExpr) -> Plan:
        used_lets: list[str] = []
        terms: list[TermPlan] = []
        visited: set[str] = set()

        def visit(root: ObjectiveExpr) -> None:
            # Depth first, left to right, each let after the lets it uses; iterative, since a chain
            # of lets is as deep as it is long.
            stack: list[ObjectiveExpr | str] = [root]
            while stack:
                expr = stack.pop()
                if isinstance(expr, str):  # a let whose value has been visited
                    used_lets.append(expr)
                elif isinstance(expr, TermValue):
                    terms.append(expr.term)
                elif isinstance(expr, LetValue):
                    if expr.name not in visited:
                        visited.add(expr.name)
                        stack += [expr.name, self.lets[expr.name].value]  # type: ignore[list-item]
                elif isinstance(expr, Arithmetic):
                    stack += [expr.right, expr.left]
                elif isinstance(expr, Negate):
                    stack.append(expr.operand)

        if objective is not None:
            visit(objective)
        for constraint in self.constraints:
            visit(constraint.value)
        unused_is_expected = objective is None  # a file to include defines things for others
        for name, decl in (self.declared or {}).items():
            if name not in self.used_inputs and not unused_is_expected:
                self.report("W003", f"input '{name}' is declared but not read", decl,
                            hint="remove the declaration, or use the input", severity="warning")
        for name, param in self.params.items():
            if name not in self.used_params and not unused_is_expected:
                self.report("W002", f"param '{name}' is not used", param,
                            hint="use it as a weight or a term argument, or remove it", severity="warning")
        for name, let in self.lets.items():
            if name not in visited and not unused_is_expected:
                self.report("W001", f"'{name}' is defined but not used in the objective", let.statement,
                            hint="it is not computed; add it to 'loss = ...' or remove it", severity="warning")
        terms.sort(key=lambda t: (t.span.line, t.span.column) if t.span else (0, 0))  # stable: built specs keep visit order
        self._check_group_state(terms)
        if any(d.severity == "error" for d in self.diagnostics):
            raise LossSpecError(self.diagnostics)
        labelled = self._label(terms, used_lets)
        let_plans = tuple(
            LetPlan(name, _relabel(self.lets[name].value, labelled), self.lets[name].statement.span)  # type: ignore[arg-type]
            for name in used_lets
        )
        inputs = tuple(dict.fromkeys(name for term in labelled.values() for name in term.inputs))
        return Plan(
            spec=self.spec,
            source=self.source,
            filename=self.filename,
            terms=tuple(labelled.values()),
            lets=let_plans,
            objective=_relabel(objective, labelled),
            inputs=inputs,
            params=tuple(
                ParamPlan(p.name, p.value, p.low, p.high, p.span) for p in self.params.values()
            ),
            declared=tuple(self.declared[name] for name in inputs if self.declared and name in self.declared),
            constraints=tuple(
                dataclasses.replace(c, value=_relabel(c.value, labelled)) for c in self.constraints
            ),
            warnings=tuple(self.diagnostics),
        )

    def _check_group_state(self, terms: list[TermPlan]) -> None:
        """The per-group state of all the terms (``state_size``: window=ema's running sums) is bounded:
        eight eo terms over 2^24 groups allocated 4.3 GB when the module was built."""
        kept = 0
        for term in terms:
            size = getattr(term.params, "state_size", lambda: 0)()
            kept += size
            if size and kept > MAX_GROUP_STATE:
                self.report("E205", f"the spec's window=ema terms keep {kept} running sums (groups x 2 per rate, "
                            f"per term), beyond the limit of {MAX_GROUP_STATE} (128 MiB)", term.span,
                            hint="give fewer groups, or fewer terms a window")
                return

    def _label(self, terms: list[TermPlan], used_lets: list[str]) -> dict[int, TermPlan]:
        """Name each term for ``last_terms``: its let's name, or its term name (numbered when repeated)."""
        whole_let = {}
        for name in used_lets:
            value = self.lets[name].value
            if isinstance(value, TermValue):
                whole_let[id(value.term)] = name
        unnamed = Counter(t.term.name for t in terms if id(t) not in whole_let)
        seen: Counter[str] = Counter()
        taken = {*used_lets, *(c.name for c in self.constraints), TOTAL_LABEL}  # labels of last_terms
        labelled: dict[int, TermPlan] = {}
        for term in terms:
            if id(term) in whole_let:
                label = whole_let[id(term)]
            else:
                seen[term.term.name] += 1
                label = term.term.name if unnamed[term.term.name] == 1 else f"{term.term.name}_{seen[term.term.name]}"
                while label in taken:
                    label += "_"
            taken.add(label)
            labelled[id(term)] = dataclasses.replace(term, label=label)
        return labelled


def _relabel(expr: ObjectiveExpr, labelled: dict[int, TermPlan]) -> ObjectiveExpr:
    if isinstance(expr, TermValue):
        return TermValue(labelled[id(expr.term)])
    if isinstance(expr, Arithmetic):
        return Arithmetic(expr.op, _relabel(expr.left, labelled), _relabel(expr.right, labelled), expr.span)
    if isinstance(expr, Negate):
        return Negate(_relabel(expr.operand, labelled))
    return expr


def _reads_input(node: ast.Node) -> bool:
    return bool(names_in(node))


def _name_span(node: ast.Call | ast.Keyword) -> ast.Span | None:
    """The span of a call's or keyword's name alone."""
    span = node.span
    if span is None:
        return None
    return span.model_copy(update={"end_line": span.line, "end_column": span.column + len(node.name)})


def _is_input_name(text: str) -> bool:
    """An identifier of the language (what NAME matches), other than a reserved word."""
    return bool(_IDENTIFIER.match(text)) and text not in ast.RESERVED_WORDS


def _input_name_hint(term: TermDef, name: str, text: str) -> str:
    field = term.params.model_fields[name]
    if not text:
        default = field.default if isinstance(field.default, str) else None
        leave = f"leave '{name}' out" + (f" to read '{default}'" if default else "") + ", or " \
            if not field.is_required() else ""
        return f"{leave}name an input: {name}=NAME"
    rule = f"an input name is letters, digits and _, not starting with a digit, and not one of {', '.join(ast.RESERVED_WORDS)}"
    if not re.search(r"[A-Za-z]", text):
        return rule
    suggestion = re.sub(r"\W", "_", text, flags=re.ASCII)
    if suggestion[0].isdigit():
        suggestion = "_" + suggestion
    if suggestion in ast.RESERVED_WORDS:
        suggestion += "_"
    return f"{rule}: e.g. {name}={suggestion}"


def _describe(node: ast.Node) -> str:
    if isinstance(node, ast.Name):
        return f"name '{node.id}'"
    if isinstance(node, ast.Call):
        return f"a call of {node.name}()"
    if isinstance(node, ast.Compare):
        return "a comparison"
    return {"number": "a number", "string": "a string", "list": "a list", "tuple": "a tuple"}.get(
        node.kind, "an expression"
    )


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], str):  # an option with arguments
        return f"{value[0]}({', '.join(map(str, value[1:]))})"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def _expected(term: TermDef, name: str) -> str:
    """A short description of what a parameter accepts, from its annotation."""
    annotation = str(term.params.model_fields[name].annotation)
    parts = []
    options = term.params.options(name)
    if options:
        parts.append("one of " + ", ".join(dict.fromkeys(options)))
    if "tuple" in annotation:
        parts.append("a list of numbers")
    elif "bool" in annotation:
        parts.append("true or false")
    elif "float" in annotation:
        parts.append("a number")
    elif "int" in annotation:
        parts.append("an integer")
    return " or ".join(parts) or "a value"


def _example_keyword(term: TermDef) -> str:
    fields = [
        name for name in term.params.model_fields
        if name not in term.params.positional and name not in term.params.fields_marked(INPUT)
    ]
    return f"{term.name}({fields[0]}=...)" if fields else f"{term.name}()"


def _names_none(node: ast.Node) -> bool:
    """``reduction=none`` (or ``reduction="none"``)."""
    return (isinstance(node, ast.Name) and node.id == "none") or (isinstance(node, ast.String) and node.value == "none")
