"""AST to canonical text: ``parse(format(spec)) == spec`` for every spec."""

from __future__ import annotations

from . import ast

# Binding strength (lossdsl.operators): a child binding looser than its slot needs parentheses.
from .operators import ATOM as _ATOM
from .operators import COMPARISON as _COMPARISON
from .operators import IMPLIES as _IMPLIES
from .operators import NOT as _NOT
from .operators import PRECEDENCE as _LEVEL
from .operators import SUM as _SUM
from .operators import UNARY as _UNARY


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


def format_expr(node: ast.Node, level: int = _IMPLIES) -> str:
    """The canonical text of an expression placed where ``level`` binds.

    Iterative, not recursive: a builder expression (``e = e + T.mae()``, 3,000 times) nests far
    deeper than Python's recursion limit, and printing it must not fail (checking it is E004)."""
    out: list[str] = []
    # Pieces still to write, the next one last: text, or an expression and the level of its slot.
    todo: list[str | tuple[ast.Node, int]] = [(node, level)]
    while todo:
        piece = todo.pop()
        if isinstance(piece, str):
            out.append(piece)
            continue
        child, slot = piece
        own, pieces = _pieces(child)
        if own < slot:
            pieces = ["(", *pieces, ")"]
        todo.extend(reversed(pieces))
    return "".join(out)


def _pieces(node: ast.Node) -> tuple[int, list[str | tuple[ast.Node, int]]]:
    """How tightly ``node`` binds, and its text: strings and (child, level of the child's slot)."""
    if isinstance(node, ast.Number):
        return _ATOM, [_number(node.value)]
    if isinstance(node, ast.Name):
        return _ATOM, [node.id]
    if isinstance(node, ast.String):
        return _ATOM, [_string(node.value)]
    if isinstance(node, ast.Neg):
        return _UNARY, ["-", (node.operand, _UNARY)]
    if isinstance(node, ast.BinOp):
        level = _LEVEL[node.op]
        return level, [(node.left, level), f" {node.op} ", (node.right, level + 1)]  # left-associative
    if isinstance(node, ast.Logic):
        level = _LEVEL[node.op]
        if node.op == "implies":  # right-associative
            return level, [(node.left, level + 1), " implies ", (node.right, level)]
        return level, [(node.left, level), f" {node.op} ", (node.right, level + 1)]
    if isinstance(node, ast.Not):
        return _NOT, ["not ", (node.operand, _NOT)]
    if isinstance(node, ast.Compare):
        pieces: list[str | tuple[ast.Node, int]] = [(node.operands[0], _SUM)]
        for op, operand in zip(node.ops, node.operands[1:]):
            pieces += [f" {op} ", (operand, _SUM)]
        return _COMPARISON, pieces
    if isinstance(node, ast.Call):
        arguments: list[list[str | tuple[ast.Node, int]]] = [[(arg, _IMPLIES)] for arg in node.args]
        arguments += [[f"{kw.name}=", (kw.value, _IMPLIES)] for kw in node.keywords]
        return _ATOM, [f"{node.name}(", *_separated(arguments), ")"]
    if isinstance(node, ast.List):
        return _ATOM, ["[", *_separated([[(item, _IMPLIES)] for item in node.items]), "]"]
    if isinstance(node, ast.Tuple):
        items = _separated([[(item, _IMPLIES)] for item in node.items])
        return _ATOM, ["(", *items, "," if len(node.items) == 1 else "", ")"]
    raise TypeError(f"not an expression: {node!r}")


def _separated(groups: list[list[str | tuple[ast.Node, int]]]) -> list[str | tuple[ast.Node, int]]:
    pieces: list[str | tuple[ast.Node, int]] = []
    for index, group in enumerate(groups):
        if index:
            pieces.append(", ")
        pieces += group
    return pieces


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


def format_source(text: str, filename: str | None = None) -> str:
    """``lossdsl fmt``: the canonical text of a spec file, keeping its comments and blank lines.

    Each statement is written canonically on one line (an ``inputs:`` block one declaration a
    line, indented by four spaces). Comment lines stay above the statement they preceded; a
    comment at the end of a statement's last line stays at its end; a comment inside a
    multi-line statement moves above it. Runs of blank lines become one.
    """
    from .parsing import parse_with_comments

    spec, comments = parse_with_comments(text, filename)
    lines = text.split("\n")
    out: list[str] = []
    previous_end = 0
    for statement in spec.statements:
        first, last = _line_range(statement)
        leading = [n for n in sorted(comments) if previous_end < n < first]
        block_start = min([first, *leading])
        if out and any(not lines[n - 1].strip() for n in range(previous_end + 1, block_start)):
            out.append("")
        for n in leading:
            if out and n > leading[0] and not lines[n - 2].strip():
                out.append("")
            out.append(comments.pop(n))
        out.extend(_statement_with_comments(statement, comments, first, last))
        previous_end = last
    rest = [n for n in sorted(comments) if n > previous_end]
    if rest and out and any(not lines[n - 1].strip() for n in range(previous_end + 1, rest[0])):
        out.append("")
    out.extend(comments.pop(n) for n in rest)
    return "\n".join(out) + "\n" if out else ""


def _statement_with_comments(statement: ast.Node, comments: dict[int, str], first: int, last: int) -> list[str]:
    if isinstance(statement, ast.Inputs):
        header = "inputs:" + _trailing(comments, first)
        body = []
        for decl in statement.decls:
            decl_first, decl_last = _line_range(decl)
            above = [comments.pop(n) for n in sorted(comments) if first < n < decl_first]
            body += [f"    {c}" for c in above] + [f"    {_input(decl)}" + _trailing(comments, decl_last)]
            first = decl_last
        return [header, *body]
    inside = [comments.pop(n) for n in sorted(comments) if first <= n < last]
    (text,) = format_statement(statement) if not isinstance(statement, ast.Inputs) else ("",)
    return [*inside, text + _trailing(comments, last)]


def _trailing(comments: dict[int, str], line: int) -> str:
    return f"  {comments.pop(line)}" if line in comments else ""


def _line_range(node: ast.Node) -> tuple[int, int]:
    span = node.span
    if isinstance(node, ast.Inputs) and node.decls:
        return span.line, _line_range(node.decls[-1])[1]  # type: ignore[union-attr]
    return span.line, span.end_line  # type: ignore[union-attr]
