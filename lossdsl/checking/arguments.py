"""Argument binding: a term call's arguments, bound to its parameter model and validated.

Positional and keyword arguments are matched to the term's parameters, each turned into its
Python value (a number, an option, an input's name, a condition, a tensor expression, an inner
loss), then the term's pydantic model validates them. The params a call is given by name are
collected per call (``param_args``) and handed back in its ``TermPlan``, for ``bind``.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

from pydantic import ValidationError

from .. import ast
from ..errors import did_you_mean
from ..folding import INVALID, literal_number
from ..formatting import format_expr
from ..plan import TermPlan
from ..declarations import CONDITION, INPUT, MAX_GROUPS, REGISTRY, TENSOR, InnerLoss, TermDef
from .context import Context, describe, name_span
from .scope import check_input
from .tensor_exprs import condition, reads_input, tensor_expr

_BOOLEANS = {"true": True, "false": False}
#: An input's name, as the grammar's NAME token spells it (grammar/loss.lark).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: pydantic's error types for a number outside a parameter's range (E205 rather than E204).
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def term_call(ctx: Context, call: ast.Call) -> TermPlan | None:
    """A term's call, checked: its plan, or None once its problems are reported."""
    term = REGISTRY.get(call.name)
    if term is None:
        ctx.report("E202", f"unknown term '{call.name}'", name_span(call),
                   hint=did_you_mean(call.name, REGISTRY) or "`lossdsl terms` lists the terms")
        return None
    fields = term.params.model_fields
    given: dict[str, ast.Node] = {}
    ok = True
    param_args: list[tuple[str, str]] = []  # (parameter, param) given a param by name, for bind
    positional = term.params.positional
    for index, arg in enumerate(call.args):
        if index >= len(positional):
            count = len(positional)
            ctx.report("E207", f"{call.name}() takes {count} positional argument{'s' * (count != 1)}", arg,
                       hint="name the argument, e.g. " + _example_keyword(term))
            ok = False
            continue
        given[positional[index]] = arg
    for keyword in call.keywords:
        if keyword.name == "reduction" and _names_none(keyword.value) and not term.has_sample_losses():
            _no_sample_losses(ctx, term, keyword)
            ok = False
        elif keyword.name not in fields:
            ctx.report("E203", f"unknown argument '{keyword.name}' for {call.name}()", name_span(keyword),
                       hint=did_you_mean(keyword.name, fields) or f"{call.name}() takes {', '.join(fields)}")
            ok = False
        elif keyword.name in given:
            ctx.report("E207", f"argument '{keyword.name}' of {call.name}() is given twice", keyword)
            ok = False
        else:
            given[keyword.name] = keyword.value
    values: dict[str, Any] = {}
    for name, node in given.items():
        value = argument(ctx, term, name, node, param_args)
        if value is INVALID:
            ok = False
        else:
            values[name] = value
    group = values.get("group")
    if "groups" in fields and "groups" not in values and isinstance(group, str) and ctx.declared:
        decl = ctx.declared.get(group)
        if decl is not None and decl.groups and decl.groups <= MAX_GROUPS:  # (a larger K is reported there)
            values["groups"] = decl.groups  # `group[N] of K` sizes the group slots
    try:
        params = term.params(**values)
    except ValidationError as exc:
        # After a bad argument, a "missing" report is most likely that same argument again.
        _validation_errors(ctx, term, call, given, values, exc, report_missing=ok)
        return None
    if not ok:
        return None
    beyond = params.beyond_float32()
    if beyond is not None:
        name, problem = beyond
        ctx.report("E205", f"{call.name}(): {problem}", given.get(name) or call)
        return None
    for role in params.input_roles():
        value = getattr(params, role)
        reader = f"{call.name}()" if role in given else f"{call.name}() (by default)"
        for name in value if isinstance(value, tuple) else (value,):
            if not check_input(ctx, name, given.get(role) or name_span(call), reader, term.params.kinds(role)):
                return None
    return TermPlan(term=term, params=params, span=call.span, param_args=tuple(param_args))  # type: ignore[arg-type]


def argument(ctx: Context, term: TermDef, name: str, node: ast.Node, param_args: list[tuple[str, str]]) -> Any:
    """The Python value of one argument, before the parameter model validates it; a param given by
    name is added to ``param_args``."""
    metadata = term.params.model_fields[name].metadata
    if CONDITION in metadata:
        if not isinstance(node, (ast.Compare, ast.Logic, ast.Not)):
            ctx.report("E204", f"{term.name}() needs a comparison, such as y <= 100", node)
            return INVALID
        return node if condition(ctx, node) else INVALID
    if TENSOR in metadata:
        if not tensor_expr(ctx, node):
            return INVALID
        if not reads_input(node):
            ctx.report("E303", f"{term.name}() of a constant is a constant, not a loss", node,
                       hint=f"reduce an input, e.g. {term.name}(abs(pred - target))")
            return INVALID
        return node
    if isinstance(node, ast.Call) and node.name in term.params.inner_forms(name):
        return _inner_loss(ctx, term, node)
    if term.name in term.params.inner_forms(name) and isinstance(node, (ast.Call, ast.Name)):
        # The term itself wraps its loss, as group_dro(ce(), ...): the call takes the inner term directly.
        return _inner_loss(ctx, term, ast.Call(name=term.name, args=(node,), span=node.span))
    if INPUT in metadata:
        if isinstance(node, ast.Tuple) and term.params.accepts(name, tuple):
            names = [argument(ctx, term, name, item, param_args) for item in node.items]
            return INVALID if INVALID in names else tuple(names)
        if isinstance(node, (ast.Name, ast.String)):
            input_name = node.id if isinstance(node, ast.Name) else node.value
            if not _is_input_name(input_name):
                # The module reads inputs by these names: "" or "a b" could never be passed (or, for
                # "", be told apart from no input at all), so the spec could not be called.
                got = "an empty string" if not input_name else f'the string "{input_name}"'
                ctx.report("E204", f"'{name}' of {term.name}() names an input by an identifier; got {got}",
                           node, hint=_input_name_hint(term, name, input_name))
                return INVALID
            if input_name in ctx.lets:
                ctx.report("E204", f"'{input_name}' is a loss defined with let, not an input tensor", node,
                           hint=f"'{name}' of {term.name}() names an input")
                return INVALID
            return input_name
        ctx.report("E204", f"'{name}' of {term.name}() names an input; got {describe(node)}", node)
        return INVALID
    if isinstance(node, ast.Name):
        if node.id in _BOOLEANS and term.params.accepts_bool(name):
            return _BOOLEANS[node.id]
        if node.id in ctx.params and node.id not in term.params.options(name):
            ctx.used_params.add(node.id)
            param_args.append((name, node.id))
            return ctx.params[node.id].value  # validated now; an override is validated at compile time
        if term.params.options(name):
            return node.id
        ctx.report("E204", f"'{name}' of {term.name}() takes {_expected(term, name)}; got name '{node.id}'", node)
        return INVALID
    if isinstance(node, ast.String):
        return node.value
    number = literal_number(node)
    if number is not None:
        return number
    if isinstance(node, ast.List):
        items = [literal_number(item) for item in node.items]
        if all(item is not None for item in items):
            return tuple(items)
        ctx.report("E204", f"'{name}' of {term.name}() takes a list of numbers", node)
        return INVALID
    if isinstance(node, ast.Call) and term.params.options(name) and not node.keywords:
        numbers = [literal_number(arg) for arg in node.args]
        if all(n is not None for n in numbers):  # an option with arguments: penalty=softplus(10)
            return (node.name, *numbers)
        if node.name in term.params.options(name):
            ctx.report("E204", f"the arguments of {node.name}() in '{name}' of {term.name}() are numbers",
                       node, hint=f"write the number, as in {node.name}(0.1)")
            return INVALID
    ctx.report("E204", f"'{name}' of {term.name}() takes {_expected(term, name)}; got {describe(node)}", node)
    return INVALID


def _no_sample_losses(ctx: Context, term: TermDef, keyword: ast.Keyword) -> None:
    """``reduction=none`` on a batch-level term (fairness, dice, l2, ...)."""
    have = ", ".join(name for name, t in REGISTRY.items() if t.has_sample_losses() and "reduction" in t.params.model_fields)
    ctx.report("E204", f"{term.name}() has no per-sample form: it is computed over the whole batch, so it "
               "takes no reduction=none", keyword, hint=f"reduction=none is for terms that average over samples: {have}")


def _inner_loss(ctx: Context, term: TermDef, call: ast.Call) -> Any:
    """``group_loss(mse)``, ``group_loss_gap(huber(delta=2))``: a per-sample loss term inside an argument."""
    usage = f"{call.name}(mse) or {call.name}(huber(delta=2))"
    if call.keywords or len(call.args) != 1:
        ctx.report("E207", f"{call.name}() takes one loss term: {usage}", call)
        return INVALID
    inner = call.args[0]
    if isinstance(inner, ast.Name):
        inner = ast.Call(name=inner.id, span=inner.span)
    if not isinstance(inner, ast.Call):
        ctx.report("E204", f"{call.name}() takes a loss term, as in {usage}; got {describe(inner)}", inner)
        return INVALID
    inner_term = REGISTRY.get(inner.name)
    if inner_term is not None and not inner_term.per_sample:
        per_sample = ", ".join(name for name, t in REGISTRY.items() if t.per_sample)
        ctx.report("E204", f"{call.name}() needs a loss with one value per sample, which {inner.name}() has not",
                   name_span(inner), hint=f"these have one: {per_sample}")
        return INVALID
    for keyword in inner.keywords:
        if keyword.name in ("reduction", "sample_weight"):
            ctx.report("E204", f"{call.name}() averages {inner.name}() per group itself: leave out "
                       f"'{keyword.name}'", keyword, hint=f"give sample_weight= to {term.name}()")
            return INVALID
    plan = term_call(ctx, inner)
    if plan is None:
        return INVALID
    if plan.param_args:  # (the inner term's own: this call's are collected apart)
        ctx.report("E204", f"a param cannot set an argument of the term inside {call.name}() yet", inner,
                   hint="write the number")
        return INVALID
    return InnerLoss(call.name, plan, format_expr(call))


def _validation_errors(ctx: Context, term: TermDef, call: ast.Call, given: dict[str, ast.Node],
                       values: dict[str, Any], exc: ValidationError, report_missing: bool) -> None:
    by_field: dict[str, list[dict[str, Any]]] = {}
    for error in exc.errors():
        by_field.setdefault(str(error["loc"][0]) if error["loc"] else "", []).append(error)
    for name, errors in by_field.items():
        if not name:  # a rule across parameters (a model validator)
            message = errors[0]["msg"].removeprefix("Value error, ")
            ctx.report("E204", f"{call.name}(): {message}", call)
            continue
        node = given.get(name)
        where: ast.Node | ast.Span | None = node if node is not None else name_span(call)
        value = values.get(name)
        # A tuple member of a union (class_balanced(beta)) reports its items "missing" for other
        # values: only the parameter's own loc means the argument itself is missing.
        types = {"missing-item" if e["type"] == "missing" and len(e["loc"]) > 1 else e["type"] for e in errors}
        options = tuple(dict.fromkeys(term.params.options(name))) if name in term.params.model_fields else ()
        if "missing" in types:
            if not report_missing:
                continue
            description = term.params.model_fields[name].description
            ctx.report("E206", f"{call.name}() is missing its argument '{name}'", where,
                       hint=f"{name}: {description}" if description else None)
        elif isinstance(value, str) and value in term.params.inner_forms(name):
            ctx.report("E204", f"{value} takes the loss it averages per group, as in {value}(mse)", where)
        elif isinstance(value, str) and value in _options_with_arguments(term, name):
            ctx.report("E204", f"{value} in '{name}' of {call.name}() takes its number, as in {value}(0.9)", where,
                       hint=term.params.model_fields[name].description)
        elif isinstance(value, str) and options:
            noun = term.noun if name in term.params.positional else "value"
            ctx.report("E201", f"unknown {noun} '{value}' for {call.name}()", where,
                       hint=did_you_mean(value, options) or f"expected one of: {', '.join(options)}")
        elif "value_error" in types:  # a parameter's own validator explains the problem
            error = next(e for e in errors if e["type"] == "value_error")
            message = error["msg"].removeprefix("Value error, ")
            ctx.report("E204", f"'{name}' of {call.name}() got {_show(value)}: {message}", where)
        elif types & RANGE_ERRORS:
            error = next(e for e in errors if e["type"] in RANGE_ERRORS)
            message = error["msg"].replace("Input should be", "must be")
            ctx.report("E205", f"'{name}' of {call.name}() {message}, got {_show(value)}", where)
        else:
            ctx.report("E204", f"'{name}' of {call.name}() takes {_expected(term, name)}; got {_show(value)}",
                       where)


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
        with_arguments = _options_with_arguments(term, name)
        parts.append("one of " + ", ".join(f"{o}(...)" if o in with_arguments else o for o in dict.fromkeys(options)))
    if "tuple" in annotation:
        parts.append("a list of numbers")
    elif "bool" in annotation:
        parts.append("true or false")
    elif "float" in annotation:
        parts.append("a number")
    elif "int" in annotation:
        parts.append("an integer")
    return " or ".join(parts) or "a value"


def _options_with_arguments(term: TermDef, name: str) -> set[str]:
    """Options written only as a call with numbers (``class_balanced(0.999)``): the ``Literal``
    heading a tuple in the annotation, and not an option on its own too (``softplus`` is both)."""
    def literals(annotation: Any, in_tuple: bool, found: dict[str, set[bool]]) -> None:
        if typing.get_origin(annotation) is Literal:
            for option in typing.get_args(annotation):
                found.setdefault(option, set()).add(in_tuple)
            return
        inside = in_tuple or typing.get_origin(annotation) is tuple
        for arg in typing.get_args(annotation):
            literals(arg, inside, found)

    found: dict[str, set[bool]] = {}
    literals(term.params.model_fields[name].annotation, False, found)
    return {option for option, where in found.items() if where == {True}}


def _example_keyword(term: TermDef) -> str:
    fields = [
        name for name in term.params.model_fields
        if name not in term.params.positional and name not in term.params.fields_marked(INPUT)
    ]
    return f"{term.name}({fields[0]}=...)" if fields else f"{term.name}()"


def _names_none(node: ast.Node) -> bool:
    """``reduction=none`` (or ``reduction="none"``)."""
    return (isinstance(node, ast.Name) and node.id == "none") or (isinstance(node, ast.String) and node.value == "none")

