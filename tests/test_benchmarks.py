"""The speed benchmarks at toy sizes: they check both sides agree before timing, and their
reporting helpers compute what they say. No timing is asserted (timings belong to the benchmarks)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str, monkeypatch: pytest.MonkeyPatch):
    """A script of benchmarks/ as a module (they import their neighbours overhead.py and harness.py)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def overhead(monkeypatch):
    threads = torch.get_num_threads()
    yield load("overhead", monkeypatch)
    torch.set_num_threads(threads)  # the scripts' --threads must not leak into other tests


def test_block_ratios_divide_each_blocks_medians(overhead):
    harness = sys.modules["harness"]  # overhead.py's import of it
    # blocks of two repetitions: medians (2+4)/2 = 3 over (1+1)/2 = 1, then 8 over 4
    assert harness.block_ratios([2.0, 4.0, 8.0, 8.0], [1.0, 1.0, 4.0, 4.0], blocks=2) == [3.0, 2.0]
    # 1..11: the median is 6; with the inclusive method the deciles sit at 1 + k * (11 - 1) / 10
    assert harness.spread([float(v) for v in range(1, 12)]) == (6.0, 2.0, 10.0)
    assert harness.format_spread((1.234, 1.2, 1.27)) == "1.23 [1.20, 1.27]"


def test_peak_memory_on_the_cpu_is_the_largest_running_sum_of_allocations(overhead):
    harness = sys.modules["harness"]  # overhead.py's import of it

    def run():
        first = torch.ones(2**20)  # 4 MiB
        second = torch.ones(2**19)  # 2 MiB more: 6 MiB
        del first  # 2 MiB live
        third = torch.ones(2**20)  # 6 MiB again, never more
        return second, third

    assert harness.peak_memory_bytes(run, torch.device("cpu")) == 6 * 2**20


def test_overhead_checks_every_row_then_reports_both_baselines(overhead, capsys):
    results = overhead.run(["--quick", "--n", "256", "--device", "cpu", "--markdown"])
    out = capsys.readouterr().out
    keys = [row.key for row in overhead.ROWS]
    assert [result.row.key for result in results] == keys
    for row in overhead.ROWS:
        sides = " = ".join(row.sides())
        assert f"values and gradients equal: {row.key} N=256 cpu: lossdsl = {sides}" in out
    for result in results:
        assert {len(times) for times in result.times.values()} == {result.reps}  # interleaved: one each per repetition
        assert result.fastest_known in result.row.known
        median, low, high = result.ratio(result.fastest_known)
        assert low <= median <= high
    # the README's table: a line per baseline, two where the term's algorithm was not the fastest known form
    markdown = [line for line in out.splitlines()
                if line.startswith("| ") and line.count("|") == 4 and not line.startswith("| spec |")]
    assert len(markdown) == sum(1 + (result.fastest_known != result.row.same) for result in results)
    assert re.search(r"\| the README's one-liner \(2 groups in the data\) \| same algorithm \| \d+\.\d\d \[", out)


def test_overhead_stops_when_a_hand_written_side_differs(overhead, monkeypatch):
    wrong = overhead.Row("ce", "ce", "ce()", overhead.class_inputs,
                         {"doubled": lambda: overhead.Function(lambda p, t: 2 * F.cross_entropy(p, t))},
                         known=("doubled",), same="doubled")
    monkeypatch.setattr(overhead, "ROW_KEYS", {"ce": wrong})
    with pytest.raises(SystemExit, match="ce N=256 cpu: doubled differs from lossdsl"):
        overhead.run(["--quick", "--n", "256", "--device", "cpu", "--row", "ce"])


def test_the_hand_written_gaps_agree_with_each_other(overhead):
    """The two-group forms and the ranked one compute one value: the rates' largest minus smallest."""
    inputs = overhead.binary_inputs(512, torch.device("cpu"))
    prob, label = torch.sigmoid(inputs["pred"]), inputs["target"].float()
    for rate in overhead.RATES:
        num, den = overhead.RATES[rate](prob, label)
        group = inputs["sex"] == 1
        expected = (num[group].sum() / den[group].sum() - num[~group].sum() / den[~group].sum()).abs()
        for gap in overhead.GAPS.values():
            torch.testing.assert_close(gap(num, den, inputs["sex"]), expected)


def test_the_cuda_check_dry_run_passes_its_checks_on_the_cpu(monkeypatch, capsys):
    threads = torch.get_num_threads()
    try:
        cuda_check = load("cuda_check", monkeypatch)
        with cuda_check.HostReads() as reads:  # the culprit finder sees .item() and boolean indexing
            torch.ones(3).sum().item()
            torch.arange(3)[torch.tensor([True, False, True])]
        assert reads.seen == ["aten._local_scalar_dense.default", "aten.index.Tensor with a boolean mask"]
        assert cuda_check.main(["--dry-run"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "losses and parameters equal eager" in out
    assert out.count("values and gradients equal:") == 6
    assert "all checks passed" in out
    assert re.search(r"\(d\) one-liner N=4096, 32 groups, eager forward \+ backward: lossdsl \d+\.\d+ ms", out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_the_cuda_check_without_cuda_says_so(monkeypatch, capsys):
    assert load("cuda_check", monkeypatch).main([]) == 0
    assert "no CUDA device here, nothing checked" in capsys.readouterr().out


def test_a_part_of_the_cuda_check_that_breaks_fails_it_and_the_rest_still_runs(monkeypatch, capsys):
    threads = torch.get_num_threads()
    try:
        cuda_check = load("cuda_check", monkeypatch)

        def broken(device, n):
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

        monkeypatch.setattr(cuda_check, "check_graph", broken)
        monkeypatch.setattr(cuda_check, "table", lambda device, dry_run, full: ["skipped by the test"])
        assert cuda_check.main(["--dry-run"]) == 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    summary = out[out.index("summary:"):]
    assert "(b) broke: RuntimeError: operation not permitted when stream is capturing\n" in summary
    assert "(c) skipped by the test" in summary and "(d) one-liner N=4096" in summary
    assert "1 check(s) failed" in summary
