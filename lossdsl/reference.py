"""The term reference, generated from the registry: ``docs/terms.md`` and ``lossdsl terms``."""

from __future__ import annotations

import inspect

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .registry import REGISTRY, TermDef

# Headings for the built-in families, by module; anything else (custom terms) is "Other terms".
FAMILIES = {
    "lossdsl.library.classification": "Classification",
    "lossdsl.library.regression": "Regression",
    "lossdsl.library.segmentation": "Segmentation",
    "lossdsl.library.divergence": "Divergences",
    "lossdsl.library.metric_learning": "Metric learning",
    "lossdsl.library.reductions": "Reductions of tensor expressions",
    "lossdsl.library.penalties": "Weight penalties",
    "lossdsl.library.group_fairness": "Fairness",
    "lossdsl.library.soft_bound": "Constraints",
}
NOT_SET = "—"

_HEADER = """\
# Terms

<!-- Generated from the term registry by `lossdsl terms --markdown > docs/terms.md`; a test fails
when this file and the registry disagree. Edit the terms' docstrings, not this file. -->

Every term returns a scalar loss. Each reads `pred` and `target` unless told otherwise
(`huber(pred=box, target=box_target)`); `reduction=mean|sum` and `sample_weight=NAME` (per-sample
weights `[N]`: `mean` becomes `sum(w * loss) / sum(w)`) work the same way everywhere. Terms that
average over samples also take `reduction=none`: the unreduced losses, of torch's
`reduction="none"` shape, times `sample_weight` when given; batch-level terms (`dice`, `tversky`,
`soft_f1`, `fairness`, `l1`, `l2`) refuse it (E204). Sums and counts accumulate in float32 at
least, whatever the inputs' dtype, and the loss comes back in the inputs' dtype. In the
tables, an input parameter's default is the input name it reads, `—` means not set (leave it
out), and `required` parameters have no default. `lossdsl terms` prints the same in a terminal.
"""


def shown_default(field: FieldInfo) -> str:
    """A parameter's default as a spec would write it."""
    if field.is_required() or field.default is PydanticUndefined:
        return "required"
    value = field.default
    if value is None:
        return NOT_SET
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(repr, value)) + "]"
    return value if isinstance(value, str) else repr(value)


def term_markdown(term: TermDef) -> str:
    lines = [f"### {term.name}", "", term.doc, "", "| name | default | description |", "| --- | --- | --- |"]
    for name, field in term.params.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `{shown_default(field)}` | {description} |")
    semantics = inspect.cleandoc(term.module.__doc__ or "")
    if semantics:
        lines += ["", semantics]
    lines += ["", f"Example: `{term.example}`", ""]
    return "\n".join(lines)


def terms_markdown() -> str:
    """The whole of ``docs/terms.md``."""
    families: dict[str, list[TermDef]] = {}
    for term in REGISTRY.values():
        families.setdefault(FAMILIES.get(term.module.__module__, "Other terms"), []).append(term)
    order = [*FAMILIES.values(), "Other terms"]
    sections = [_HEADER]
    for family in sorted(families, key=order.index):
        sections.append(f"## {family}\n")
        sections += [term_markdown(term) for term in families[family]]
    return "\n".join(sections).rstrip() + "\n"


def terms_text() -> str:
    """A plain listing for the terminal."""
    lines = []
    for term in REGISTRY.values():
        lines.append(f"{term.name}: {term.doc}")
        for name, field in term.params.model_fields.items():
            lines.append(f"    {name} = {shown_default(field)}: {field.description or ''}")
        lines.append(f"    example: {term.example}")
    return "\n".join(lines) + "\n"
