"""``lossdsl explain``: what a spec means, term by term, and what it compiles to."""

from __future__ import annotations

from . import ast
from .formatting import format as format_spec
from .plan import Arithmetic, Constant, LetValue, Negate, ObjectiveExpr, ParamValue, Plan, ScheduleValue, TermValue, Weighted
from .runtime import LossModule
from .tensor_expr import Lowered


def explain(plan: Plan, trace: bool = True) -> str:
    """A report: the canonical spec, the typed tree, each term's parameters, the inputs, the params,
    the module, and (when every input is declared) the forward traced with torch.fx."""
    module = LossModule(plan).eval()
    lets = {let.name: let for let in plan.lets}
    sections = [
        ("spec", format_spec(plan.spec).rstrip() or "(empty)"),
        ("typed tree", "\n".join(_tree(plan.objective, lets, 0)) if plan.objective else "(no objective)"),
        ("terms", "\n".join(_term_lines(plan)) or "(none)"),
        ("inputs", "\n".join(_input_lines(plan)) or "(none)"),
        ("params", "\n".join(_param_lines(plan)) or "(none)"),
        ("module", repr(module)),
    ]
    if trace:
        sections.append(("forward, traced with torch.fx on synthetic inputs", _traced(plan, module)))
    return "\n\n".join(f"== {title} ==\n{body}" for title, body in sections) + "\n"


def _type(expr: ObjectiveExpr) -> str:
    """A Loss when it reads a term or a let, else a Number (numbers, params, schedules)."""
    return "Loss" if next(expr.find_all((TermValue, LetValue)), None) is not None else "Number"


#: Deeper levels of the typed tree are indented no further (their depth is shown): a chain of
#: lets is as deep as it is long, and indenting each line by its depth would be quadratic.
_MAX_INDENT = 32


def _tree(expr: ObjectiveExpr, lets: dict, depth: int) -> list[str]:
    """The typed tree, depth first; iterative, and each let expanded once (a let used twice, in a
    chain of lets that each use the one before twice, would otherwise double the tree each time)."""
    lines: list[str] = []
    expanded: set[str] = set()
    stack = [(expr, depth)]
    while stack:
        expr, depth = stack.pop()
        pad = "  " * min(depth, _MAX_INDENT) + (f"[{depth}] " if depth > _MAX_INDENT else "")
        if isinstance(expr, TermValue):
            lines.append(f"{pad}{expr.term.label}: Loss  = {expr.term.term.name}(...) at line {_line(expr.term.span)}")
        elif isinstance(expr, LetValue):
            if expr.name in expanded:
                lines.append(f"{pad}let {expr.name}: Loss  (as above)")
            else:
                expanded.add(expr.name)
                lines.append(f"{pad}let {expr.name}: Loss")
                stack.append((lets[expr.name].value, depth + 1))
        elif isinstance(expr, ParamValue):
            lines.append(f"{pad}param {expr.name}: Number")
        elif isinstance(expr, Constant):
            lines.append(f"{pad}{expr.value!r}: Number")
        elif isinstance(expr, ScheduleValue):
            lines.append(f"{pad}{expr.kind}({', '.join(f'{k}={v!r}' for k, v in expr.params)}): Schedule")
        elif isinstance(expr, Weighted):
            options = "".join(f", {k}={v!r}" for k, v in expr.params)
            lines.append(f"{pad}{expr.kind}(...{options}): Loss  (weights that change as it trains)")
            stack += [(operand, depth + 1) for operand in reversed(expr.operands)]
        elif isinstance(expr, Negate):
            lines.append(f"{pad}neg: {_type(expr)}")
            stack.append((expr.operand, depth + 1))
        else:
            assert isinstance(expr, Arithmetic)
            lines.append(f"{pad}{expr.op}: {_type(expr)}")
            stack += [(expr.right, depth + 1), (expr.left, depth + 1)]
    return lines


def _line(span: ast.Span | None) -> str:
    return str(span.line) if span else "?"


def _term_lines(plan: Plan) -> list[str]:
    lines = []
    for term in plan.terms:
        lines.append(f"{term.label}: {term.where}")
        for name, value in term.params:
            if isinstance(value, Lowered):  # a condition or tensor expression: as written
                shown = value.text
            elif value is None or isinstance(value, str):
                shown = "—" if value is None else value
            else:
                shown = repr(value)
            source = dict(term.param_args).get(name)
            lines.append(f"    {name} = {shown}" + (f"  (param {source})" if source else ""))
    return lines


def _input_lines(plan: Plan) -> list[str]:
    declared = {decl.name: decl for decl in plan.declared}
    readers: dict[str, list[str]] = {name: [] for name in plan.inputs}
    for term in plan.terms:  # one pass, not inputs times terms
        for name in dict.fromkeys(term.inputs):
            readers[name].append(term.where)
    lines = []
    for name in plan.inputs:
        decl = declared.get(name)
        kind = decl.type if decl else ""
        if decl and decl.shape is not None:  # [] too: a scalar
            kind += f"[{', '.join(map(str, decl.shape))}]"
        lines.append(f"{name}: {kind or '(not declared)'}  read by {', '.join(readers[name])}")
    return lines


def _param_lines(plan: Plan) -> list[str]:
    return [
        f"{p.name} = {p.default!r}" + (f" in [{p.low!r}, {p.high!r}]" if p.low is not None else "") for p in plan.params
    ]


def _traced(plan: Plan, module: LossModule) -> str:
    from torch.fx.experimental.proxy_tensor import make_fx

    from .errors import LossSpecError
    from .synthetic import synthetic_inputs

    try:
        inputs = synthetic_inputs(plan)
        names = list(inputs)
        graph = make_fx(lambda *tensors: module(**dict(zip(names, tensors))))(*inputs.values())
    except LossSpecError as exc:  # inferred inputs that do not fit
        advice = "" if plan.declared else "; declare the inputs in an inputs: block"
        return f"(not traced: {exc.diagnostics[0].message}{advice})"
    shapes = ", ".join(f"arg{i}_1 = {name} {tuple(t.shape)}" for i, (name, t) in enumerate(inputs.items()))
    return f"# {shapes}\n{graph.code.strip()}"
