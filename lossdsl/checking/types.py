"""Types of the objective: arithmetic over losses and numbers (a number, a loss, or an error).

A loss may be weighed by a number, added to a loss, divided by a number; literal arithmetic is
folded here (``folding``), arithmetic over params is left for ``bind``. Lets are typed once, the
first time they are used; schedules (``warmup(1000)``) are numbers that move.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .. import ast
from ..errors import did_you_mean
from ..folding import INVALID, FoldError, fold, literal_number
from ..formatting import format_expr
from ..plan import (
    Arithmetic, Constant, LetValue, Negate, ObjectiveExpr, ParamValue, ScheduleValue, TermPlan, TermValue, Weighted,
)
from ..declarations import REGISTRY
from ..schedule_params import SCHEDULE_PARAMS
from ..weighting_params import WEIGHTING_PARAMS
from .arguments import RANGE_ERRORS, term_call
from .context import Context, LetState, Type, describe
from .scope import Scope, lets_before


def check_let(ctx: Context, let: LetState) -> None:
    if let.checked:
        return
    let.checked = True
    let.type, let.value = objective(ctx, let.statement.value, defined=lets_before(ctx, let.statement))
    ctx.unreduced_lets[let.statement.name] = unreduced_term(ctx, let.value)
    if let.type is Type.NUMBER:
        ctx.report("E301", f"'{let.statement.name}' is a constant number, not a loss", let.statement.value,
                   hint="a let names a sub-objective built from terms")
        let.type = Type.ERROR


def objective(ctx: Context, expr: ast.Node, defined: Scope) -> tuple[Type, ObjectiveExpr | None]:
    if isinstance(expr, ast.Number):
        return Type.NUMBER, Constant(float(expr.value))
    if isinstance(expr, ast.Call) and expr.name in SCHEDULE_PARAMS:
        return _schedule(ctx, expr)
    if isinstance(expr, ast.Call) and expr.name in WEIGHTING_PARAMS:
        return _weighting(ctx, expr, defined)
    if isinstance(expr, ast.Call):
        term = term_call(ctx, expr)
        return (Type.LOSS, TermValue(term)) if term else (Type.ERROR, None)
    if isinstance(expr, ast.Name):
        return _objective_name(ctx, expr, defined)
    if isinstance(expr, ast.Neg):
        kind, operand = objective(ctx, expr.operand, defined)
        if isinstance(operand, Constant):
            return kind, Constant(-operand.value)
        return kind, Negate(operand) if operand else None
    if isinstance(expr, ast.BinOp):
        return _objective_binop(ctx, expr, defined)
    if isinstance(expr, ast.Compare):
        ctx.report("E304", "a comparison is not a loss", expr,
                   hint=f"penalise its violation: soft_bound({format_expr(expr)})")
        return Type.ERROR, None
    if isinstance(expr, (ast.Logic, ast.Not)):
        ctx.report("E304", f"'{getattr(expr, 'op', 'not')}' combines comparisons, not losses", expr,
                   hint="add losses with +; combine comparisons inside soft_bound(y <= 1 or z <= 1)")
        return Type.ERROR, None
    what = {"string": "a string", "list": "a list", "tuple": "a tuple"}[expr.kind]
    ctx.report("E301", f"{what} is not a loss", expr, hint="a loss is built from terms such as ce() or mse()")
    return Type.ERROR, None


def _objective_name(ctx: Context, expr: ast.Name, defined: Scope) -> tuple[Type, ObjectiveExpr | None]:
    name = expr.id
    if name in defined and name in ctx.params:
        ctx.used_params.add(name)
        return Type.NUMBER, ParamValue(name)
    if name in defined:
        let = ctx.lets[name]
        check_let(ctx, let)
        return let.type, LetValue(name)
    if name in ctx.lets or name in ctx.params:
        statement = ctx.lets[name].statement if name in ctx.lets else ctx.params[name]
        keyword = "let" if name in ctx.lets else "param"
        line = statement.span.line if statement.span else "?"
        ctx.report("E104", f"'{name}' is used before its definition", expr,
                   hint=f"move '{keyword} {name}' (line {line}) above this line")
        return Type.ERROR, None
    suggestion = did_you_mean(name, defined)
    if suggestion or name in REGISTRY:
        hint = suggestion or f"'{name}' is a term: call it, {name}()"
        ctx.report("E104", f"undefined name '{name}'", expr, hint=hint)
        return Type.ERROR, None
    if ctx.declared is not None and name not in ctx.declared:
        known = [*defined, *ctx.declared]
        ctx.report("E104", f"undefined name '{name}'", expr,
                   hint=did_you_mean(name, known) or "declare inputs in the inputs: block")
        return Type.ERROR, None
    ctx.report("E301", f"'{name}' is an input tensor, not a loss", expr,
               hint=f"reduce it with a term, e.g. mse(pred={name}) or soft_bound({name} <= 1)")
    return Type.ERROR, None


def _objective_binop(ctx: Context, expr: ast.BinOp, defined: Scope) -> tuple[Type, ObjectiveExpr | None]:
    left_type, left = objective(ctx, expr.left, defined)
    right_type, right = objective(ctx, expr.right, defined)
    if Type.ERROR in (left_type, right_type):
        return Type.ERROR, None
    assert left is not None and right is not None
    value = Arithmetic(expr.op, left, right, expr.span)
    if left_type is Type.NUMBER and right_type is Type.NUMBER:
        if not (isinstance(left, Constant) and isinstance(right, Constant)):
            return Type.NUMBER, value  # arithmetic over params, computed when the module is built
        folded = _fold(ctx, expr, left.value, right.value)
        return (Type.NUMBER, Constant(folded)) if folded is not INVALID else (Type.ERROR, None)
    op = expr.op
    if op in "+-":
        unreduced = unreduced_term(ctx, left) or unreduced_term(ctx, right) if left_type is right_type else None
        if unreduced is not None:  # [N] and [N, C, H, W] would broadcast, or worse, silently
            ctx.report("E302", f"cannot {'add' if op == '+' else 'subtract'} losses when one is per sample: "
                       f"{unreduced.term.name}() has reduction=none", expr,
                       hint="loss_fn.per_sample(...) gives each sample's sum of the terms; or reduce the term")
            return Type.ERROR, None
        if left_type is right_type:
            return Type.LOSS, value
        ctx.report("E302", f"cannot {'add' if op == '+' else 'subtract'} a number and a loss", expr,
                   hint="a constant does not change the gradients; weight the loss instead: 0.5 * ce()")
        return Type.ERROR, None
    if op == "*":
        if Type.NUMBER in (left_type, right_type):
            return Type.LOSS, value
        ctx.report("E302", "cannot multiply two losses", expr,
                   hint="weight a loss by a number, e.g. 0.1 * fairness(...), and add losses with +")
        return Type.ERROR, None
    if right_type is Type.NUMBER:  # Loss / Number
        if isinstance(right, Constant) and right.value == 0:
            ctx.report("E205", "division by zero", expr.right)
            return Type.ERROR, None
        if isinstance(right, Constant) and abs(right.value) < 1 / ast.LARGEST_NUMBER:
            ctx.report("E205", f"dividing by {format_expr(expr.right)} weighs the loss beyond float32's range", expr.right)
            return Type.ERROR, None
        return Type.LOSS, value
    ctx.report("E302", "cannot divide by a loss", expr, hint="divide a loss by a number, e.g. ce() / 2")
    return Type.ERROR, None


def _fold(ctx: Context, expr: ast.BinOp, left: float, right: float) -> Any:
    """The value of constant arithmetic, or ``INVALID`` after reporting a division by zero or an overflow."""
    try:
        return fold(expr.op, left, right)
    except FoldError as error:
        ctx.fold_error(expr, error)
        return INVALID


def _schedule(ctx: Context, call: ast.Call) -> tuple[Type, ObjectiveExpr | None]:
    model, positional = SCHEDULE_PARAMS[call.name]
    if len(call.args) > len(positional):
        ctx.report("E207", f"{call.name}() takes {len(positional)} positional arguments: "
                           f"{call.name}({', '.join(positional)})", call)
        return Type.ERROR, None
    values: dict[str, Any] = {}
    for name, arg in [*zip(positional, call.args), *((k.name, k.value) for k in call.keywords)]:
        number = literal_number(arg)
        if name not in model.model_fields:
            ctx.report("E203", f"unknown argument '{name}' for {call.name}()", arg,
                       hint=did_you_mean(name, model.model_fields) or f"{call.name}({', '.join(positional)})")
            return Type.ERROR, None
        if number is None:
            ctx.report("E204", f"'{name}' of {call.name}() takes a number; got {describe(arg)}", arg)
            return Type.ERROR, None
        values[name] = number
    try:
        params = model(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        code = "E206" if error["type"] == "missing" else "E205" if error["type"] in RANGE_ERRORS else "E204"
        field = error["loc"][0] if error["loc"] else "?"
        problem = "is missing" if code == "E206" else error["msg"].replace("Input should be", "must be")
        ctx.report(code, f"'{field}' of {call.name}() {problem}", call,
                   hint=f"{call.name}({', '.join(positional)})")
        return Type.ERROR, None
    return Type.NUMBER, ScheduleValue(call.name, params)


def _weighting(ctx: Context, call: ast.Call, defined: Scope) -> tuple[Type, ObjectiveExpr | None]:
    """``uncertainty(L1, L2, ...)``, ``dwa(L1, L2, ..., T=2)``: two losses or more, then the options by name."""
    model = WEIGHTING_PARAMS[call.name]
    options = ", ".join(f"{name}={field.default!r}" for name, field in model.model_fields.items())
    usage = f"{call.name}(ce(), mse(){', ' + options if options else ''})"
    if len(call.args) < 2:
        ctx.report("E207", f"{call.name}() weighs two losses or more, given as positional arguments", call,
                   hint=usage)
        return Type.ERROR, None
    operands: list[ObjectiveExpr] = []
    failed = False
    for arg in call.args:
        kind, value = objective(ctx, arg, defined)
        if kind is Type.ERROR:
            failed = True
            continue
        unreduced = unreduced_term(ctx, value)
        if kind is Type.NUMBER or unreduced is not None:
            problem = (f"{unreduced.term.name}() has reduction=none (a loss per sample)" if unreduced is not None
                       else f"{format_expr(arg)} is a number")
            ctx.report("E302", f"{call.name}() weighs losses, but {problem}", arg, hint=usage)
            failed = True
            continue
        operands.append(value)  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.name not in model.model_fields:
            ctx.report("E203", f"unknown argument '{keyword.name}' for {call.name}()", keyword,
                       hint=did_you_mean(keyword.name, model.model_fields) or usage)
            return Type.ERROR, None
        number = literal_number(keyword.value)
        if number is None:
            ctx.report("E204", f"'{keyword.name}' of {call.name}() takes a number; got {describe(keyword.value)}",
                       keyword.value)
            return Type.ERROR, None
        values[keyword.name] = float(number)
    try:
        params = model(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = error["loc"][0] if error["loc"] else "?"
        ctx.report("E205", f"'{field}' of {call.name}() {error['msg'].replace('Input should be', 'must be')}", call,
                   hint=usage)
        return Type.ERROR, None
    if failed:
        return Type.ERROR, None
    return Type.LOSS, Weighted(call.name, tuple(operands), params, call.span)


def unreduced_term(ctx: Context, expr: ObjectiveExpr | None) -> TermPlan | None:
    """The first term with ``reduction=none`` in an objective expression, lets followed."""
    pending = [expr]
    while pending:
        node = pending.pop()
        if isinstance(node, TermValue):
            if getattr(node.term.params, "reduction", None) == "none":
                return node.term
        elif isinstance(node, LetValue):
            if node.name in ctx.unreduced_lets:  # each let is searched once, when it is checked:
                found = ctx.unreduced_lets[node.name]  # a chain of lets would be quadratic, or
                if found is not None:  # exponential when each uses the one before twice
                    return found
                continue
            let = ctx.lets.get(node.name)
            pending.append(let.value if let is not None else None)
        elif isinstance(node, Arithmetic):
            pending += [node.right, node.left]
        elif isinstance(node, Negate):
            pending.append(node.operand)
    return None

