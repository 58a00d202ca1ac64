"""Scope: which names a statement may use, the inputs: block, params' own ranges.

A let or param can be used only below its definition; with an ``inputs:`` block every input a
term reads must be declared there, of a kind the term accepts.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import ast
from ..errors import did_you_mean
from ..declarations import INPUT_KINDS, MAX_GROUPS
from .context import Context


class Scope:
    """The names defined above a statement (a statement index), without copying them into a set."""

    def __init__(self, defined_at: dict[str, int], position: int):
        self.defined_at, self.position = defined_at, position

    def __contains__(self, name: object) -> bool:
        index = self.defined_at.get(name)  # type: ignore[call-overload]
        return index is not None and index < self.position

    def __iter__(self) -> Iterator[str]:  # for did-you-mean hints only
        return (name for name, index in self.defined_at.items() if index < self.position)


def lets_before(ctx: Context, statement: ast.Node) -> Scope:
    """The lets and params defined above ``statement``: a name can be used only below its definition."""
    if ctx.defined_at is None:  # built once: a set per statement would be quadratic in lets
        ctx.position = {}
        ctx.defined_at = {}
        for index, other in enumerate(ctx.spec.statements):
            ctx.position.setdefault(id(other), index)
            if isinstance(other, (ast.Let, ast.Param)):
                ctx.defined_at.setdefault(other.name, index)
    return Scope(ctx.defined_at, ctx.position.get(id(statement), len(ctx.spec.statements)))


def declare(ctx: Context, block: ast.Inputs) -> None:
    if ctx.declared is None:
        ctx.declared = {}
    for decl in block.decls:
        if decl.name in ctx.declared:
            first = ctx.declared[decl.name].span
            ctx.report("E102", f"input '{decl.name}' is declared twice", decl,
                       hint=f"it is first declared at line {first.line}" if first else None)
            continue
        if decl.type not in INPUT_KINDS:
            ctx.report("E106", f"unknown input kind '{decl.type}'", decl,
                       hint=did_you_mean(decl.type, INPUT_KINDS) or f"the kinds are {', '.join(INPUT_KINDS)}")
        elif decl.groups is not None and decl.type != "group":
            ctx.report("E204", f"'of {decl.groups}' counts groups: it applies to group inputs, not {decl.type}",
                       decl)
        elif decl.groups is not None and not 1 <= decl.groups <= MAX_GROUPS:
            ctx.report("E205", f"'of {decl.groups}': a group input has 1 to {MAX_GROUPS} groups", decl)
        ctx.declared[decl.name] = decl


def check_input(ctx: Context, name: str, node: ast.Node | ast.Span | None, reader: str | None = None,
                 kinds: tuple[str, ...] | None = None) -> bool:
    """With an ``inputs:`` block, ``name`` must be declared, and of a kind the reader accepts."""
    ctx.used_inputs.add(name)
    if ctx.declared is None:
        return True
    decl = ctx.declared.get(name)
    if decl is None:
        hint = did_you_mean(name, ctx.declared) or "declare it in the inputs: block"
        what = f"{reader} reads input '{name}'" if reader else f"input '{name}'"
        ctx.report("E104", f"{what}, which is not declared", node, hint=hint)
        return False
    if kinds and decl.type not in kinds:
        line = decl.span.line if decl.span else "?"
        ctx.report("E204", f"{reader} takes {' or '.join(kinds)}, but '{name}' is declared {decl.type} "
                           f"(line {line})", node)
        return False
    return True


def check_param(ctx: Context, param: ast.Param) -> None:
    if param.low is None or param.high is None:
        return
    if param.low > param.high:
        ctx.report("E205", f"the range of '{param.name}' is empty: {param.low} > {param.high}", param)
    elif not param.low <= param.value <= param.high:
        ctx.report("E205", f"'{param.name}' = {param.value} lies outside its range [{param.low}, {param.high}]",
                   param)

