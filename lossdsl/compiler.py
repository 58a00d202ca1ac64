"""Spec to module: ``compile`` and ``load``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import ast
from .binding import bind
from .checks import check, plan_for
from .errors import Diagnostic, LossSpecError
from .files import DEFAULT_MAX_BYTES, FileProblem, check_max_bytes, read_text
from .runtime import LossModule, build


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
    if not isinstance(spec, (str, ast.Spec)):
        raise TypeError(f"lossdsl.compile takes spec text (a str) or a lossdsl.Spec, got {type(spec).__name__}")
    if filename is not None and not isinstance(filename, str):
        raise TypeError(f"filename takes a str, got {type(filename).__name__}")
    root = _path_argument("include_root", include_root) if include_root is not None else None
    max_bytes = check_max_bytes(max_bytes)
    overrides = _params_argument(params)
    if isinstance(spec, str):
        plan = plan_for(spec, filename, include_root=root, max_bytes=max_bytes)
    else:
        plan = check(spec, include_root=root, max_bytes=max_bytes)
    return build(bind(plan, overrides=overrides))


def _params_argument(params: object) -> Mapping[str, float]:
    """``params=`` as given: a mapping from param names to numbers (the numbers are checked later)."""
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


def load(
    path: str | os.PathLike[str],
    params: Mapping[str, float] | None = None,
    *,
    include_root: str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LossModule:
    """Read, check and compile a ``.loss`` file (of at most ``max_bytes`` bytes; its includes
    confined to ``include_root``, by default the file's folder)."""
    name = _path_argument("lossdsl.load", path)
    return compile(read_spec(name, max_bytes), params, filename=name, include_root=include_root, max_bytes=max_bytes)


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
