"""Overhead of a compiled lossdsl spec against the same loss hand-written in PyTorch.

    python benchmarks/overhead.py            # full run
    python benchmarks/overhead.py --quick    # a few seconds
    python benchmarks/overhead.py --profile  # also show where each side spends its time

The spec is the card's one-liner:

    ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)

on binary logits ``pred [N]``, 0/1 ``target [N]``, group codes ``sex [N]`` and a
real ``y [N]``. The hand-written loss computes the same value the way a
practitioner would in plain PyTorch: balanced class weights ``n / (C * count)``
from running counts kept with ``index_add_``, the sigmoid-form weighted
cross-entropy, the fpr gap from soft rates summed per group with the same
sort-rank + ``index_add_`` scheme as the term (no host sync), and the mean
squared hinge of ``y - 100``. Both values are checked equal first.

Timing is forward + backward. lossdsl and hand-written repetitions alternate
(ABBA order) in one loop, so drift (clock, thermal, allocator) hits both; each
side's time is the median over the repetitions. On CUDA, each repetition is
bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import lossdsl  # noqa: E402
from harness import (  # noqa: E402
    add_common_arguments, devices, print_header, print_preamble, print_profile, repetitions,
)
from lossdsl.library.group_fairness import fpr_gap_ranked  # noqa: E402  (the fairness term's reference)

SPEC = "ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)"


class HandWritten(torch.nn.Module):
    """The card's loss in plain PyTorch (binary logits [N])."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(2, dtype=torch.long))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = target.long()
        # ce(weight=balanced): sklearn's n / (C * count_c) over running counts, this batch included.
        if self.training:
            self.counts.index_add_(0, target, torch.ones_like(target))
        counts = self.counts.to(pred.dtype)
        class_weight = counts.sum() / (2 * counts.clamp_min(1))
        sample_weight = class_weight[target]
        ce = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), weight=sample_weight, reduction="sum")
        ce = ce / sample_weight.sum()

        # fairness(fpr_gap, group=sex): soft false-positive rate per group, largest minus smallest.
        gap = fpr_gap_ranked(pred, target, sex)

        # soft_bound(y <= 100): mean squared hinge.
        bound = F.relu(y - 100).square().mean()
        return ce + 0.1 * gap + bound


def make_inputs(n: int, groups: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "pred": torch.randn(n, generator=generator),
        "target": (torch.rand(n, generator=generator) < 0.3).long(),  # imbalanced: about 30% positives
        "sex": torch.randint(0, groups, (n,), generator=generator),
        "y": 90 + 20 * torch.rand(n, generator=generator),  # about half above the bound
    }
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def step(loss_fn: torch.nn.Module, inputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
    pred.grad = None
    loss = loss_fn(pred=pred, target=inputs["target"], sex=inputs["sex"], y=inputs["y"])
    loss.backward()


def check_equal(inputs: dict[str, torch.Tensor]) -> None:
    """Fresh copies of both losses give the same value and the same gradient."""
    ours, theirs = lossdsl.compile(SPEC).to(inputs["pred"].device), HandWritten().to(inputs["pred"].device)
    values, grads = [], []
    for loss_fn in (ours, theirs):
        pred = inputs["pred"].clone().requires_grad_()
        for _ in range(2):  # the second call sees accumulated class counts
            pred.grad = None
            loss = loss_fn(pred=pred, target=inputs["target"], sex=inputs["sex"], y=inputs["y"])
            loss.backward()
        values.append(loss.detach())
        grads.append(pred.grad.clone())
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])


def measure(n: int, groups: int, device: torch.device, reps: int, warmup: int) -> tuple[float, float]:
    """Median milliseconds per forward+backward: (lossdsl, hand-written)."""
    inputs = make_inputs(n, groups, device)
    check_equal(inputs)
    ours, theirs = lossdsl.compile(SPEC).to(device), HandWritten().to(device)
    pred = inputs["pred"].clone().requires_grad_()
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {"lossdsl": [], "hand": []}
    sides = (("lossdsl", ours), ("hand", theirs))
    for rep in range(warmup + reps):
        order = sides if rep % 2 == 0 else sides[::-1]  # ABBA: cancels order effects
        for name, loss_fn in order:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(loss_fn, inputs, pred)
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed * 1e3)
    return statistics.median(times["lossdsl"]), statistics.median(times["hand"])


def profile(n: int, groups: int, device: torch.device, reps: int = 50) -> None:
    """Operator-level breakdown of both sides (torch.profiler), to see where any extra time goes."""
    inputs = make_inputs(n, groups, device)
    for name, loss_fn in (("lossdsl", lossdsl.compile(SPEC).to(device)), ("hand-written", HandWritten().to(device))):
        pred = inputs["pred"].clone().requires_grad_()
        print_profile(f"{name}: N={n}, groups={groups}", lambda: step(loss_fn, inputs, pred), device, reps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per side afterwards")
    args = parser.parse_args(argv)
    chosen = devices(args)
    print_preamble(SPEC, args)
    print_header(f"| {'N':>7} | {'groups':>6} | {'device':>6} | {'lossdsl ms':>10} | {'hand-written ms':>15} | {'ratio':>5} |")
    worst = 0.0
    for device in chosen:
        for n in (4096, 262144):
            for groups in (2, 32):
                reps, warmup = repetitions(args, device, n, small=(2000, 100), large=(200, 10))
                ours, theirs = measure(n, groups, device, reps, warmup)
                ratio = ours / theirs
                worst = max(worst, ratio)
                print(f"| {n:>7} | {groups:>6} | {device.type:>6} | {ours:>10.3f} | {theirs:>15.3f} | {ratio:>5.2f} |",
                      flush=True)
    print(f"\nworst ratio {worst:.2f} (target: at most 1.05)")
    if args.profile:
        for device in chosen:
            profile(4096, 2, device)


if __name__ == "__main__":
    main()
