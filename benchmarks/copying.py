"""What keeping the last call's values costs the forward, and what a copy or a pickle costs.

    python benchmarks/copying.py            # full run
    python benchmarks/copying.py --quick    # a few seconds

``LossModule`` keeps the last call's values as computed (``last_terms`` detaches them when read,
``lossdsl verify`` takes their gradients) and leaves them out of copies and pickles, which carry
them detached. The first table times forward + backward of the card's spec three ways, interleaved
(ABBA) with medians as in overhead.py:

- kept: the module as shipped;
- dropped: the same module with the values thrown away (what not keeping them would save);
- detached: the values detached in the forward (the alternative this design avoids).

Ratios are against "dropped": 1.00 means keeping the values costs nothing measurable. The second
table times ``copy.deepcopy`` and a pickle round trip of a trained module against ``compile``.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import lossdsl  # noqa: E402
from harness import add_common_arguments, devices, print_header, print_preamble, repetitions  # noqa: E402
from overhead import SPEC, make_inputs  # noqa: E402


class _Dropped(list):
    """A ``_last`` slot that keeps nothing."""

    def __setitem__(self, index: int, values: tuple) -> None:
        pass


class _Detached(list):
    """A ``_last`` slot that detaches in the forward."""

    def __setitem__(self, index: int, values: tuple) -> None:
        super().__setitem__(index, tuple(value.detach() for value in values))


def variants(device: torch.device) -> dict[str, lossdsl.LossModule]:
    kept, dropped, detached = (lossdsl.compile(SPEC).to(device) for _ in range(3))
    dropped._last = _Dropped([()])
    detached._last = _Detached([()])
    return {"kept": kept, "dropped": dropped, "detached": detached}


def measure(n: int, device: torch.device, reps: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per forward+backward of each variant."""
    inputs = make_inputs(n, 2, device)
    pred = inputs["pred"].clone().requires_grad_()
    sides = list(variants(device).items())
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for rep in range(warmup + reps):
        for name, loss_fn in sides if rep % 2 == 0 else sides[::-1]:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            pred.grad = None
            loss_fn(pred=pred, target=inputs["target"], sex=inputs["sex"], y=inputs["y"]).backward()
            if cuda:
                torch.cuda.synchronize()
            if rep >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def copy_costs(device: torch.device, reps: int) -> dict[str, float]:
    """Median milliseconds of compile (cached plan), deepcopy and a pickle round trip."""
    inputs = make_inputs(4096, 2, device)
    loss_fn = lossdsl.compile(SPEC).to(device)
    pred = inputs["pred"].clone().requires_grad_()
    loss_fn(pred=pred, target=inputs["target"], sex=inputs["sex"], y=inputs["y"]).backward()
    runs = {
        "compile": lambda: lossdsl.compile(SPEC),
        "deepcopy": lambda: copy.deepcopy(loss_fn),
        "pickle round trip": lambda: pickle.loads(pickle.dumps(loss_fn)),
    }
    costs = {}
    for name, run in runs.items():
        run()
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            samples.append((time.perf_counter() - start) * 1e3)
        costs[name] = statistics.median(samples)
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    chosen = devices(args)
    print_preamble(SPEC, args)
    print_header(f"| {'N':>7} | {'device':>6} | {'kept ms':>8} | {'dropped ms':>10} | {'detached ms':>11} "
                 f"| {'kept/dropped':>12} | {'detached/dropped':>16} |")
    for device in chosen:
        for n in (4096, 262144):
            reps, warmup = repetitions(args, device, n, small=(1000, 100), large=(100, 10))
            ms = measure(n, device, reps, warmup)
            print(f"| {n:>7} | {device.type:>6} | {ms['kept']:>8.3f} | {ms['dropped']:>10.3f} | {ms['detached']:>11.3f} "
                  f"| {ms['kept'] / ms['dropped']:>12.2f} | {ms['detached'] / ms['dropped']:>16.2f} |", flush=True)
    print("\ncopies of a trained module, median ms")
    for device in chosen:
        costs = copy_costs(device, reps=5 if args.quick else 50)
        print(f"{device.type}: " + ", ".join(f"{name} {value:.2f}" for name, value in costs.items()))


if __name__ == "__main__":
    main()
