"""Spec to module: ``compile`` and ``load``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import ast
from .checks import check, plan_for
from .errors import Diagnostic, LossSpecError
from .runtime import LossModule


def compile(spec: str | ast.Spec, params: Mapping[str, float] | None = None, *, filename: str | None = None) -> LossModule:  # noqa: A001
    """Compile spec text (or a parsed ``Spec``) into a fresh ``LossModule``.

    Parsing and checking are cached by text; the module is new on every call.
    """
    if params:
        names = ", ".join(sorted(params))
        raise LossSpecError([Diagnostic("E101", f"the spec declares no param to override ({names})",
                                        hint="param statements are not supported yet")])
    plan = plan_for(spec, filename) if isinstance(spec, str) else check(spec)
    return LossModule(plan)


def load(path: str | os.PathLike[str], params: Mapping[str, float] | None = None) -> LossModule:
    """Read, check and compile a ``.loss`` file."""
    return compile(read_spec(path), params, filename=os.fspath(path))


def read_spec(path: str | os.PathLike[str]) -> str:
    """The text of a spec file; an unreadable or non-UTF-8 file is a ``LossSpecError``."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            data = file.read()
    except OSError as exc:
        span = ast.Span(line=1, column=1, end_line=1, end_column=1, filename=name)
        raise LossSpecError([Diagnostic("E010", f"cannot read the file: {exc.strerror or exc}", span)]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        span = ast.Span(line=line, column=column, end_line=line, end_column=column + 1, filename=name)
        raise LossSpecError([Diagnostic("E011", "the file is not valid UTF-8", span)]) from None
