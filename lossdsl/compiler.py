"""Spec to module: ``compile`` and ``load``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import ast
from .checks import check, plan_for
from .errors import Diagnostic, LossSpecError, did_you_mean
from .plan import Plan
from .runtime import LossModule


def compile(spec: str | ast.Spec, params: Mapping[str, float] | None = None, *, filename: str | None = None) -> LossModule:  # noqa: A001
    """Compile spec text (or a parsed ``Spec``) into a fresh ``LossModule``.

    ``params`` overrides the spec's ``param`` values by name. Parsing and checking are cached by
    text; the module is new on every call.
    """
    plan = plan_for(spec, filename) if isinstance(spec, str) else check(spec)
    return LossModule(plan, check_overrides(plan, params or {}))


def check_overrides(plan: Plan, params: Mapping[str, float]) -> dict[str, float]:
    """Validate ``param`` overrides: known names, numbers, inside each param's range."""
    declared = {p.name: p for p in plan.params}
    diagnostics = []
    values: dict[str, float] = {}
    for name, value in params.items():
        param = declared.get(name)
        if param is None:
            hint = did_you_mean(name, declared) or (
                f"the spec declares {', '.join(declared)}" if declared else "the spec declares no param"
            )
            diagnostics.append(Diagnostic("E105", f"unknown param '{name}'", hint=hint))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= ast.LARGEST_NUMBER:
            diagnostics.append(Diagnostic("E204", f"param '{name}' takes a finite number up to {ast.LARGEST_NUMBER:.4g}, "
                                          f"got {value!r}", param.span))
            continue
        if param.low is not None and param.high is not None and not param.low <= value <= param.high:
            diagnostics.append(
                Diagnostic("E205", f"param '{name}' = {value} lies outside its range [{param.low}, {param.high}]",
                           param.span, source=plan.source)
            )
            continue
        values[name] = float(value)
    if diagnostics:
        raise LossSpecError(diagnostics)
    return values


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
