"""README.md's and docs/fairness.md's lists follow the registry, as docs/terms.md does.

Each list sits between ``<!-- generated: NAME ... -->`` and ``<!-- end generated -->``;
``python -m lossdsl.reference`` rewrites them (and docs/terms.md), ``--check`` reports stale ones.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lossdsl import reference
from lossdsl.registry import REGISTRY, Term, TermParams, register

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page", reference.PAGES)
def test_the_generated_lists_are_up_to_date(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert "<!-- generated: " in text
    assert reference.regenerate(text, page) == text, f"{page} is stale: run `python -m lossdsl.reference`"


def test_the_lists_hold_what_the_registry_holds():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = {name.strip("`") for line in reference.readme_terms().splitlines() for name in line.split(": ")[1].split(", ")}
    assert listed == set(REGISTRY)
    assert "  - Constraints: `soft_bound`\n" in readme
    fairness = (ROOT / "docs" / "fairness.md").read_text(encoding="utf-8")
    assert "`group_loss_gap(INNER)`" in fairness and "`eo_ratio`" in fairness
    inner = {name.strip("`.\n") for name in reference.inner_terms().split(", ")}
    # per-sample terms whose samples are the first dimension's rows (ctc's lie along log_probs' second)
    assert inner == {name for name, term in REGISTRY.items()
                     if term.module.per_sample and getattr(term.module, "batch_dimension", 0) == 0}
    assert "ctc" not in inner
    assert {"ce", "mse", "triplet"} <= inner and "dice" not in inner and "fairness" not in inner


@pytest.fixture
def per_sample_term():
    """A term with per-sample losses, registered for one test (the docs tests read REGISTRY)."""

    class Params(TermParams):
        pred: str = "pred"

    @register("cube_error", Params, "A per-sample term for this test.")
    class CubeError(Term):
        per_sample = True

    yield "cube_error"
    del REGISTRY["cube_error"]


def test_a_new_term_makes_the_pages_stale_until_regenerated(per_sample_term, tmp_path):
    for page in (*reference.PAGES, "docs/terms.md"):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    assert sorted(reference.update(tmp_path, write=False)) == ["README.md", "docs/fairness.md", "docs/terms.md"]
    assert reference.update(tmp_path) != []
    assert reference.update(tmp_path, write=False) == []
    assert "  - Other terms: `cube_error`\n" in (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "`, `cube_error`.\n" in (tmp_path / "docs" / "fairness.md").read_text(encoding="utf-8")  # after the built-ins


def test_an_unknown_block_is_an_error():
    with pytest.raises(ValueError, match="README.md: unknown generated block 'nope'"):
        reference.regenerate("<!-- generated: nope -->\nold\n<!-- end generated -->\n", "README.md")


def test_the_command_checks_and_rewrites(tmp_path):
    for page in (*reference.PAGES, "docs/terms.md"):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("- Classification: `ce`", "- Classification: `old_term`, `ce`", 1),
                      encoding="utf-8")
    command = [sys.executable, "-m", "lossdsl.reference", str(tmp_path)]
    check = subprocess.run([*command, "--check"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert (check.returncode, check.stdout) == (1, "README.md: stale\n")
    write = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert (write.returncode, write.stdout) == (0, "README.md: regenerated\n")
    assert readme.read_text(encoding="utf-8") == (ROOT / "README.md").read_text(encoding="utf-8")
