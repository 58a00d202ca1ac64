"""``include "other.loss"``: bring another file's params, lets and input declarations into scope.

Includes are expanded before the checks run: each included file is parsed with its own
file name (so its diagnostics name it) and its ``param``, ``let`` and ``inputs:`` statements
take the place of the ``include`` line, recursively. Its objective, if any, is not included.
Paths are relative to the including file.

What a spec may read is confined (docs/language.md, "Security model"): only files inside the
include root (the top-level file's folder unless ``include_root`` is given; nothing for a spec
without a file name unless it is given), no absolute paths, no ``..`` or symlink out of the root,
only regular files of at most ``max_bytes``, at most ``MAX_INCLUDE_DEPTH`` levels deep. Each file
is read and parsed once per expansion: a file included a second time adds nothing (its names are
already in scope), so a diamond of includes is fine and a fan-out stays linear.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from . import ast
from .errors import Diagnostic, LossSpecError
from .files import DEFAULT_MAX_BYTES, FileProblem, read_text
from .parsing import parse

_BROUGHT_IN = (ast.Let, ast.Param, ast.Inputs)

#: The deepest chain of includes followed (the top-level file is level 0).
MAX_INCLUDE_DEPTH = 32

_WIDEN = "pass include_root= to lossdsl.compile or lossdsl.load (lossdsl check --include-root DIR) to allow it"


def expand_includes(
    spec: ast.Spec,
    filename: str | None,
    source: str,
    include_root: str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[ast.Spec, dict[str | None, str]]:
    """The spec with its includes replaced by the included statements, and every file's text by name."""
    sources: dict[str | None, str] = {filename: source}
    if not any(isinstance(s, ast.Include) for s in spec.statements):
        return spec, sources
    if include_root is not None:
        root: Path | None = Path(include_root).resolve()
    elif filename is not None:
        root = Path(filename).absolute().parent.resolve()  # the folder as named; the file may be a symlink
    else:
        root = None  # spec text from a string: where it came from says nothing about what it may read
    top = Path(filename).resolve() if filename else None
    expansion = _Expansion(root, max_bytes, sources, top.parent if top else root)
    statements = expansion.expand(spec, filename, source, [top] if top else [], depth=0)
    return spec.model_copy(update={"statements": tuple(statements)}), sources


class _Expansion:
    def __init__(self, root: Path | None, max_bytes: int, sources: dict[str | None, str], shown_from: Path | None):
        self.root, self.max_bytes, self.sources, self.shown_from = root, max_bytes, sources, shown_from
        self.included: set[Path] = set()  # every file read so far: each is read and parsed once

    def expand(self, spec: ast.Spec, filename: str | None, source: str, stack: list[Path],
               depth: int) -> list[ast.Node]:
        """The statements of ``spec`` (a file ``depth`` includes below the top), includes expanded;
        ``stack`` holds the files being expanded, for cycles."""
        statements: list[ast.Node] = []
        diagnostics: list[Diagnostic] = []

        def refuse(code: str, message: str, statement: ast.Include, hint: str | None = None) -> None:
            diagnostics.append(Diagnostic(code, message, statement.span, hint, source=source))

        for statement in spec.statements:
            if not isinstance(statement, ast.Include):
                statements.append(statement)
                continue
            path = statement.path
            shown = _quoted(path)
            if "\0" in path:  # no file system takes one; Path.resolve raises
                refuse("E010", "an include path cannot hold a NUL character", statement)
                continue
            if not _encodable(path):
                refuse("E010", f"the include path {shown} is not valid text (it holds a lone surrogate)", statement)
                continue
            if self.root is None:
                refuse("E012", f"cannot include {shown}: a spec compiled from a string has no include root",
                       statement, hint="pass include_root= (the folder its includes may read), or use lossdsl.load")
                continue
            if PurePosixPath(path).is_absolute() or PureWindowsPath(path).anchor:
                refuse("E012", f"cannot include {shown}: an include path is relative to the including file, "
                       "not absolute", statement, hint=f"name it relative to the include root {self.root}")
                continue
            if depth >= MAX_INCLUDE_DEPTH:
                refuse("E108", f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels", statement,
                       hint="flatten the chain of includes")
                continue
            base = Path(filename).parent if filename else self.root
            target = base / path
            try:
                resolved = target.resolve()  # follows every symlink: where the file really is
            except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the system refuses
                refuse("E010", f"included file {shown} cannot be read", statement)
                continue
            if not resolved.is_relative_to(self.root):
                how = "'..' climbs out of it" if ".." in Path(path).parts else "a symlink points out of it"
                refuse("E012", f"cannot include {shown}: it is outside the include root {self.root} ({how})",
                       statement, hint=_WIDEN)
                continue
            if resolved in stack:
                chain = " -> ".join(_shown(p, self.shown_from) for p in [*stack[stack.index(resolved):], resolved])
                refuse("E107", f"include cycle: {chain}", statement)
                continue
            if resolved in self.included:
                continue  # already in scope, from above
            self.included.add(resolved)
            name = os.fspath(target)
            try:
                # The resolved path, not following a symlink put there since it was checked.
                text = read_text(resolved, self.max_bytes, follow_symlinks=False)
            except FileProblem as problem:
                refuse(problem.code, f"included file {_quoted(name)} {problem.problem}", statement)
                continue
            self.sources[name] = text
            try:
                included = parse(text, name)
                inner = self.expand(included, name, text, [*stack, resolved], depth + 1)
            except LossSpecError as exc:
                diagnostics += exc.diagnostics
                continue
            statements += [s for s in inner if isinstance(s, _BROUGHT_IN)]
        if diagnostics:
            raise LossSpecError(diagnostics)
        return statements


def _shown(path: Path, start: Path | None) -> str:
    """A path as short as it reads well: relative to the first file's folder."""
    return os.path.relpath(path, start) if start is not None else os.fspath(path)


def _encodable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _quoted(path: str) -> str:
    """A path as a diagnostic shows it: quoted, escapes visible, at most 200 characters."""
    text = repr(path)
    return text if len(text) <= 200 else text[:197] + "..."
