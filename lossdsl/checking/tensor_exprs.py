"""Tensor expressions and conditions inside terms: ``soft_bound(y <= 100)``, ``mean(abs(p - t))``.

Element-wise arithmetic over inputs and numbers, the functions of ``tensor_expr.FUNCTIONS``, and
comparisons combined with and / or / not / implies; lets and params are not tensors.
"""

from __future__ import annotations

from typing import Any

from .. import ast
from ..errors import did_you_mean
from ..folding import INVALID, literal_number, number_value
from ..formatting import format_expr
from ..declarations import REGISTRY
from ..tensor_expr import FUNCTIONS, names_in
from .context import Context, describe, name_span
from .scope import check_input


def condition(ctx: Context, compare: ast.Node) -> bool:
    """A comparison over tensors, or comparisons combined with and / or / not / implies."""
    if isinstance(compare, ast.Logic):
        return condition(ctx, compare.left) & condition(ctx, compare.right)
    if isinstance(compare, ast.Not):
        return condition(ctx, compare.operand)
    if not isinstance(compare, ast.Compare):
        ctx.report("E204", f"'and', 'or', 'not' and 'implies' combine comparisons; got {describe(compare)}",
                   compare, hint="compare it: soft_bound(y <= 1 or z <= 1)")
        return False
    ok = all(tensor_expr(ctx, operand) for operand in compare.operands)
    if not ok:
        return False
    for index, op in enumerate(compare.ops):
        left, right = compare.operands[index], compare.operands[index + 1]
        if not reads_input(left) and not reads_input(right):
            ctx.report("E303", f"'{format_expr(left)} {op} {format_expr(right)}' compares two constants",
                       compare, hint="compare an input, e.g. soft_bound(y <= 100)")
            ok = False
    return ok


def tensor_expr(ctx: Context, node: ast.Node) -> bool:
    if isinstance(node, ast.Number):
        return True
    if isinstance(node, ast.Name):
        if node.id in ctx.lets:
            ctx.report("E204", f"'{node.id}' is a loss, not a tensor: it cannot be compared element-wise", node)
            return False
        if node.id in ctx.params:
            ctx.report("E204", f"param '{node.id}' cannot be used inside a tensor expression yet", node,
                       hint="write the number, or weigh the term by the param: lam * soft_bound(...)")
            return False
        return check_input(ctx, node.id, node)
    if isinstance(node, ast.Neg):
        return tensor_expr(ctx, node.operand)
    if isinstance(node, ast.BinOp):
        if not tensor_expr(ctx, node.left) & tensor_expr(ctx, node.right):
            return False
        if not reads_input(node):
            return _constant(ctx, node) is not INVALID
        divisor = _constant(ctx, node.right) if node.op == "/" else None
        if divisor == 0:
            ctx.report("E205", "division by zero", node.right)
            return False
        if isinstance(divisor, float) and abs(divisor) < 1 / ast.LARGEST_NUMBER:  # 0 in float32
            ctx.report("E205", f"dividing by {format_expr(node.right)} is beyond float32's range", node.right)
            return False
        return True
    if isinstance(node, (ast.Compare, ast.Logic, ast.Not)):
        ctx.report("E303", "a comparison cannot be part of a tensor expression", node,
                   hint="write a chain as 0 <= y <= 1, and penalise a comparison with soft_bound(...)")
        return False
    if isinstance(node, ast.Call):
        return _tensor_function(ctx, node)
    ctx.report("E204", f"a tensor expression takes inputs, numbers, + - * / and functions; got {describe(node)}",
               node)
    return False


def _tensor_function(ctx: Context, call: ast.Call) -> bool:
    """``abs(x)``, ``clamp(x, lo, hi)``, ...: an element-wise function inside a tensor expression."""
    if call.name not in FUNCTIONS:
        hint = did_you_mean(call.name, FUNCTIONS) or f"the functions are {', '.join(FUNCTIONS)}"
        if call.name in REGISTRY:
            hint = f"{call.name}() is a loss term, not an element-wise function; {hint}"
        ctx.report("E202", f"unknown function '{call.name}' in a tensor expression", name_span(call), hint=hint)
        return False
    arity = FUNCTIONS[call.name]
    if call.keywords or len(call.args) != arity:
        usage = "clamp(x, lo, hi)" if call.name == "clamp" else f"{call.name}(x)"
        ctx.report("E207", f"{call.name}() takes {arity} positional argument{'s' * (arity != 1)}: {usage}", call)
        return False
    if not tensor_expr(ctx, call.args[0]):
        return False
    for bound in call.args[1:]:
        if literal_number(bound) is None:
            ctx.report("E204", f"the bounds of {call.name}() are numbers; got {describe(bound)}", bound)
            return False
    return True


def _constant(ctx: Context, node: ast.Node) -> Any:
    """The value of pure number arithmetic; None for anything else; ``INVALID`` once reported."""
    return number_value(node, ctx.fold_error)


def reads_input(node: ast.Node) -> bool:
    return bool(names_in(node))

