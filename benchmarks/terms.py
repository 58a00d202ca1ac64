"""Every registered term, compiled alone, against its reference implementation called directly.

    python benchmarks/terms.py                      # full run
    python benchmarks/terms.py --quick              # a smoke run, well under a minute
    python benchmarks/terms.py --threads 1          # steadier on a busy machine
    python benchmarks/terms.py --clock cpu          # CPU time, not wall time: for a shared machine
    python benchmarks/terms.py --term ce --size large  # only these rows
    python benchmarks/terms.py --profile            # also profile one-call rows over target

Sizes (``lossdsl.parity.SMALL`` and ``LARGE``): small is N = 4096 (classes C = 10, regression
outputs 8, embeddings 16), large is N = 262144; images are [1, 4, 64, 64] and [16, 4, 64, 64];
the l1 / l2 model is 2 x Linear(64) and 8 x Linear(256).

For each term in ``lossdsl.REGISTRY``, its cases come from the registry: the reference and the
inputs each term registers beside its implementation (``register(..., cases=...)``, see
``lossdsl/parity.py``; a term without them is an error, so new terms are not forgotten). A
one-term spec is compiled with lossdsl and timed, forward + backward, against the term's reference:

- the torch functional it documents (``F.cross_entropy``, ``F.mse_loss``, ...),
- MONAI's ``DiceLoss``, ``TverskyLoss`` and ``FocalLoss`` where MONAI is the reference,
- otherwise the closed form written in plain torch, the way a practitioner would
  (``fairness`` as in ``benchmarks/overhead.py``'s hand-written version).

Rows marked ``1-call`` are terms whose reference is one torch call (ce, bce, mse,
mae, huber, smooth_l1, multi-class hinge, kl, triplet): lossdsl should cost no more
than that call, and the worst of their ratios is reported against the target 1.05.

Before timing, each case checks that lossdsl and the reference give the same
value and the same gradients (``lossdsl.parity.check_parity``: ``torch.testing.assert_close``,
float32 tolerances; ``tests/test_parity.py`` runs the same check at small sizes). Timing follows ``benchmarks/overhead.py``: lossdsl and reference
repetitions alternate in ABBA order in one loop, each side's time is the median, the
ratio is the median of per-block ratios (10 blocks of consecutive repetitions) shown with
their [p10, p90] spread,
and on CUDA each repetition is bracketed by ``torch.cuda.synchronize()``. The
number of repetitions adapts to the step time (a time budget per row, with a
floor and a cap). ``--clock cpu`` times with the process's CPU time instead of the
wall clock: on a machine shared with other jobs, time spent waiting for a core is
otherwise most of the noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import lossdsl  # noqa: E402
from harness import add_common_arguments, block_ratios, devices, format_spread, print_profile, spread  # noqa: E402
from lossdsl.parity import LARGE, SMALL, Case, check_parity, materialise, registered_cases, step  # noqa: E402

SIZES = {"small": SMALL, "large": LARGE}
TARGET_RATIO = 1.05


def cases_at(size: str) -> list[Case]:
    """Every registered term's cases at one size, from the registry (``register(..., cases=...)``)."""
    return registered_cases(SIZES[size])


def check_coverage(cases: list[Case]) -> None:
    """Every registered term has a case, and every case names a registered term: fail loudly otherwise."""
    covered = {case.term for case in cases}
    missing = [name for name in lossdsl.REGISTRY if name not in covered]
    unknown = sorted(covered - set(lossdsl.REGISTRY))
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"no benchmark case for term(s) {', '.join(missing)}: register the term with "
                            "cases=... (its reference and inputs, see lossdsl/parity.py)")
        if unknown:
            problems.append(f"case(s) for unregistered term(s) {', '.join(unknown)}")
        raise SystemExit("error: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Measurement.


def measure(case: Case, device: torch.device, budget_s: float, min_reps: int, max_reps: int,
            warmup: int, clock: Callable[[], float] = time.perf_counter) -> tuple[float, float, list[float], int]:
    """Median ms per forward+backward (lossdsl, reference), the per-block ratios (``harness.block_ratios``:
    10 blocks of consecutive repetitions, each block's medians divided; their spread is the ratio's
    noise) and the repetitions per side.

    ``clock`` is wall time by default; ``time.process_time`` (CPU time of the process) leaves out
    the time the process waits for a core, which on a shared machine is most of the noise.
    """
    setup = materialise(case, device)
    inputs, grads = setup.inputs, setup.grads
    cuda = device.type == "cuda"
    sides = (("lossdsl", setup.ours), ("reference", setup.reference))
    times: dict[str, list[float]] = {"lossdsl": [], "reference": []}

    def timed(loss_fn: Callable[..., torch.Tensor]) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        step(loss_fn, inputs, grads)
        if cuda:
            torch.cuda.synchronize()
        return (clock() - start) * 1e3

    warm: list[float] = []
    for rep in range(warmup):
        for _, loss_fn in (sides if rep % 2 == 0 else sides[::-1]):
            warm.append(timed(loss_fn))
    per_pair_s = 2 * statistics.median(warm) / 1e3
    reps = max(min_reps, min(max_reps, int(budget_s / per_pair_s)))
    for rep in range(reps):
        order = sides if rep % 2 == 0 else sides[::-1]  # ABBA: cancels order effects
        for name, loss_fn in order:
            times[name].append(timed(loss_fn))
    return (statistics.median(times["lossdsl"]), statistics.median(times["reference"]),
            block_ratios(times["lossdsl"], times["reference"]), reps)


def profile(case: Case, device: torch.device, reps: int = 20) -> None:
    """Operator-level breakdown of both sides (torch.profiler), to see where any extra time goes."""
    for name, side in (("lossdsl", "ours"), ("reference", "reference")):
        setup = materialise(case, device)
        loss_fn, inputs, grads = getattr(setup, side), setup.inputs, setup.grads
        print_profile(f"{name}: {case.label}", lambda: step(loss_fn, inputs, grads), device, reps, rows=20)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or the process's CPU time: steadier on a shared machine, "
                             "CPU devices only, and meaningful with --threads 1")
    parser.add_argument("--term", action="append",
                        help="only these terms (repeatable); every term must have a case regardless")
    parser.add_argument("--size", choices=("small", "large"), action="append", help="only these sizes (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help=f"profile each one-call row above {TARGET_RATIO} at the large size afterwards")
    args = parser.parse_args(argv)
    chosen = devices(args)

    every = cases_at("small") + cases_at("large")
    check_coverage(every)
    if args.term:
        unknown = sorted(set(args.term) - set(lossdsl.REGISTRY))
        if unknown:
            parser.error(f"unknown term(s): {', '.join(unknown)}")
    sizes = args.size or ["small", "large"]
    selected = [case for case in every if (not args.term or case.term in args.term) and case.size in sizes]
    selected.sort(key=lambda case: list(lossdsl.REGISTRY).index(case.term))  # registry order, small before large
    if args.clock == "cpu" and any(device.type != "cpu" for device in chosen):
        parser.error("--clock cpu times CPU work only: use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.quick:
        budget_s, min_reps, max_reps, warmup = 0.1, 3, 20, 2
    else:
        budget_s, min_reps, max_reps, warmup = 6.0, 60, 2000, 10

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"forward + backward, median {'CPU' if args.clock == 'cpu' else 'wall'}-clock ms over interleaved ABBA "
          f"repetitions{' (--quick)' if args.quick else ''}; ratio: median of per-block ratios [p10, p90]; "
          f"value and gradients checked equal first; 1-call: the reference is one torch call\n")
    header = ["term", "spec", "size", "device", "lossdsl ms", "reference ms", "ratio [p10, p90]", "1-call", "reps"]
    rows: list[tuple[Case, torch.device, float]] = []
    widths = [11, 43, 24, 6, 10, 12, 17, 6, 5]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    started = time.perf_counter()
    for device in chosen:
        for case in selected:
            check_parity(case, device)
            ours, theirs, ratios, reps = measure(case, device, budget_s, min_reps, max_reps, warmup, clock)
            ratio = spread(ratios)  # the median of the per-block ratios, and their [p10, p90]
            rows.append((case, device, ratio[0]))
            cells = [case.term, f"`{case.spec}`", case.size_label, device.type, f"{ours:.3f}", f"{theirs:.3f}",
                     format_spread(ratio), "yes" if case.one_call else "", str(reps)]
            print("| " + " | ".join(cell.ljust(w) for cell, w in zip(cells, widths)) + " |", flush=True)
    elapsed = time.perf_counter() - started

    notes = list(dict.fromkeys(f"  {case.term}{f' ({case.variant})' if case.variant else ''}: {case.note}"
                               for case, _, _ in rows if case.note))
    closed_forms = sorted({case.term for case, _, _ in rows if not case.one_call and not case.note})
    if notes or closed_forms:
        print("\nreferences other than one torch functional:")
        print("\n".join(notes))
        if closed_forms:
            print(f"  {', '.join(closed_forms)}: the closed form in plain torch")

    one_call = [(case, device, ratio) for case, device, ratio in rows if case.one_call]
    print()
    for label, subset in (("all sizes", one_call), ("large size", [r for r in one_call if r[0].size == "large"])):
        if subset:
            case, device, ratio = max(subset, key=lambda row: row[2])
            verdict = "meets" if ratio <= TARGET_RATIO else "misses"
            print(f"worst one-call ratio, {label}: {ratio:.2f} ({case.label}, {device.type}); "
                  f"{verdict} the target of at most {TARGET_RATIO}")
    if rows:
        case, device, ratio = max(rows, key=lambda row: row[2])
        print(f"worst ratio of any row: {ratio:.2f} ({case.label}, {device.type})")
    print(f"({len(rows)} rows in {elapsed:.0f} s)")

    if args.profile:
        over = [(case, device) for case, device, ratio in one_call if case.size == "large" and ratio > TARGET_RATIO]
        if not over:
            print(f"\nno one-call row above {TARGET_RATIO} at the large size: nothing to profile")
        for case, device in over:
            profile(case, device)


if __name__ == "__main__":
    main()
