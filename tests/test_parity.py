"""The parity harness: every registered term against the reference it registers (value and gradients).

A term registers its reference implementation and benchmark inputs with itself
(``register(..., cases=...)``, ``@lossdsl.term(..., cases=...)``; see ``lossdsl/parity.py``). This
file checks each built-in term's cases at ``parity.TINY`` sizes; ``benchmarks/terms.py`` times the
same cases at its sizes. The detailed parity tests (options, dtypes, edge cases) are in test_terms.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lossdsl
from lossdsl import parity
from lossdsl.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
ONE_FILE_TERM = ROOT / "tests" / "fixtures" / "one_file_term"


def _built_in(name: str) -> bool:
    return REGISTRY[name].module.__module__.startswith("lossdsl.library.")


CASES = [case for case in parity.registered_cases(parity.TINY) if _built_in(case.term)]


def test_every_built_in_term_registers_its_reference_and_inputs():
    assert [name for name in parity.terms_without_cases() if _built_in(name)] == []
    assert {case.term for case in CASES} == {name for name in REGISTRY if _built_in(name)}


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_a_term_matches_its_reference(case):
    parity.check_parity(case)


def test_the_harness_fails_a_term_that_differs_from_its_reference():
    """A reference off by 0.1% in value, or with another gradient, is caught."""
    case = next(case for case in CASES if case.term == "mse")
    with pytest.raises(AssertionError, match="mse\\(\\).*value"):
        parity.check_parity(dataclasses.replace(case, reference=lambda pred, target: 1.001 * case.reference(pred, target)))
    shifted = dataclasses.replace(  # the same value, a gradient twice as large
        case, reference=lambda pred, target: 2 * case.reference(pred, target) - case.reference(pred, target).detach())
    with pytest.raises(AssertionError, match="gradient of pred"):
        parity.check_parity(shifted)


def test_a_case_must_compile_to_its_term():
    case = dataclasses.replace(next(case for case in CASES if case.term == "mse"), spec="mae()")
    with pytest.raises(ValueError, match="does not compile to the single term mse"):
        parity.check_parity(case)


_EVERYWHERE = r"""
import contextlib, io, json, sys
sys.path.insert(0, "benchmarks")
import lossdsl
from lossdsl import cli, parity
import terms as benchmark

def printed(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()

cases = parity.registered_cases(parity.TINY)
mine = [case for case in cases if case.term == "squared_log_error"]
for case in mine:
    parity.check_parity(case)
small = benchmark.cases_at("small")
benchmark.check_coverage(small + benchmark.cases_at("large"))
with contextlib.redirect_stdout(io.StringIO()) as table:
    benchmark.main(["--quick", "--device", "cpu", "--size", "small", "--term", "squared_log_error"])
print(json.dumps({
    "terms": printed(["terms"]), "markdown": printed(["terms", "--markdown"]),
    "parity": [case.label for case in mine],
    "benchmark": [case.label for case in small if case.term == "squared_log_error"],
    "table": table.getvalue(),
}))
"""


def test_a_term_written_as_one_file_is_listed_documented_checked_and_benchmarked():
    """tests/fixtures/one_file_term holds one file (and its entry point): on the path, it is in
    ``lossdsl terms``, in docs/terms.md's generator, in the parity harness (and passes it) and in
    the benchmark's cases, with no edit anywhere else."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ONE_FILE_TERM), str(ROOT)])}
    run = subprocess.run([sys.executable, "-c", _EVERYWHERE], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    code, text = seen["terms"]
    assert code == 0 and "squared_log_error: Mean squared error of log(x + offset)" in text
    assert "    offset = 1.0: added before the logarithm, so that 0 is defined" in text
    code, markdown = seen["markdown"]
    assert code == 0
    other_terms = markdown.split("## Other terms\n", 1)[1]
    assert other_terms.lstrip().startswith("### squared_log_error\n")
    assert "| `offset` | `1.0` | added before the logarithm, so that 0 is defined |" in other_terms
    assert "Example: `squared_log_error(offset=0.5)`" in other_terms
    assert seen["parity"] == ["squared_log_error() [64, 3]", "squared_log_error(offset=0.5) [64, 3] offset 0.5"]
    assert seen["benchmark"] == ["squared_log_error() [4096, 8]", "squared_log_error(offset=0.5) [4096, 8] offset 0.5"]
    rows = [line for line in seen["table"].splitlines() if line.startswith("| squared_log_error")]
    assert len(rows) == 2 and all("| cpu " in row for row in rows)


def test_without_the_fixture_on_the_path_the_term_is_not_registered():
    """The test above proves the pickup: here, in this process, nothing else registers it."""
    assert "squared_log_error" not in REGISTRY
    assert torch.is_tensor(lossdsl.compile("mse()")(torch.zeros(1), torch.ones(1)))


@pytest.fixture
def benchmark(monkeypatch):
    """benchmarks/terms.py as a module (it imports its neighbour harness.py)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("benchmark_terms", ROOT / "benchmarks" / "terms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_takes_every_case_from_the_registry(benchmark):
    small = benchmark.cases_at("small")
    assert [case.label for case in small] == [case.label for case in parity.registered_cases(parity.SMALL)]
    assert {case.size for case in small} == {"small"} and {case.term for case in small} == set(REGISTRY)
    benchmark.check_coverage(small)  # every term has its cases: no error


def test_the_benchmark_refuses_a_term_without_cases(benchmark):
    @lossdsl.term("uncovered")
    def uncovered(pred, target):
        return (pred - target).abs().mean()

    try:
        with pytest.raises(SystemExit, match="no benchmark case for term\\(s\\) uncovered: register the term with cases="):
            benchmark.check_coverage(benchmark.cases_at("small"))
    finally:
        del REGISTRY["uncovered"]
