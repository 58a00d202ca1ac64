"""What the benchmark scripts share: the common options, ratio spreads, peak memory, ATen op counts and
profiler tables."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke run, not a measurement")
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if available)")
    parser.add_argument("--threads", type=int,
                        help="torch.set_num_threads (default: torch's); 1 is steadier on a busy machine")


def devices(args: argparse.Namespace) -> list[torch.device]:
    """Apply --threads; the devices of --device, or the CPU plus CUDA when there is one."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device:
        return [torch.device(d) for d in args.device]
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def print_preamble(spec: str, args: argparse.Namespace) -> None:
    """What a table was measured on: the spec, torch, threads, device."""
    print(f"spec: {spec}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"forward + backward, median ms over interleaved repetitions{' (--quick)' if args.quick else ''}\n")


def print_header(header: str) -> None:
    """A markdown table's header row and its rule."""
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")


def repetitions(args: argparse.Namespace, device: torch.device, n: int,
                small: tuple[int, int], large: tuple[int, int]) -> tuple[int, int]:
    """(repetitions, warm-up calls): few with --quick; on the CPU ``small`` up to N = 4096, else ``large``."""
    if args.quick:
        return 20, 5
    if device.type == "cuda":
        return 500, 50
    return small if n <= 4096 else large


def count_ops(run: Callable[[], object]) -> int:
    """ATen operators dispatched by ``run()``: on small inputs each costs a few microseconds."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return Count.calls


def print_profile(title: str, run: Callable[[], object], device: torch.device, reps: int, rows: int = 25) -> None:
    """A torch.profiler table of ``reps`` calls of ``run()`` (after a warm-up), by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(5):
        run()
    with profile(activities=activities) as prof:
        for _ in range(reps):
            run()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n== {title}, {device.type}, {reps} forward+backward ==")
    print(f"ATen ops per forward+backward: {count_ops(run)}")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows))


def block_ratios(ours: list[float], theirs: list[float], blocks: int = 10) -> list[float]:
    """Per-block ratios of two sides timed in the same interleaved repetitions: the repetitions cut
    into ``blocks`` consecutive blocks (fewer when there are fewer repetitions), each block's ratio
    the median of ``ours`` over the median of ``theirs`` in it. Their spread is the run-to-run noise
    of the ratio itself, which each side's own spread overstates (drift hits both sides of a block)."""
    size = max(1, len(ours) // blocks)
    starts = range(0, len(ours) - size + 1, size)
    return [statistics.median(ours[s:s + size]) / statistics.median(theirs[s:s + size]) for s in starts]


def spread(ratios: list[float]) -> tuple[float, float, float]:
    """(median, 10th percentile, 90th percentile) of ``ratios``."""
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return statistics.median(ratios), deciles[0], deciles[-1]


def format_spread(ratio: tuple[float, float, float]) -> str:
    """``1.23 [1.20, 1.27]``: the median ratio and its [p10, p90]."""
    return f"{ratio[0]:.2f} [{ratio[1]:.2f}, {ratio[2]:.2f}]"


def peak_memory_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak memory ``run()`` allocates above what was allocated when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus the memory allocated
    before. CPU (no allocator statistics): the profiler's allocation events (``profile_memory=True``,
    bytes allocated positive and freed negative, every thread), summed in time order; the peak is the
    largest running sum. Both count tensor storage only, which is what the two sides differ in.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    peak = level = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak
