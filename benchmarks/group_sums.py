"""How fairness sums its groups: float64 (the term's way) against float32 sums and blocked float32 sums.

    python benchmarks/group_sums.py --threads 1            # N = 4096, 65536, 2^20
    python benchmarks/group_sums.py --threads 1 --quick    # a smoke run

``fairness(fpr_gap, group=sex)`` on two groups, forward and backward, on its three slot paths
(counted on the CPU, ranked as on CUDA and under torch.compile, ``groups=2``). Each variant is the
term itself with its summing swapped in:

- **float64**: the term as it is: the columns built from ``p`` cast to float64, one scatter, the
  rates and gap in float64, the value cast back.
- **float32**: ``_SUM_DTYPE`` float32, the term before: one float32 scatter, which adds each
  slot's values one after another, so its error grows with N.
- **blocked**: float32 scatter into ``B x K`` slots (``slot + K * (row // 2048)``), each slot's B
  partials then added in float64: every sequential run is at most 2048 long. Not for the ranked
  path (``B x N`` slots).

Times are medians over interleaved repetitions (each round runs the variants in order, then in
reverse), as ratios to float64; peak memory is the profiler's (``harness.peak_memory_bytes``); the
error is relative to the gap computed in float64 through 0/1 masks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import lossdsl  # noqa: E402
import lossdsl.library.group_fairness as group_fairness  # noqa: E402

BLOCK = 2048


def blocked_summed(columns: torch.Tensor, slots: torch.Tensor, num_slots: int) -> torch.Tensor:
    """float32 sums of at most BLOCK rows per slot, their partials added in float64."""
    n = columns.shape[1]
    blocks = (n + BLOCK - 1) // BLOCK
    wide = slots + num_slots * (torch.arange(n, device=slots.device) // BLOCK)
    partial = columns.new_zeros(columns.shape[0], blocks * num_slots).scatter_add_(1, wide.expand_as(columns), columns)
    return partial.view(columns.shape[0], blocks, num_slots).double().sum(1).T


VARIANTS = {
    "float64": lambda: mock.patch.object(group_fairness, "_SUM_DTYPE", torch.float64),
    "float32": lambda: mock.patch.object(group_fairness, "_SUM_DTYPE", torch.float32),
    "blocked": lambda: _both(mock.patch.object(group_fairness, "_SUM_DTYPE", torch.float32),
                             mock.patch.object(group_fairness, "_summed", blocked_summed)),
}


class _both:
    def __init__(self, *patches):  # noqa: ANN002
        self.patches = patches

    def __enter__(self):
        for patch in self.patches:
            patch.__enter__()

    def __exit__(self, *exc):  # noqa: ANN002
        for patch in reversed(self.patches):
            patch.__exit__(*exc)


PATHS = {  # (spec, whether the CPU may read the codes)
    "counted": ("fairness(fpr_gap, group=sex)", True),
    "ranked": ("fairness(fpr_gap, group=sex)", False),
    "groups=2": ("fairness(fpr_gap, group=sex, groups=2)", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_common_arguments(parser)
    parser.add_argument("--n", type=int, action="append", help="batch sizes (default: 4096, 65536, 2^20)")
    args = parser.parse_args()
    device = harness.devices(args)[0]
    sizes = args.n or [4096, 65536, 1 << 20]
    harness.print_preamble("fairness(fpr_gap, group=sex), two groups", args)
    harness.print_header("| N | path | variant | time / float64 | peak memory | relative error |")
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        pred = torch.randn(n, generator=g).to(device).requires_grad_(True)
        target = (torch.rand(n, generator=g) < 0.3).long().to(device)
        sex = torch.randint(0, 2, (n,), generator=g).to(device)
        prob, negative = torch.sigmoid(pred.detach()).double(), 1 - target.double()
        rates = [(prob * negative * (sex == s)).sum() / (negative * (sex == s)).sum() for s in (0, 1)]
        reference = float((rates[0] - rates[1]).abs())
        reps, warm = harness.repetitions(args, device, n, (200, 20), (20, 3))
        for path, (spec, reads) in PATHS.items():
            term = lossdsl.compile(spec).terms[0]
            names = [v for v in VARIANTS if not (v == "blocked" and not reads)]

            def call(variant: str) -> torch.Tensor:
                with VARIANTS[variant](), mock.patch.object(group_fairness, "_reads_host", lambda codes: reads):
                    value = term(pred, sex, target)
                    value.backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return value

            times: dict[str, list[float]] = {v: [] for v in names}
            for _ in range(warm):
                for v in names:
                    call(v)
            for _ in range(reps):
                for v in names + names[::-1]:
                    start = time.perf_counter()
                    call(v)
                    times[v].append(time.perf_counter() - start)
            base = statistics.median(times["float64"])
            for v in names:
                peak = harness.peak_memory_bytes(lambda: call(v), device)
                error = abs(float(call(v).detach()) - reference) / reference
                print(f"| {n} | {path} | {v} | {statistics.median(times[v]) / base:.2f} "
                      f"({statistics.median(times[v]) * 1e3:.2f} ms) | {peak / 2**20:.2f} MiB | {error:.1e} |")


if __name__ == "__main__":
    main()
