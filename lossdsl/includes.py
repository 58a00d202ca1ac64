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

Two parts: ``expand_includes`` is the pass (pure: statements in, statements out, cycles, depth,
each file once), and an ``IncludeReader`` is what it reads through (the file system, confined as
above; every file's text kept by name for the diagnostics). A test or a host can hand the pass
another reader.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Protocol

from . import ast
from .errors import Diagnostic, LossSpecError
from .files import DEFAULT_MAX_BYTES, FileProblem, read_text
from .parsing import parse

_BROUGHT_IN = (ast.Let, ast.Param, ast.Inputs)

#: The deepest chain of includes followed (the top-level file is level 0).
MAX_INCLUDE_DEPTH = 32

_WIDEN = "pass include_root= to lossdsl.compile or lossdsl.load (lossdsl check --include-root DIR) to allow it"


@dataclass(frozen=True)
class Refusal:
    """Why a reader will not read an include: a diagnostic's code, message and hint."""

    code: str
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Located:
    """An included file found: ``key`` is the file itself (two paths to it, one key), ``name`` how
    diagnostics name it."""

    key: Hashable
    name: str


class IncludeReader(Protocol):
    """What ``expand_includes`` reads through. ``filename`` is the top-level file's name (None for
    spec text), ``top`` its key (None without one); ``sources`` each file's text by name, the top's
    included, filled as files are read."""

    filename: str | None
    top: Hashable | None
    sources: dict[str | None, str]

    def refuse(self, path: str) -> Refusal | None:
        """Why ``path`` cannot be included from any file, before the depth is counted; None if it may be."""

    def locate(self, path: str, including: str | None) -> Located | Refusal:
        """The file ``path`` names from the file ``including`` (None: the top-level spec)."""

    def read(self, located: Located) -> str | Refusal:
        """The text of a located file (kept in ``sources``)."""

    def show(self, key: Hashable) -> str:
        """A file's key as an include cycle is shown."""


def expand_includes(spec: ast.Spec, reader: IncludeReader) -> ast.Spec:
    """The spec with its includes replaced by the included statements (params, lets, inputs
    blocks), recursively; every problem with them a ``LossSpecError``. Reads only through ``reader``."""
    if not any(isinstance(s, ast.Include) for s in spec.statements):
        return spec
    source = reader.sources.get(reader.filename, "")
    stack = [reader.top] if reader.top is not None else []
    statements = _Expansion(reader).expand(spec, reader.filename, source, stack, depth=0)
    return spec.model_copy(update={"statements": tuple(statements)})


class _Expansion:
    def __init__(self, reader: IncludeReader):
        self.reader = reader
        self.included: set[Hashable] = set()  # every file read so far: each is read and parsed once

    def expand(self, spec: ast.Spec, filename: str | None, source: str, stack: list[Hashable],
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
            refusal = self.reader.refuse(path)
            if refusal is not None:
                refuse(refusal.code, refusal.message, statement, refusal.hint)
                continue
            if depth >= MAX_INCLUDE_DEPTH:
                refuse("E108", f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels", statement,
                       hint="flatten the chain of includes")
                continue
            located = self.reader.locate(path, filename)
            if isinstance(located, Refusal):
                refuse(located.code, located.message, statement, located.hint)
                continue
            if located.key in stack:
                keys = [*stack[stack.index(located.key):], located.key]
                refuse("E107", f"include cycle: {' -> '.join(map(self.reader.show, keys))}", statement)
                continue
            if located.key in self.included:
                continue  # already in scope, from above
            self.included.add(located.key)
            text = self.reader.read(located)
            if isinstance(text, Refusal):
                refuse(text.code, text.message, statement, text.hint)
                continue
            try:
                included = parse(text, located.name)
                inner = self.expand(included, located.name, text, [*stack, located.key], depth + 1)
            except LossSpecError as exc:
                diagnostics += exc.diagnostics
                continue
            statements += [s for s in inner if isinstance(s, _BROUGHT_IN)]
        if diagnostics:
            raise LossSpecError(diagnostics)
        return statements


class FileReader:
    """Reads includes from the file system, confined to the include root (the module docstring).

    The root is ``include_root`` if given, else the folder of ``filename``; spec text without a
    file name has none (it includes nothing). Nothing is read until an include asks.
    """

    def __init__(self, filename: str | None, source: str, include_root: str | os.PathLike[str] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.filename, self.max_bytes, self.include_root = filename, max_bytes, include_root
        self.sources: dict[str | None, str] = {filename: source}
        self._resolved = False

    def _resolve_root(self) -> None:
        if self._resolved:
            return
        self._resolved = True
        if self.include_root is not None:
            self._root: Path | None = Path(self.include_root).resolve()
        elif self.filename is not None:
            self._root = Path(self.filename).absolute().parent.resolve()  # the folder as named; the file may be a symlink
        else:
            self._root = None  # spec text from a string: where it came from says nothing about what it may read
        self._top = Path(self.filename).resolve() if self.filename else None
        self._shown_from = self._top.parent if self._top else self._root

    @property
    def root(self) -> Path | None:
        self._resolve_root()
        return self._root

    @property
    def top(self) -> Path | None:
        self._resolve_root()
        return self._top

    def refuse(self, path: str) -> Refusal | None:
        shown = _quoted(path)
        if self.root is None:
            return Refusal("E012", f"cannot include {shown}: a spec compiled from a string has no include root",
                           "pass include_root= (the folder its includes may read), or use lossdsl.load")
        if PurePosixPath(path).is_absolute() or PureWindowsPath(path).anchor:
            return Refusal("E012", f"cannot include {shown}: an include path is relative to the including file, "
                           "not absolute", f"name it relative to the include root {self.root}")
        return None

    def locate(self, path: str, including: str | None) -> Located | Refusal:
        shown = _quoted(path)
        assert self.root is not None  # (refuse said so)
        base = Path(including).parent if including else self.root
        target = base / path
        try:
            resolved = target.resolve()  # follows every symlink: where the file really is
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the system refuses
            return Refusal("E010", f"included file {shown} cannot be read")
        if not resolved.is_relative_to(self.root):
            how = "'..' climbs out of it" if ".." in Path(path).parts else "a symlink points out of it"
            return Refusal("E012", f"cannot include {shown}: it is outside the include root {self.root} ({how})",
                           _WIDEN)
        return Located(resolved, os.fspath(target))

    def read(self, located: Located) -> str | Refusal:
        try:
            # The resolved path, not following a symlink put there since it was checked.
            text = read_text(located.key, self.max_bytes, follow_symlinks=False)  # type: ignore[arg-type]
        except FileProblem as problem:
            return Refusal(problem.code, f"included file {_quoted(located.name)} {problem.problem}")
        self.sources[located.name] = text
        return text

    def show(self, key: Hashable) -> str:
        return _shown(key, self._shown_from)  # type: ignore[arg-type]


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
