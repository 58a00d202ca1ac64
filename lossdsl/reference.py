"""The term reference, generated from the registry: ``docs/terms.md``, ``lossdsl terms``, and the
lists of terms in README.md and docs/fairness.md (``python -m lossdsl.reference`` rewrites them)."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .declarations import REGISTRY, TermDef

# Headings for the built-in families, by module; anything else (custom terms) is "Other terms".
FAMILIES = {
    "lossdsl.library.classification": "Classification",
    "lossdsl.library.regression": "Regression",
    "lossdsl.library.segmentation": "Segmentation",
    "lossdsl.library.divergence": "Divergences",
    "lossdsl.library.metric_learning": "Metric learning",
    "lossdsl.library.sequence": "Sequences",
    "lossdsl.library.ctc": "Sequences",
    "lossdsl.library.reinforcement": "Reinforcement learning",
    "lossdsl.library.reductions": "Reductions of tensor expressions",
    "lossdsl.library.penalties": "Weight penalties",
    "lossdsl.library.group_fairness": "Fairness",
    "lossdsl.library.group_dro": "Fairness",
    "lossdsl.library.soft_bound": "Constraints",
}
NOT_SET = "—"


def _family(term: TermDef) -> str:
    """The heading of the term's family, by the module of its class (read from the declaration: no import)."""
    return FAMILIES.get(term.implementation.partition(":")[0], "Other terms")

_HEADER = """\
# Terms

<!-- Generated from the term registry by `lossdsl terms --markdown > docs/terms.md`; a test fails
when this file and the registry disagree. Edit the terms' docstrings, not this file. -->

Every term returns a scalar loss. Each reads `pred` and `target` unless told otherwise
(`huber(pred=box, target=box_target)`); `reduction=mean|sum` and `sample_weight=NAME` (per-sample
weights `[N]`: `mean` becomes `sum(w * loss) / sum(w)`) work the same way everywhere. Terms that
average over samples also take `reduction=none`: the unreduced losses, of torch's
`reduction="none"` shape, times `sample_weight` when given (the overlap losses `dice`, `tversky`,
`jaccard`: `[N, C]`, per image and class); batch-level terms (`soft_f1`, `fairness`, `l1`, `l2`)
refuse it (E204). Sums and counts accumulate in float32 at
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
        families.setdefault(_family(term), []).append(term)
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


# -- Generated blocks in hand-written pages ---------------------------------------------------------
#
# README.md and docs/fairness.md hold lists that follow the registry between the markers
#     <!-- generated: NAME ... -->
#     ...
#     <!-- end generated -->
# ``python -m lossdsl.reference`` rewrites them (and docs/terms.md); ``--check`` only reports.


def _names(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def readme_terms() -> str:
    """README.md's list of terms: each family's names, in the order of docs/terms.md."""
    families: dict[str, list[str]] = {}
    for term in REGISTRY.values():
        families.setdefault(_family(term), []).append(term.name)
    order = [*FAMILIES.values(), "Other terms"]
    return "".join(f"  - {family}: {_names(families[family])}\n" for family in sorted(families, key=order.index))


def fairness_statistics() -> str:
    """docs/fairness.md's list of every statistic ``fairness`` takes."""
    from .library.params.group_fairness import GROUP_LOSS_FORMS, FairnessParams

    rates = [name for name in FairnessParams.options("stat")]
    forms = [f"{form}(INNER)" for form in GROUP_LOSS_FORMS]
    return f"Every statistic: {_names(rates + forms)}.\n"


def inner_terms() -> str:
    """docs/fairness.md's list of the terms ``group_loss(INNER)`` takes: those with per-sample parts."""
    # (ctc has per-sample losses, but along log_probs' second dimension: group_loss refuses it)
    names = [name for name, term in REGISTRY.items()
             if term.per_sample and term.batch_dimension == 0]
    return f"{_names(names)}.\n"


#: Generated block name -> its text.
BLOCKS = {"readme-terms": readme_terms, "fairness-statistics": fairness_statistics, "inner-terms": inner_terms}
#: The pages that hold generated blocks, relative to a checkout.
PAGES = ("README.md", "docs/fairness.md")
_BLOCK = re.compile(r"(?P<start>^[ \t]*<!-- generated: (?P<name>[\w-]+)[^\n]*-->\n)(?P<body>.*?)"
                    r"(?P<end>^[ \t]*<!-- end generated -->)", re.M | re.S)


def regenerate(text: str, where: str = "the page") -> str:
    """``text`` with every generated block's body replaced by its generator's output."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"{where}: unknown generated block {name!r}; known: {', '.join(BLOCKS)}")
        return match["start"] + BLOCKS[name]() + match["end"]

    return _BLOCK.sub(fill, text)


def update(root: Path, write: bool = True) -> list[str]:
    """Regenerate docs/terms.md and the generated blocks of ``PAGES`` under ``root``; the stale files."""
    stale = []
    expected = {"docs/terms.md": terms_markdown()}
    for page in PAGES:
        expected[page] = regenerate((root / page).read_text(encoding="utf-8"), page)
    for page, text in expected.items():
        path = root / page
        if path.read_text(encoding="utf-8") != text:
            stale.append(page)
            if write:
                path.write_text(text, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lossdsl.reference",
        description="Regenerate docs/terms.md and the registry's lists in README.md and docs/fairness.md.",
    )
    parser.add_argument("root", nargs="?", default=".", type=Path, help="the checkout (default: the current folder)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = update(args.root, write=not args.check)
    for page in stale:
        print(f"{page}: {'stale' if args.check else 'regenerated'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
