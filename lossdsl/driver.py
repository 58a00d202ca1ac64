"""The driver: runs the passes, owns their caches, does the I/O (like Jinja2's ``Environment``).

    parse(text) -> Spec -> expand_includes(spec, reader) -> Spec -> check(spec) -> Plan
        -> bind(plan, params, overrides) -> BoundPlan -> build(bound) -> LossModule

Each pass is a pure function of what it is handed (``parsing.parse``, ``includes.expand_includes``,
``checking.check``, ``binding.bind``, ``runtime.build``); the driver reads the files (a spec,
through ``read_spec``; its includes, through an ``includes.FileReader``) and keeps the caches: a
spec text is parsed once and, without includes, checked once. ``lossdsl.compile``, ``load`` and
``check`` and the ``lossdsl`` command go through ``DRIVER``. docs/architecture.md has the map.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import ast
from .binding import BoundPlan, bind
from .checking import check as check_spec, check_nesting
from .errors import Diagnostic, LossSpecError
from .files import DEFAULT_MAX_BYTES, FileProblem, check_max_bytes, read_text
from .includes import FileReader, expand_includes
from .parsing import parse
from .plan import Plan

if TYPE_CHECKING:  # the runtime imports torch: ``compile`` imports it, the checks never do
    from .runtime import LossModule

#: How many spec texts each cache keeps (parsed specs; plans of specs without includes).
CACHE_SIZE = 256


class Driver:
    """Runs the passes over spec text or a parsed ``Spec``; owns the parse and plan caches."""

    def __init__(self, cache_size: int = CACHE_SIZE):
        self.parse = functools.lru_cache(maxsize=cache_size)(self._parse)
        self._plan_of_text = functools.lru_cache(maxsize=cache_size)(self._check_text)

    # -- the passes up to the plan --
    @staticmethod
    def _parse(text: str, filename: str | None = None) -> ast.Spec:
        """Spec text to its AST (cached by text and file name: ``Driver.parse``)."""
        return parse(text, filename)

    def plan(self, text: str, filename: str | None = None, library: bool = False, *,
             include_root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Plan:
        """Parse and check spec text; cached by text, so a spec is checked once.

        A spec that includes other files is checked afresh each time: those files may have changed.
        ``library=True`` accepts a file without an objective (one meant to be included), with a
        warning; its plan has no objective and cannot be compiled. ``include_root`` and ``max_bytes``
        bound what its includes may read (see ``lossdsl.includes``).
        """
        spec = self.parse(text, filename)
        if any(isinstance(s, ast.Include) for s in spec.statements):
            return self._expand_and_check(spec, text, filename, library, include_root, max_bytes)
        return self._plan_of_text(text, filename, library)

    def _check_text(self, text: str, filename: str | None, library: bool) -> Plan:
        return check_spec(self.parse(text, filename), text, filename, library=library)

    def check(self, spec: ast.Spec, source: str = "", filename: str | None = None, library: bool = False, *,
              include_root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Plan:
        """Check a parsed spec (its includes expanded first) and return its plan."""
        if not isinstance(spec, ast.Spec):
            raise TypeError(f"lossdsl.check takes a lossdsl.Spec (from lossdsl.parse), got {type(spec).__name__}")
        check_nesting(spec)  # the parser's limit, for a Spec built in Python
        return self._expand_and_check(spec, source, filename, library, include_root, max_bytes)

    @staticmethod
    def _expand_and_check(spec: ast.Spec, source: str, filename: str | None, library: bool,
                          include_root: str | os.PathLike[str] | None, max_bytes: int) -> Plan:
        reader = FileReader(filename, source, include_root, max_bytes)
        return check_spec(expand_includes(spec, reader), source, filename, sources=reader.sources, library=library)

    # -- to the module --
    def compile(
        self,
        spec: str | ast.Spec,
        params: Mapping[str, float] | None = None,
        *,
        filename: str | None = None,
        include_root: str | os.PathLike[str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> LossModule:
        """``lossdsl.compile``: spec text (or a parsed ``Spec``) to a fresh ``LossModule``."""
        if not isinstance(spec, (str, ast.Spec)):
            raise TypeError(f"lossdsl.compile takes spec text (a str) or a lossdsl.Spec, got {type(spec).__name__}")
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"filename takes a str, got {type(filename).__name__}")
        root = _path_argument("include_root", include_root) if include_root is not None else None
        max_bytes = check_max_bytes(max_bytes)
        overrides = _params_argument(params)
        if isinstance(spec, str):
            plan = self.plan(spec, filename, include_root=root, max_bytes=max_bytes)
        else:
            plan = self.check(spec, include_root=root, max_bytes=max_bytes)
        from .runtime import build

        return build(bind(plan, overrides=overrides))

    def load(self, path: str | os.PathLike[str], params: Mapping[str, float] | None = None, *,
             include_root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> LossModule:
        """``lossdsl.load``: read, check and compile a ``.loss`` file."""
        name = _path_argument("lossdsl.load", path)
        return self.compile(read_spec(name, max_bytes), params, filename=name, include_root=include_root,
                            max_bytes=max_bytes)

    def check_file(self, path: str | os.PathLike[str], params: Mapping[str, float] | None = None, *,
                   include_root: str | os.PathLike[str] | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> BoundPlan | Plan:
        """``lossdsl check`` of one file: read, check (a file without an objective is one to include)
        and, with an objective, bind the params: every static problem, no torch module built."""
        name = os.fspath(path)
        plan = self.plan(read_spec(name, max_bytes), name, library=True, include_root=include_root,
                         max_bytes=max_bytes)
        if plan.objective is None:
            return plan
        return bind(plan, overrides=params or {})  # finds what needs the params' values (E205 on their arithmetic)


#: The driver ``lossdsl.compile``, ``load``, ``check`` and the CLI share (and so share its caches).
DRIVER = Driver()


def compile(  # noqa: A001
    spec: str | ast.Spec,
    params: Mapping[str, float] | None = None,
    *,
    filename: str | None = None,
    include_root: str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LossModule:
    """Compile spec text (or a parsed ``Spec``) into a fresh ``LossModule``.

    ``params`` overrides the spec's ``param`` values by name. Parsing and checking are cached by
    text; the module is new on every call. ``include`` reads only files inside ``include_root``
    (by default the folder of ``filename``; a spec without a filename includes nothing unless
    ``include_root`` is given), each of at most ``max_bytes`` bytes.
    """
    return DRIVER.compile(spec, params, filename=filename, include_root=include_root, max_bytes=max_bytes)


def load(
    path: str | os.PathLike[str],
    params: Mapping[str, float] | None = None,
    *,
    include_root: str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LossModule:
    """Read, check and compile a ``.loss`` file (of at most ``max_bytes`` bytes; its includes
    confined to ``include_root``, by default the file's folder)."""
    return DRIVER.load(path, params, include_root=include_root, max_bytes=max_bytes)


def check(spec: ast.Spec, source: str = "", filename: str | None = None, library: bool = False, *,
          include_root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Plan:
    """Check a parsed spec (its includes expanded first) and return its plan."""
    return DRIVER.check(spec, source, filename, library, include_root=include_root, max_bytes=max_bytes)


def plan_for(text: str, filename: str | None = None, library: bool = False, *,
             include_root: str | os.PathLike[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Plan:
    """Parse and check spec text (cached by text): ``Driver.plan`` of the shared driver."""
    return DRIVER.plan(text, filename, library, include_root=include_root, max_bytes=max_bytes)


def read_spec(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The text of a spec file; a file that is unreadable, not a regular file, over ``max_bytes``
    or not UTF-8 is a ``LossSpecError``."""
    name = os.fspath(path)
    try:
        return read_text(name, max_bytes)
    except FileProblem as problem:
        line, column = problem.position()
        width = 1 if problem.offset is not None else 0  # the first byte that is not UTF-8
        span = ast.Span(line=line, column=column, end_line=line, end_column=column + width, filename=name)
        message = f"cannot read the file: {problem.reason}" if problem.reason else f"the file {problem.problem}"
        raise LossSpecError([Diagnostic(problem.code, message, span)]) from None


def _params_argument(params: object) -> Mapping[str, float]:
    """``params=`` as given: a mapping from param names to numbers (the numbers are checked by bind)."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise TypeError(f"params takes a mapping of param names to numbers, such as {{'lam': 0.5}}, "
                        f"got {type(params).__name__}")
    for name in params:
        if not isinstance(name, str):
            raise TypeError(f"params takes param names as str keys, got {name!r} ({type(name).__name__})")
    return params


def _path_argument(what: str, path: object) -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} takes a path (a str or os.PathLike), got {type(path).__name__}")
    name = os.fspath(path)
    if not isinstance(name, str):  # a PathLike of bytes
        raise TypeError(f"{what} takes a path (a str or os.PathLike), got a path of {type(name).__name__}")
    return name
