"""AST to canonical text: ``parse(format(spec)) == spec`` for every spec."""

from __future__ import annotations

from . import ast

# Binding strength: a child binding looser than its slot needs parentheses.
_COMPARISON, _SUM, _PRODUCT, _UNARY, _ATOM = range(1, 6)
_LEVEL = {"+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT}


def format(spec: ast.Spec) -> str:  # noqa: A001 - the public name is lossdsl.format
    """The canonical text of a spec: one statement per line, single spaces around operators."""
    lines: list[str] = []
    for statement in spec.statements:
        lines.extend(format_statement(statement))
    return "\n".join(lines) + "\n" if lines else ""


def format_statement(statement: ast.Node) -> list[str]:
    if isinstance(statement, ast.Let):
        return [f"let {statement.name} = {format_expr(statement.value)}"]
    if isinstance(statement, ast.LossStmt):
        text = format_expr(statement.value)
        return [text if statement.bare else f"loss = {text}"]
    if isinstance(statement, ast.Param):
        text = f"param {statement.name} = {_number(statement.value)}"
        if statement.low is not None and statement.high is not None:
            text += f" in [{_number(statement.low)}, {_number(statement.high)}]"
        return [text]
    if isinstance(statement, ast.Include):
        return [f"include {_string(statement.path)}"]
    if isinstance(statement, ast.SubjectTo):
        text = f"subject to {format_expr(statement.constraint)}"
        if statement.name:
            text += f" as {statement.name}"
        if statement.method is not None:
            text += f" using {format_expr(statement.method)}"
        return [text]
    if isinstance(statement, ast.Inputs):
        return ["inputs:", *(f"    {_input(decl)}" for decl in statement.decls)]
    raise TypeError(f"not a statement: {statement!r}")


def format_expr(node: ast.Node, level: int = _COMPARISON) -> str:
    """The canonical text of an expression placed where ``level`` binds."""
    text, own = _format(node)
    return f"({text})" if own < level else text


def _format(node: ast.Node) -> tuple[str, int]:
    if isinstance(node, ast.Number):
        return _number(node.value), _ATOM
    if isinstance(node, ast.Name):
        return node.id, _ATOM
    if isinstance(node, ast.String):
        return _string(node.value), _ATOM
    if isinstance(node, ast.Neg):
        return "-" + format_expr(node.operand, _UNARY), _UNARY
    if isinstance(node, ast.BinOp):
        level = _LEVEL[node.op]
        left = format_expr(node.left, level)
        right = format_expr(node.right, level + 1)  # left-associative
        return f"{left} {node.op} {right}", level
    if isinstance(node, ast.Compare):
        parts = [format_expr(node.operands[0], _SUM)]
        for op, operand in zip(node.ops, node.operands[1:]):
            parts += [op, format_expr(operand, _SUM)]
        return " ".join(parts), _COMPARISON
    if isinstance(node, ast.Call):
        arguments = [format_expr(arg) for arg in node.args]
        arguments += [f"{kw.name}={format_expr(kw.value)}" for kw in node.keywords]
        return f"{node.name}({', '.join(arguments)})", _ATOM
    if isinstance(node, ast.List):
        return "[" + ", ".join(format_expr(item) for item in node.items) + "]", _ATOM
    if isinstance(node, ast.Tuple):
        items = [format_expr(item) for item in node.items]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")", _ATOM
    raise TypeError(f"not an expression: {node!r}")


def _number(value: int | float) -> str:
    return repr(value)


def _string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _input(decl: ast.InputDecl) -> str:
    text = f"{decl.name}: {decl.type}"
    if decl.shape is not None:
        text += "[" + ", ".join(str(d) for d in decl.shape) + "]"
    if decl.groups is not None:
        text += f" of {decl.groups}"
    return text
