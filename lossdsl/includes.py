"""``include "other.loss"``: bring another file's params, lets and input declarations into scope.

Includes are expanded before the checks run: each included file is parsed with its own
file name (so its diagnostics name it) and its ``param``, ``let`` and ``inputs:`` statements
take the place of the ``include`` line, recursively. Its objective, if any, is not included.
Paths are relative to the including file (to the working directory for a spec without a file).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import ast
from .errors import Diagnostic, LossSpecError
from .parsing import parse

_BROUGHT_IN = (ast.Let, ast.Param, ast.Inputs)


def expand_includes(spec: ast.Spec, filename: str | None, source: str) -> tuple[ast.Spec, dict[str | None, str]]:
    """The spec with its includes replaced by the included statements, and every file's text by name."""
    sources: dict[str | None, str] = {filename: source}
    if not any(isinstance(s, ast.Include) for s in spec.statements):
        return spec, sources
    root = Path(filename).resolve() if filename else None
    statements = _expand(spec, filename, source, [root] if root else [], sources)
    return spec.model_copy(update={"statements": tuple(statements)}), sources


def _expand(
    spec: ast.Spec, filename: str | None, source: str, stack: list[Path], sources: dict[str | None, str]
) -> list[ast.Node]:
    statements: list[ast.Node] = []
    diagnostics: list[Diagnostic] = []
    for statement in spec.statements:
        if not isinstance(statement, ast.Include):
            statements.append(statement)
            continue
        base = Path(filename).parent if filename else Path.cwd()
        target = base / statement.path
        if "\0" in statement.path:  # no file system takes one; Path.resolve raises
            diagnostics.append(Diagnostic("E010", "an include path cannot hold a NUL character", statement.span,
                                          source=source))
            continue
        resolved = target.resolve()
        if resolved in stack:
            chain = " -> ".join(_shown(p, stack[0].parent) for p in [*stack[stack.index(resolved):], resolved])
            diagnostics.append(Diagnostic("E107", f"include cycle: {chain}", statement.span, source=source))
            continue
        try:
            text = target.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problem = "is not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "cannot be read"
            diagnostics.append(
                Diagnostic("E010", f"included file {os.fspath(target)!r} {problem}", statement.span, source=source)
            )
            continue
        name = os.fspath(target)
        sources[name] = text
        try:
            included = parse(text, name)
            inner = _expand(included, name, text, [*stack, resolved], sources)
        except LossSpecError as exc:
            diagnostics += exc.diagnostics
            continue
        statements += [s for s in inner if isinstance(s, _BROUGHT_IN)]
    if diagnostics:
        raise LossSpecError(diagnostics)
    return statements


def _shown(path: Path, start: Path) -> str:
    """A path as short as it reads well: relative to the first file's folder."""
    return os.path.relpath(path, start)
