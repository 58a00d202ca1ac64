"""The check pass over a whole spec: its statements in order, then the ``Plan``.

Every problem becomes a ``Diagnostic``; all of them are collected before ``LossSpecError`` is
raised. Error codes are stable and documented in ``docs/language.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .. import ast
from ..errors import Diagnostic, LossSpecError
from ..parsing import MAX_NESTING
from ..plan import (
    Arithmetic,
    LetPlan,
    LetValue,
    Negate,
    ObjectiveExpr,
    ParamPlan,
    Plan,
    TOTAL_LABEL,
    TermPlan,
    TermValue,
    Weighted,
)
from ..declarations import MAX_GROUP_STATE
from . import types
from .constraints import name_constraints
from .context import Context, LetState, Type, where
from .labels import label_terms, relabel
from .scope import check_param, declare, lets_before


def check(spec: ast.Spec, source: str = "", filename: str | None = None, *,
          sources: Mapping[str | None, str] | None = None, library: bool = False) -> Plan:
    """The check pass: a spec (its includes already expanded) to its ``Plan``; every problem a
    ``LossSpecError``. Pure: no I/O. ``source`` is the text of ``filename``, ``sources`` each
    included file's, for the diagnostics' excerpts. ``library=True`` accepts a file without an
    objective (one meant to be included), with a warning; its plan has no objective."""
    texts = dict(sources or {})
    texts.setdefault(filename, source)
    return check_statements(Context(spec, source, filename, texts, library))


def check_statements(ctx: Context) -> Plan:
    objectives: list[ast.LossStmt] = []
    subject_to: list[ast.SubjectTo] = []
    for statement in ctx.spec.statements:
        if isinstance(statement, (ast.Let, ast.Param)):
            first = ctx.lets[statement.name].statement if statement.name in ctx.lets else ctx.params.get(
                statement.name
            )
            if first is not None:
                ctx.report("E102", f"'{statement.name}' is defined twice", statement,
                           hint=f"it is first defined at {where(first.span, statement.span)}")
                continue
            if isinstance(statement, ast.Let):
                if statement.name == TOTAL_LABEL:
                    ctx.report("E102", f"'{TOTAL_LABEL}' names the whole loss in last_terms", statement,
                               hint="choose another name for the let")
                ctx.lets[statement.name] = LetState(statement)
            else:
                check_param(ctx, statement)
                ctx.params[statement.name] = statement  # even if invalid: its uses are not inputs
        elif isinstance(statement, ast.LossStmt):
            objectives.append(statement)
        elif isinstance(statement, ast.Inputs):
            declare(ctx, statement)
        elif isinstance(statement, ast.SubjectTo):
            subject_to.append(statement)
    for let in ctx.lets.values():
        types.check_let(ctx, let)
    objective: ObjectiveExpr | None = None
    if not objectives and ctx.library and ctx.spec.statements:
        ctx.report("W004", "no objective: checked as a file to include", ctx.spec.span,
                   hint="a spec to compile needs 'loss = ...'", severity="warning")
    elif not objectives:
        ctx.report("E103", "the spec has no objective", ctx.spec.span,
                   hint="add a line 'loss = ...', or write the objective as a bare expression")
    else:
        for extra in objectives[1:]:
            ctx.report("E103", "the spec has more than one objective", extra,
                       hint=f"the first is at line {objectives[0].span.line}" if objectives[0].span else None)
        kind, objective = types.objective(ctx, objectives[0].value, defined=lets_before(ctx, objectives[0]))
        if kind is Type.NUMBER:
            ctx.report("E301", "the objective is a constant number, not a loss", objectives[0].value,
                       hint="build it from terms such as ce() or mse()")
    ctx.constraints = name_constraints(ctx, subject_to)
    if any(d.severity == "error" for d in ctx.diagnostics):
        raise LossSpecError(ctx.diagnostics)
    return _plan(ctx, objective)


def _plan(ctx: Context, objective: ObjectiveExpr) -> Plan:
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
                    stack += [expr.name, ctx.lets[expr.name].value]  # type: ignore[list-item]
            elif isinstance(expr, Arithmetic):
                stack += [expr.right, expr.left]
            elif isinstance(expr, Negate):
                stack.append(expr.operand)
            elif isinstance(expr, Weighted):
                stack += reversed(expr.operands)

    if objective is not None:
        visit(objective)
    in_objective = {id(term) for term in terms}  # (a term the objective reads keeps no audited window)
    for constraint in ctx.constraints:
        visit(constraint.value)
    unused_is_expected = objective is None  # a file to include defines things for others
    for name, decl in (ctx.declared or {}).items():
        if name not in ctx.used_inputs and not unused_is_expected:
            ctx.report("W003", f"input '{name}' is declared but not read", decl,
                       hint="remove the declaration, or use the input", severity="warning")
    for name, param in ctx.params.items():
        if name not in ctx.used_params and not unused_is_expected:
            ctx.report("W002", f"param '{name}' is not used", param,
                       hint="use it as a weight or a term argument, or remove it", severity="warning")
    for name, let in ctx.lets.items():
        if name not in visited and not unused_is_expected:
            ctx.report("W001", f"'{name}' is defined but not used in the objective", let.statement,
                       hint="it is not computed; add it to 'loss = ...' or remove it", severity="warning")
    terms.sort(key=lambda t: (t.span.line, t.span.column) if t.span else (0, 0))  # stable: built specs keep visit order
    _check_group_state(ctx, terms, in_objective)
    if any(d.severity == "error" for d in ctx.diagnostics):
        raise LossSpecError(ctx.diagnostics)
    labelled = label_terms(ctx, terms, used_lets)
    let_plans = tuple(
        LetPlan(name, relabel(ctx.lets[name].value, labelled), ctx.lets[name].statement.span)  # type: ignore[arg-type]
        for name in used_lets
    )
    inputs = tuple(dict.fromkeys(name for term in labelled.values() for name in term.inputs))
    return Plan(
        spec=ctx.spec,
        source=ctx.source,
        filename=ctx.filename,
        terms=tuple(labelled.values()),
        lets=let_plans,
        objective=relabel(objective, labelled),
        inputs=inputs,
        params=tuple(
            ParamPlan(p.name, p.value, p.low, p.high, p.span) for p in ctx.params.values()
        ),
        declared=tuple(ctx.declared[name] for name in inputs if ctx.declared and name in ctx.declared),
        constraints=tuple(
            dataclasses.replace(c, value=relabel(c.value, labelled)) for c in ctx.constraints
        ),
        warnings=tuple(ctx.diagnostics),
    )


def _check_group_state(ctx: Context, terms: list[TermPlan], in_objective: set[int]) -> None:
    """The per-group state of all the terms (``state_size``: window=ema's running sums) is bounded:
    eight eo terms over 2^24 groups allocated 4.3 GB when the module was built. A term only
    constraints read may keep an audited window besides (``in_constraint``)."""
    kept = 0
    for term in terms:
        state_size = getattr(term.params, "state_size", None)
        size = state_size(in_constraint=id(term) not in in_objective) if state_size is not None else 0
        kept += size
        if size and kept > MAX_GROUP_STATE:
            ctx.report("E205", f"the spec's window=ema terms keep {kept} running sums (groups x 2 per rate, "
                       f"per term), beyond the limit of {MAX_GROUP_STATE} (128 MiB)", term.span,
                       hint="give fewer groups, or fewer terms a window")
            return


def check_nesting(spec: ast.Spec) -> None:
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

