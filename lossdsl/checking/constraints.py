"""Constraints: ``subject to LOSS <= NUMBER [as NAME] [using METHOD(ARG)]``, checked and named."""

from __future__ import annotations

import dataclasses

from .. import ast
from ..dual_methods import DEFAULT_METHOD, METHOD_ARGUMENTS
from ..errors import did_you_mean
from ..folding import literal, literal_number
from ..formatting import format_expr
from ..plan import MULTIPLIER_CAP, ConstraintPlan, ScheduleValue, TOTAL_LABEL, Weighted, constraint_overflow
from .context import Context, Type, where
from .scope import lets_before
from .types import objective, unreduced_term

#: ``using METHOD(ARG)``: the argument's name and default.
_METHODS = METHOD_ARGUMENTS


def constraint(ctx: Context, statement: ast.SubjectTo) -> ConstraintPlan | None:
    """The checked constraint; unnamed, its name is "" until ``_name_constraints`` gives one."""
    compare = statement.constraint
    usage = "a constraint compares a loss with a number: subject to fairness(eo_gap, group=sex) <= 0.02"
    if not isinstance(compare, ast.Compare) or len(compare.ops) != 1 or compare.ops[0] in ("<", ">"):
        if isinstance(compare, ast.Logic) and compare.op == "and":
            usage = "write one 'subject to' line per constraint"
        ctx.report("E303", "a constraint is one comparison with <=, >= or ==", compare, hint=usage)
        return None
    defined = lets_before(ctx, statement)
    kind, value = objective(ctx, compare.operands[0], defined)
    bound_kind, bound = objective(ctx, compare.operands[1], defined)
    if Type.ERROR in (kind, bound_kind):
        return None
    if kind is not Type.LOSS or bound_kind is not Type.NUMBER or isinstance(bound, ScheduleValue):
        ctx.report("E302", "a constraint bounds a loss by a number", compare, hint=usage)
        return None
    weighted = next(value.find_all(Weighted), None)  # type: ignore[union-attr]
    if weighted is not None:
        ctx.report("E302", f"a constraint bounds a loss, not one {weighted.kind}() weighs as it trains", weighted.span,
                   hint=f"weigh the objective with it: loss = {weighted.kind}(...); bound each loss alone")
        return None
    unreduced = unreduced_term(ctx, value)
    if unreduced is not None:
        ctx.report("E302", f"a constraint bounds one number, but {unreduced.term.name}() has reduction=none "
                   "(a loss per sample)", unreduced.span, hint="bound its mean: leave out reduction=none")
        return None
    method, rate = DEFAULT_METHOD, _METHODS[DEFAULT_METHOD][1]
    if statement.method is not None:
        chosen = statement.method
        name = chosen.id if isinstance(chosen, ast.Name) else chosen.name if isinstance(chosen, ast.Call) else ""
        if name not in _METHODS:
            ctx.report("E201", f"unknown constraint method '{name or format_expr(chosen)}'", chosen,
                       hint=did_you_mean(name, _METHODS) or ", ".join(
                           f"{method}({argument}={default:g})" for method, (argument, default) in _METHODS.items()))
            return None
        method, rate = name, _METHODS[name][1]
        if isinstance(chosen, ast.Call):
            arguments = [*chosen.args, *(k.value for k in chosen.keywords)]
            wrong = [k.name for k in chosen.keywords if k.name != _METHODS[name][0]]
            number = literal_number(arguments[0]) if len(arguments) == 1 else None
            if wrong or len(arguments) > 1 or (arguments and (number is None or number <= 0)):
                ctx.report("E204", f"{name}() takes one positive number, {_METHODS[name][0]}", chosen)
                return None
            if name == "augmented" and arguments and number < 1 / ast.LARGEST_NUMBER:  # it divides lam by rho
                ctx.report("E205", f"{name}()'s {_METHODS[name][0]} is too small for float32: {format_expr(arguments[0])}",
                           chosen)
                return None
            rate = number if arguments else rate
    fixed = literal(bound)
    overflow = None if fixed is None else constraint_overflow(method, rate, fixed)
    if overflow is not None:  # a bound over params is checked by bind, which knows their values
        ctx.report("E205", overflow, compare.operands[1],
                   hint=f"bound a loss of the data's scale; a learned multiplier saturates at {MULTIPLIER_CAP:g}")
        return None
    return ConstraintPlan(statement.name or "", value, compare.ops[0], bound,  # type: ignore[arg-type]
                          method, float(rate), statement.span)


def name_constraints(ctx: Context, statements: list[ast.SubjectTo]) -> list[ConstraintPlan]:
    """The checked constraints, each with its label in last_terms: ``as NAME``, which must not be
    a let's name, another constraint's or ``total`` (E102), else ``constraint_<i>`` (with a
    trailing ``_`` while that is taken)."""
    named: dict[str, ast.SubjectTo] = {}
    for statement in statements:
        name = statement.name
        if name == TOTAL_LABEL:
            ctx.report("E102", f"'{TOTAL_LABEL}' names the whole loss in last_terms", statement,
                       hint="choose another name for the constraint")
        elif name is not None and (name in ctx.lets or name in named):
            first = ctx.lets[name].statement if name in ctx.lets else named[name]
            ctx.report("E102", f"'{name}' is defined twice", statement,
                       hint=f"it is first defined at {where(first.span, statement.span)}")
        if name is not None:
            named.setdefault(name, statement)
    taken = {*ctx.lets, *named, TOTAL_LABEL}
    constraints = []
    for index, statement in enumerate(statements, 1):
        plan = constraint(ctx, statement)
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

