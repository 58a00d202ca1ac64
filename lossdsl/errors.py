"""Diagnostics and the one exception type, ``LossSpecError``.

A diagnostic has a code, a message, a span and optionally a hint (often a
did-you-mean). It renders like a compiler's::

    specs/credit.loss:9:21: error[E201]: unknown statistic 'fpr_gp' for fairness()
       9 | let fair = fairness(fpr_gp, group=sex)
         |                     ^^^^^^ did you mean 'fpr_gap'?
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .ast import Span

Severity = Literal["error", "warning"]

#: The most characters of a spec line a diagnostic quotes (with "..." where the line goes on).
EXCERPT_WIDTH = 120
#: The most characters of a message or hint kept: they may quote a name or a path from the spec.
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: Severity = "error"
    # The source text the span points into, kept so the diagnostic renders alone.
    source: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A message may quote a name, a token or a path from the spec, which may be a megabyte long.
        object.__setattr__(self, "message", _clip(self.message))
        if self.hint is not None:
            object.__setattr__(self, "hint", _clip(self.hint))

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
            return _printable(f"{head}\n{excerpt}")
        if self.hint:
            return _printable(f"{head}\n  = {self.hint}")
        return _printable(head)

    def _excerpt(self, paint: _Painter) -> str:
        if self.span is None or self.source is None:
            return ""
        starts = _line_starts(self.source)
        if not 1 <= self.span.line <= len(starts):
            return ""
        begin = starts[self.span.line - 1]
        finish = starts[self.span.line] - 1 if self.span.line < len(starts) else len(self.source)
        length = finish - begin - (self.source[finish - 1 : finish] == "\r")
        start = max(self.span.column, 1)
        end = self.span.end_column if self.span.end_line == self.span.line else length + 1
        width = max(1, min(end, length + 1) - start)
        # At most EXCERPT_WIDTH characters of the line, around the caret: a line can be a megabyte.
        low = 0 if length <= EXCERPT_WIDTH else min(max(0, start - 1 - EXCERPT_WIDTH // 3), length - EXCERPT_WIDTH)
        high = min(length, low + EXCERPT_WIDTH)
        width = max(1, min(width, high - (start - 1)))
        text = self.source[begin + low : begin + high].expandtabs(1)  # (a tab is one column, as the lexer counts)
        before, after = ("..." if low else ""), ("..." if high < length else "")
        gutter = str(self.span.line)
        pad = " " * len(gutter)
        caret = paint("^" * width, "red" if self.severity == "error" else "yellow", bold=True)
        hint = f" {self.hint}" if self.hint else ""
        indent = " " * (len(before) + start - 1 - low)
        return f" {gutter} | {before}{text}{after}\n {pad} | {indent}{caret}{hint}"

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
        return _printable(f"::{self.severity} {','.join(props)}::{message}")


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


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _printable(text: str) -> str:
    """``text`` with lone surrogates (from a Python string, never from a UTF-8 file) escaped, so
    that printing the diagnostic cannot raise UnicodeEncodeError."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@functools.lru_cache(maxsize=8)
def _line_starts(source: str) -> tuple[int, ...]:
    """Where each line of ``source`` starts, found once per text (not once per diagnostic: a spec
    can draw thousands of warnings). Lines end at ``\n`` only, as the lexer counts them."""
    return (0, *(match.end() for match in re.finditer("\n", source)))


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest candidate, or None."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class LossSpecWarning(UserWarning):
    """A spec that runs, but not as well as it could: a constraint's rates from one batch, for one."""


class _Painter:
    _CODES = {"red": "31", "yellow": "33"}

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str, color: str | None = None, bold: bool = False) -> str:
        if not self.enabled:
            return text
        codes = ([self._CODES[color]] if color else []) + (["1"] if bold else [])
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"
