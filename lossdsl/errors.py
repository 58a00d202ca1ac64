"""Diagnostics and the one exception type, ``LossSpecError``.

A diagnostic has a code, a message, a span and optionally a hint (often a
did-you-mean). It renders like a compiler's::

    specs/credit.loss:9:21: error[E201]: unknown statistic 'fpr_gp' for fairness()
       9 | let fair = fairness(fpr_gp, group=sex)
         |                     ^^^^^^ did you mean 'fpr_gap'?
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .ast import Span

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: Severity = "error"
    # The source text the span points into, kept so the diagnostic renders alone.
    source: str | None = field(default=None, repr=False, compare=False)

    @property
    def location(self) -> str:
        """``file:line:col``; empty for a diagnostic about tensors rather than text."""
        if self.span is None:
            return ""
        filename = self.span.filename or "<spec>"
        return f"{filename}:{self.span.line}:{self.span.column}"

    def render(self, color: bool = False) -> str:
        paint = _Painter(color)
        severity = paint(self.severity, "red" if self.severity == "error" else "yellow", bold=True)
        where = f"{paint(self.location, bold=True)}: " if self.location else ""
        head = f"{where}{severity}[{self.code}]: {self.message}"
        excerpt = self._excerpt(paint)
        if excerpt:
            return f"{head}\n{excerpt}"
        if self.hint:
            return f"{head}\n  = {self.hint}"
        return head

    def _excerpt(self, paint: _Painter) -> str:
        if self.span is None or self.source is None:
            return ""
        lines = self.source.split("\n")  # as the lexer counts lines: form feeds and the like do not break them
        if not 1 <= self.span.line <= len(lines):
            return ""
        text = lines[self.span.line - 1].rstrip("\r").expandtabs(1)
        start = self.span.column
        end = self.span.end_column if self.span.end_line == self.span.line else len(text) + 1
        width = max(1, min(end, len(text) + 1) - start)
        gutter = str(self.span.line)
        pad = " " * len(gutter)
        caret = paint("^" * width, "red" if self.severity == "error" else "yellow", bold=True)
        hint = f" {self.hint}" if self.hint else ""
        return f" {gutter} | {text}\n {pad} | {' ' * (start - 1)}{caret}{hint}"

    def to_json(self) -> dict[str, object]:
        span = self.span
        return {
            "file": span.filename if span else None,
            "line": span.line if span else None,
            "column": span.column if span else None,
            "end_line": span.end_line if span else None,
            "end_column": span.end_column if span else None,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }

    def to_github(self) -> str:
        """A GitHub Actions workflow command that annotates the line in a pull request."""
        props = []
        if self.span is not None:
            if self.span.filename:
                props.append(f"file={self.span.filename}")
            props += [
                f"line={self.span.line}",
                f"col={self.span.column}",
                f"endLine={self.span.end_line}",
                f"endColumn={self.span.end_column}",
            ]
        props.append(f"title={self.code}")
        message = self.message + (f" ({self.hint})" if self.hint else "")
        message = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return f"::{self.severity} {','.join(props)}::{message}"


class LossSpecError(Exception):
    """A spec, or the tensors given to its module, is wrong. ``diagnostics`` lists every problem."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | str, code: str = "E400"):
        if isinstance(diagnostics, str):  # a problem with the tensors given at call time
            diagnostics = [Diagnostic(code, diagnostics)]
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(self.render())

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def render(self, color: bool = False) -> str:
        return "\n".join(d.render(color) for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest candidate, or None."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class _Painter:
    _CODES = {"red": "31", "yellow": "33"}

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str, color: str | None = None, bold: bool = False) -> str:
        if not self.enabled:
            return text
        codes = ([self._CODES[color]] if color else []) + (["1"] if bold else [])
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"
