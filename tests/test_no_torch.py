"""`import lossdsl`, the checks and `lossdsl check` import no torch (issue 16): the terms are declared in
torch-free modules (``lossdsl.library.params``), their classes imported on first use of ``TermDef.module``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lossdsl
from lossdsl import duals, schedules, tensor_eval, weightings
from lossdsl.declarations import REGISTRY, TermDef, declare, module_flags
from lossdsl.library.params import group_fairness as fairness_params
from lossdsl.registry import Term, implements

#: Every static feature the checks reach: each kind of term, a schedule, a weighting, group_loss,
#: a tensor expression, a condition, constraints with each method, params and lets.
SPEC = textwrap.dedent("""\
    inputs:
        pred: logits[N]
        target: binary[N]
        sex: group[N] of 2
        y: real[N]
        z: real[N]

    param lam = 0.1 in [0, 10]

    let data = ce(weight=balanced, label_smoothing=0.05)
    let fair = fairness(fpr_gap, group=sex)
    let spread = mean(abs(y - z) + clamp(y, -1, 1))
    let grouped = fairness(group_loss(mse(pred=y, target=z)), group=sex)
    let tasks = dwa(mae(pred=y, target=z), huber(pred=y, target=z, delta=2))

    loss = uncertainty(data, spread) + lam * warmup(100) * fair + cosine(1, 0, 10) * grouped + soft_bound(y <= 100) + tasks
    subject to fairness(eo_gap, group=sex) <= 0.02 as eo
    subject to mae(pred=y, target=z) <= 0.5 using penalty(10)
    subject to mse(pred=y, target=z) == 0.1 using augmented(1.0)
    """)


def run_without_torch(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter; it sets ``result``. Returns it with ``torch``: whether
    torch was imported, and ``classes``: the term modules (lossdsl.library.<family>) imported."""
    program = textwrap.dedent("""\
        import json, sys
        result = {}
        """) + textwrap.dedent(code) + textwrap.dedent("""
        result["torch"] = "torch" in sys.modules
        result["classes"] = sorted(m for m in sys.modules if m.startswith("lossdsl.library.")
                                   and not m.startswith("lossdsl.library.params"))
        print(json.dumps(result))
        """)
    done = subprocess.run([sys.executable, "-c", program], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_spec_uses_every_static_feature_and_compiles(tmp_path):
    """The spec of the tests below is a valid one: checked and compiled here (with torch)."""
    loss_fn = lossdsl.compile(SPEC)
    assert [c.name for c in loss_fn.plan.constraints] == ["eo", "constraint_2", "constraint_3"]
    assert {t.term.name for t in loss_fn.plan.terms} == {"ce", "fairness", "huber", "mae", "mean", "mse", "soft_bound"}


def test_import_lossdsl_imports_no_torch(tmp_path):
    result = run_without_torch("""\
        import lossdsl
        result["names"] = sorted(n for n in lossdsl.__all__ if n in vars(lossdsl))
        """, tmp_path)
    assert result["torch"] is False
    assert result["classes"] == []
    # what needs torch is loaded on first use; every other name of __all__ is there at once
    assert set(lossdsl.__all__) - set(result["names"]) == {"LossModule", "term", "watch"}


def test_lossdsl_check_imports_no_torch(tmp_path):
    spec = tmp_path / "every.loss"
    spec.write_text(SPEC, encoding="utf-8")
    broken = tmp_path / "broken.loss"
    broken.write_text("loss = ce(weight=balanced) + fairness(fpr_gap, group=sex, hard=maybe)\n", encoding="utf-8")
    result = run_without_torch(f"""\
        import runpy
        for argv in (["check", "--param", "lam=0.3", {str(spec)!r}], ["check", "--format", "json", {str(broken)!r}],
                     ["fmt", "--check", {str(spec)!r}], ["terms"]):
            sys.argv = ["lossdsl", *argv]
            try:
                runpy.run_module("lossdsl", run_name="__main__")
            except SystemExit as exit:
                result[argv[0] + str(len(result))] = exit.code
        """, tmp_path)
    assert result["torch"] is False and result["classes"] == []
    check, check_broken, fmt, terms = (result[key] for key in sorted(k for k in result if k[-1].isdigit()))
    assert (check, check_broken, terms) == (0, 1, 0)
    assert fmt in (0, 1)  # formatted or not: either way without torch


def test_the_library_check_imports_no_torch(tmp_path):
    result = run_without_torch(f"""\
        import lossdsl
        plan = lossdsl.check(lossdsl.parse({SPEC!r}))
        result["terms"] = len(plan.terms)
        try:
            lossdsl.check(lossdsl.parse("loss = ce(reduction=none) + soft_f1(reduction=none)"))
        except lossdsl.LossSpecError as error:
            result["codes"] = [d.code for d in error.diagnostics]
        """, tmp_path)
    assert result["torch"] is False and result["classes"] == []
    assert result["terms"] == len(lossdsl.check(lossdsl.parse(SPEC)).terms)
    assert result["codes"] == ["E204"]  # soft_f1 has no per-sample form: read from its declaration


def test_every_example_is_checked_without_torch(tmp_path):
    """Each built-in term's example, checked (valid or not) in one process that never imports torch."""
    examples = {name: term.example for name, term in REGISTRY.items() if term.implementation.startswith("lossdsl.library.")}
    result = run_without_torch(f"""\
        import lossdsl
        result["checked"] = {{}}
        for name, example in {examples!r}.items():
            try:
                lossdsl.check(lossdsl.parse(f"loss = {{example}}"))
                result["checked"][name] = "ok"
            except lossdsl.LossSpecError as error:
                result["checked"][name] = [d.code for d in error.diagnostics]
        """, tmp_path)
    assert result["torch"] is False and result["classes"] == []
    expected = {}
    for name, example in examples.items():
        try:
            lossdsl.check(lossdsl.parse(f"loss = {example}"))
            expected[name] = "ok"
        except lossdsl.LossSpecError as error:
            expected[name] = [d.code for d in error.diagnostics]
    assert result["checked"] == expected
    assert len(expected) >= 40  # every built-in term, checked in the subprocess too


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_declaration_matches_its_class(name):
    """What the checks read from the declaration is what the class says (``implements`` refuses a mismatch)."""
    term = REGISTRY[name]
    module = term.module
    assert issubclass(module, torch.nn.Module)
    assert f"{module.__module__}:{module.__qualname__}" == term.implementation
    assert module_flags(module) == term.flags() == (module.per_sample, module.sample_losses,
                                                    getattr(module, "batch_dimension", 0))
    if issubclass(module, Term):
        assert term.has_sample_losses() == module.has_sample_losses()
    if term.implementation.startswith("lossdsl.library."):
        assert term.cases is not None  # the implementation gave its reference cases


def _declared(name: str, **flags) -> TermDef:
    return declare(name, lossdsl.TermParams, "a test term", implementation=f"{__name__}:Elementwise", **flags)


class Elementwise(Term):
    per_sample = True

    def forward(self, pred):
        return pred.mean()


def test_implements_refuses_a_class_whose_flags_differ_from_the_declaration():
    _declared("declared_batch_level")  # declared without per_sample, which the class has
    try:
        with pytest.raises(ValueError, match=r"declared_batch_level.*per_sample=False.*per_sample=True"):
            implements("declared_batch_level")(Elementwise)
        with pytest.raises(RuntimeError, match="marks no class @implements"):
            REGISTRY["declared_batch_level"].module  # noqa: B018
    finally:
        del REGISTRY["declared_batch_level"]
    _declared("declared_per_sample", per_sample=True)
    try:
        assert implements("declared_per_sample", cases=None)(Elementwise) is Elementwise
        assert REGISTRY["declared_per_sample"].module is Elementwise
    finally:
        del REGISTRY["declared_per_sample"]


def test_the_static_tables_agree_with_the_torch_ones():
    assert {name: rule[1:] for name, rule in duals.METHODS.items()} == duals.METHOD_ARGUMENTS
    assert {name: entry[:2] for name, entry in schedules.SCHEDULES.items()} == schedules.SCHEDULE_PARAMS
    assert {name: entry[0] for name, entry in weightings.WEIGHTINGS.items()} == weightings.WEIGHTING_PARAMS
    assert tensor_eval.TORCH_FUNCTIONS.keys() == tensor_eval.FUNCTIONS.keys()
    # fairness's smallest temperature, written out without torch: float32's smallest normal number
    assert fairness_params._SMALLEST_TEMPERATURE == torch.finfo(torch.float32).tiny


def test_names_that_need_torch_still_import():
    from lossdsl import LossModule, term, watch
    from lossdsl.runtime import LossModule as runtime_module
    from lossdsl.tensor_expr import compile_tensor_expr

    assert LossModule is runtime_module and lossdsl.LossModule is LossModule
    assert callable(term) and callable(watch) and compile_tensor_expr is tensor_eval.compile_tensor_expr
    assert isinstance(lossdsl.compile("mse()"), LossModule)
    assert lossdsl.registry.REGISTRY is REGISTRY  # a submodule as an attribute, as before


# -- the grammar's cache: lark's LALR tables kept between processes ---------------------------------

_PARSE_AND_LOG = """\
import logging, sys
import lark
lark.logger.setLevel(logging.DEBUG)
import lossdsl
print(lossdsl.parse("loss = ce() + 0.5 * mse(pred=y, target=z)\\n").objective.value)
"""


def _parse_in_fresh_process(cache_home: Path) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(cache_home)}
    return subprocess.run([sys.executable, "-c", _PARSE_AND_LOG], capture_output=True, text=True, timeout=120, env=env)


def test_the_grammar_is_analysed_once_and_cached_privately(tmp_path):
    first = _parse_in_fresh_process(tmp_path)
    assert first.returncode == 0, first.stderr
    cache = next((tmp_path / "lossdsl").glob("grammar-*.lark-cache"))
    assert "Saving grammar to cache" in first.stderr and "Loading grammar from cache" not in first.stderr
    assert (tmp_path / "lossdsl").stat().st_mode & 0o777 == 0o700  # only the user writes the pickle
    second = _parse_in_fresh_process(tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"Loading grammar from cache: {cache}" in second.stderr and "Saving" not in second.stderr
    expected = f"{lossdsl.parse('loss = ce() + 0.5 * mse(pred=y, target=z)').objective.value}\n"
    assert first.stdout == second.stdout == expected  # the same tree from the cached tables


def test_a_broken_or_unusable_cache_costs_only_time(tmp_path):
    (tmp_path / "lossdsl").mkdir(mode=0o700)
    (tmp_path / "lossdsl" / f"grammar-py{sys.version_info[0]}{sys.version_info[1]}.lark-cache").write_bytes(b"not a cache\n")
    broken = _parse_in_fresh_process(tmp_path)
    assert broken.returncode == 0, broken.stderr
    expected = f"{lossdsl.parse('loss = ce() + 0.5 * mse(pred=y, target=z)').objective.value}\n"
    assert broken.stdout == expected  # rebuilt (and rewritten) past the broken file
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("", encoding="utf-8")  # XDG_CACHE_HOME is a file: no cache, still a parser
    unusable = _parse_in_fresh_process(not_a_folder)
    assert unusable.returncode == 0, unusable.stderr
    assert unusable.stdout == broken.stdout and "cache" not in unusable.stderr.lower()


def test_no_pickle_is_read_from_a_folder_or_file_others_may_write(tmp_path, monkeypatch):
    from lossdsl.parsing import _grammar_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = _grammar_cache()
    assert path and Path(path).parent == tmp_path / "lossdsl"
    (tmp_path / "lossdsl").chmod(0o777)  # a folder anyone may write: its pickle could be anyone's
    assert _grammar_cache() is False
    (tmp_path / "lossdsl").chmod(0o700)
    Path(path).write_bytes(b"")
    Path(path).chmod(0o666)  # a file anyone may write
    assert _grammar_cache() is False
    Path(path).chmod(0o600)
    assert _grammar_cache() == path


def test_a_relative_cache_home_is_ignored_and_no_home_is_made(tmp_path, monkeypatch):
    from lossdsl.parsing import _grammar_cache

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG rule: only absolute paths count
    assert _grammar_cache() == str(home / ".cache" / "lossdsl" / Path(_grammar_cache()).name)
    assert not (tmp_path / "relative").exists()
    monkeypatch.setenv("HOME", str(tmp_path / "missing"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _grammar_cache() is False and not (tmp_path / "missing").exists()
