"""lossdsl specs against the same losses hand-written in PyTorch, with two baselines per spec.

    python benchmarks/overhead.py --threads 1             # eager, every row, N = 256 ... 1M
    python benchmarks/overhead.py --threads 1 --quick     # a smoke run: fewer repetitions, N = 256, 4096
    python benchmarks/overhead.py --threads 1 --markdown  # also print the README's table
    python benchmarks/overhead.py --threads 1 --compile   # torch.compile on both sides, compile counts, guards
    python benchmarks/overhead.py --threads 1 --memory    # peak memory of forward + backward at N = 1M
    python benchmarks/overhead.py --row one-liner --n 4096 --profile  # where each side spends its time

Rows (``--row KEY``, repeatable): ``one-liner`` is the README's spec,

    ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)

on binary logits ``pred [N]``, 0/1 ``target [N]``, group codes ``sex [N]`` (two groups, 0 and 1)
and a real ``y [N]``; ``groups2`` is the same spec with ``groups=2``; ``ce`` is ``ce()`` on
``[N, 10]``; ``dice-ce`` is ``dice() + ce()`` on ``[B, 4, H, W]`` images (N = B H W pixels);
``focal`` is ``focal()`` on ``[N, 10]``; ``shared-gaps`` is three fairness statistics over one
group, ``fairness(fpr_gap, group=sex) + fairness(tpr_gap, group=sex) + fairness(dp_gap, group=sex)``,
a spec where work shared across terms (one sigmoid, one ``index_add``) can make lossdsl faster
than the straightforward hand-written sum of three separate losses.

Each row is timed against two hand-written baselines:

- **same knowledge**: what a skilled user writes knowing what the spec knows and the data shows
  (here: two groups). Several correct candidates are timed and the fastest is the baseline: for
  the fairness gaps, ``index_add_`` into 2 bins, and two masks (``sex == 1`` and its complement,
  multiplied in; boolean indexing is left out: its data-dependent shape syncs on CUDA and breaks
  torch.compile's graph); for Dice's one-hot target, ``scatter_`` into a float tensor and the usual
  ``F.one_hot(...).permute(...)``. The other terms have one obvious form (``F.cross_entropy``, the
  softmax focal closed form).
- **same algorithm**: the term's own algorithm written by hand. Without ``groups=`` the fairness
  term ranks the codes in the batch (a sort, then ``index_add_`` into N slots), so that baseline
  sorts too; with ``groups=2`` it is the 2-bin ``index_add_``; Dice's one-hot is scattered.

Ratios are lossdsl / baseline: below 1 lossdsl is faster. Before timing, every side's value and
gradient after two calls (running class counts change on each call) are checked equal to
lossdsl's (``torch.testing.assert_close``; values to an absolute sqrt(N) * eps, what float32 sums
in another order differ by; gradients to a tolerance scaled to their largest element); a mismatch
stops the run.

Timing is forward + backward. All sides' repetitions interleave in one loop (ABBA order: the
order reverses on every repetition), so drift (clock, thermal, allocator) hits every side; the
repetitions adapt to the step time (a time budget per row, a floor and a cap). Each time is the
median over repetitions; each ratio is the median of per-block ratios (the repetitions cut into
10 consecutive blocks, each block's medians divided), shown with their [p10, p90] spread. On
CUDA each repetition is bracketed by ``torch.cuda.synchronize()``.

``--compile`` wraps every side (the hand-written ones too) in ``torch.compile`` (inductor,
static shapes, dynamo's caches reset per row and N) and also reports, per side, the compiles
after the first call and whether the second call recompiled (``CompileCounterWithBackend``), and
the graphs, graph breaks, guards and graph outputs of one traced forward (``torch._dynamo.explain``).
``--memory`` measures each side's peak memory over one eager forward + backward at ``--memory-n``
(default 1M) after a warm-up call: ``max_memory_allocated`` on CUDA, the profiler's allocation
events on the CPU (``harness.peak_memory_bytes``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import lossdsl  # noqa: E402
from harness import (  # noqa: E402
    add_common_arguments, block_ratios, devices, format_spread, peak_memory_bytes, print_profile, spread,
)
from lossdsl.library.group_fairness import gap_of_sums  # noqa: E402  (the fairness term's reference)

SPEC = "ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)"
SIZES = (256, 4096, 65536, 1 << 20)
QUICK_SIZES = (256, 4096)
CLASSES = 10
CHANNELS = 4
# The targets (eager, against the same-knowledge baseline).
TARGET_SMALL, TARGET_LARGE, TARGET_ONE_LINER, TARGET_SHARED = 1.15, 1.05, 1.10, 0.90


# ---------------------------------------------------------------------------------------------
# Hand-written pieces.


def balanced_ce(counts: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, training: bool) -> torch.Tensor:
    """ce(weight=balanced) on binary logits: sklearn's n / (C * count_c) over running counts (this
    batch included), the sigmoid-form weighted cross-entropy, normalised by the weights' sum."""
    if training:
        counts.index_add_(0, target, torch.ones_like(target))
    counts = counts.to(pred.dtype)
    class_weight = counts.sum() / (2 * counts.clamp_min(1))
    sample_weight = class_weight[target]
    ce = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), weight=sample_weight, reduction="sum")
    return ce / sample_weight.sum()


# A rate's (numerator, denominator) per row from the soft prediction p and the 0/1 label y.
RATES: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "fpr": lambda p, y: (p * (1 - y), 1 - y),
    "tpr": lambda p, y: (p * y, y),
    "dp": lambda p, y: (p, torch.ones_like(p)),
}


def gap_two_bins(num: torch.Tensor, den: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
    """Two groups known: both sums of each group with one ``index_add_`` into 2 bins."""
    sums = num.new_zeros(2, 2).index_add_(0, sex, torch.stack([num, den], dim=1))
    rate = sums[:, 0] / sums[:, 1]
    return (rate[0] - rate[1]).abs()


def gap_two_masks(num: torch.Tensor, den: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
    """Two groups known: each group's sums through its own 0/1 mask. (Group 0's as the total minus
    group 1's is cheaper but loses the gap in float32 at N = 1M: two sums near 5e5 subtracted.)"""
    in_one = (sex == 1).to(num.dtype)
    in_zero = 1 - in_one
    rate_one = (num * in_one).sum() / (den * in_one).sum()
    rate_zero = (num * in_zero).sum() / (den * in_zero).sum()
    return (rate_one - rate_zero).abs()


def gap_ranked(num: torch.Tensor, den: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
    """Any codes: ranked in the batch by a sort, summed with ``index_add_`` into N slots, the
    largest minus the smallest rate (the term's algorithm without ``groups=``)."""
    sorted_codes, order = torch.sort(sex)
    starts = torch.ones_like(sorted_codes)
    starts[1:] = (sorted_codes[1:] != sorted_codes[:-1]).long()
    slots = torch.empty_like(order).scatter_(0, order, starts.cumsum(0) - 1)
    sums = num.new_zeros(sex.shape[0], 2).index_add_(0, slots, torch.stack([num, den], dim=1))
    return gap_of_sums(sums)


GAPS = {"two_bins": gap_two_bins, "two_masks": gap_two_masks, "ranked": gap_ranked}


def rate_gap(rate: str, gap: Callable, pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
    """One fairness statistic, computed from scratch (its own sigmoid), as a separate loss is."""
    num, den = RATES[rate](torch.sigmoid(pred), target.to(pred.dtype))
    return gap(num, den, sex)


class OneLiner(torch.nn.Module):
    """The README's one-liner in plain PyTorch, the fairness gap computed by ``gap``."""

    def __init__(self, gap: Callable) -> None:
        super().__init__()
        self.gap = gap
        self.register_buffer("counts", torch.zeros(2, dtype=torch.long))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = target.long()
        ce = balanced_ce(self.counts, pred, target, self.training)
        bound = F.relu(y - 100).square().mean()  # soft_bound(y <= 100): mean squared hinge
        return ce + 0.1 * rate_gap("fpr", self.gap, pred, target, sex) + bound


class SumOfGaps(torch.nn.Module):
    """Several fairness statistics as the straightforward sum of separate losses."""

    def __init__(self, gap: Callable, rates: tuple[str, ...]) -> None:
        super().__init__()
        self.gap, self.rates = gap, rates

    def forward(self, pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        return sum(rate_gap(rate, self.gap, pred, target, sex) for rate in self.rates)


class Function(torch.nn.Module):
    """A stateless hand-written loss as a module (so both sides compile and move alike)."""

    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.function(pred, target)


def onehot_by_f_one_hot(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The usual one-hot: ``F.one_hot`` (int64, channels last) moved to the channel axis."""
    return F.one_hot(target, pred.shape[1]).permute(0, 3, 1, 2).to(pred.dtype)


def onehot_by_scatter(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A contiguous float one-hot in ``pred``'s layout, by ``scatter_``."""
    return torch.zeros_like(pred).scatter_(1, target.unsqueeze(1), 1.0)


def dice_plus_ce(pred: torch.Tensor, target: torch.Tensor, onehot_of: Callable = onehot_by_scatter) -> torch.Tensor:
    """MONAI's DiceLoss(softmax=True, to_onehot_y=True) (smooth 1e-5 on both sides, per image and
    class, then the mean) in plain torch, plus F.cross_entropy."""
    prob = pred.softmax(1)
    onehot = onehot_of(pred, target)
    intersection = (prob * onehot).sum((2, 3))
    total = prob.sum((2, 3)) + onehot.sum((2, 3))
    dice = (1 - (2 * intersection + 1e-5) / (total + 1e-5)).mean()
    return dice + F.cross_entropy(pred, target)


def softmax_focal(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax focal loss, gamma 2, summed over classes (only the target's is non-zero), mean over N."""
    log_p = F.log_softmax(pred, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-(1 - log_p.exp()).square() * log_p).mean()


# ---------------------------------------------------------------------------------------------
# Inputs.


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(n: int, groups: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """The one-liner's inputs: binary logits, 0/1 targets (about 30 % positives), group codes in
    [0, groups), and y about half above the bound."""
    generator = _generator(seed)
    inputs = {
        "pred": torch.randn(n, generator=generator),
        "target": (torch.rand(n, generator=generator) < 0.3).long(),
        "sex": torch.randint(0, groups, (n,), generator=generator),
        "y": 90 + 20 * torch.rand(n, generator=generator),
    }
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def binary_inputs(n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    inputs = make_inputs(n, 2, device, seed)
    del inputs["y"]
    return inputs


def class_inputs(n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = _generator(seed)
    inputs = {"pred": torch.randn(n, CLASSES, generator=generator),
              "target": torch.randint(0, CLASSES, (n,), generator=generator)}
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def image_shape(n: int) -> tuple[int, int, int, int]:
    """[B, 4, H, W] with B H W = n pixels: square images up to 256 x 256, then a batch of them."""
    side = math.isqrt(min(n, 256 * 256))
    if side * side * (n // (side * side)) != n:
        raise SystemExit(f"error: N = {n} pixels is no batch of square images (use a power of 4)")
    return n // (side * side), CHANNELS, side, side


def image_inputs(n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = _generator(seed)
    b, c, h, w = image_shape(n)
    inputs = {"pred": torch.randn(b, c, h, w, generator=generator),
              "target": torch.randint(0, c, (b, h, w), generator=generator)}
    return {name: tensor.to(device) for name, tensor in inputs.items()}


# ---------------------------------------------------------------------------------------------
# Rows.


@dataclass(frozen=True, eq=False)  # rows compare (and hash) by identity
class Row:
    key: str
    label: str  # the README table's
    spec: str
    inputs: Callable[..., dict[str, torch.Tensor]]  # (n, device, seed)
    hand: dict[str, Callable[[], torch.nn.Module]]  # hand-written sides by name
    known: tuple[str, ...]  # the same-knowledge candidates: the fastest is the baseline
    same: str  # the same-algorithm side

    def sides(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.known, self.same)))


def _one_liner_sides() -> dict[str, Callable[[], torch.nn.Module]]:
    return {name: (lambda gap=gap: OneLiner(gap)) for name, gap in GAPS.items()}


SHARED_RATES = ("fpr", "tpr", "dp")
ROWS = (
    Row("one-liner", "the README's one-liner (2 groups in the data)", SPEC, lambda n, d, s=0: make_inputs(n, 2, d, s),
        _one_liner_sides(), known=("two_bins", "two_masks"), same="ranked"),
    Row("groups2", "the same with `groups=2`", SPEC.replace("group=sex", "group=sex, groups=2"),
        lambda n, d, s=0: make_inputs(n, 2, d, s), _one_liner_sides(), known=("two_bins", "two_masks"),
        same="two_bins"),
    Row("ce", "`ce()` on [N, 10]", "ce()", class_inputs, {"F.cross_entropy": lambda: Function(F.cross_entropy)},
        known=("F.cross_entropy",), same="F.cross_entropy"),
    Row("dice-ce", "`dice() + ce()` on [B, 4, H, W] (N = pixels)", "dice() + ce()", image_inputs,
        {"scatter": lambda: Function(dice_plus_ce),
         "F.one_hot": lambda: Function(lambda p, t: dice_plus_ce(p, t, onehot_by_f_one_hot))},
        known=("scatter", "F.one_hot"), same="scatter"),
    Row("focal", "`focal()` on [N, 10]", "focal()", class_inputs, {"closed form": lambda: Function(softmax_focal)},
        known=("closed form",), same="closed form"),
    Row("shared-gaps", "fpr + tpr + dp gaps over one group (2 groups in the data)",
        " + ".join(f"fairness({rate}_gap, group=sex)" for rate in SHARED_RATES), binary_inputs,
        {name: (lambda gap=gap: SumOfGaps(gap, SHARED_RATES)) for name, gap in GAPS.items()},
        known=("two_bins", "two_masks"), same="ranked"),
)
ROW_KEYS = {row.key: row for row in ROWS}


def size_label(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 and n % (1 << 20) == 0 else str(n)


# ---------------------------------------------------------------------------------------------
# Checks and measurement.


def build_sides(row: Row, device: torch.device) -> dict[str, torch.nn.Module]:
    """Fresh modules: lossdsl's first, then each hand-written side."""
    modules = {"lossdsl": lossdsl.compile(row.spec).to(device)}
    modules.update({name: row.hand[name]().to(device) for name in row.sides()})
    return modules


def step(loss_fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], pred: torch.Tensor) -> torch.Tensor:
    """One forward + backward with ``pred`` (a leaf) in place of ``inputs["pred"]``."""
    pred.grad = None
    loss = loss_fn(**{**inputs, "pred": pred})
    loss.backward()
    return loss


def two_calls(loss_fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The value and gradient of the second of two calls (the first changes running state)."""
    pred = inputs["pred"].clone().requires_grad_()
    for _ in range(2):
        loss = step(loss_fn, inputs, pred)
    return loss.detach(), pred.grad.clone()


def assert_same(name: str, got: tuple[torch.Tensor, torch.Tensor], expected: tuple[torch.Tensor, torch.Tensor],
                where: str, n: int) -> None:
    """Equal values, and gradients equal to a tolerance scaled to their largest element (at N = 1M each
    element is about 1/N, below the default absolute tolerance, which would then check nothing).

    Values: float32 sums of N terms taken in different orders (``index_add_`` adds one by one,
    ``sum`` pairwise) differ by about sqrt(N) * eps; a fairness gap is a difference of two such
    rates and keeps that absolute error (at N = 1M, 2.4e-5 on gaps of 7e-4), so the absolute
    tolerance is at least that."""
    try:
        atol = max(1e-5, math.sqrt(n) * torch.finfo(torch.float32).eps)
        torch.testing.assert_close(got[0], expected[0], rtol=1.3e-6, atol=atol)
        scale = float(expected[1].abs().max())
        torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-5 * scale)
    except AssertionError as error:
        raise SystemExit(f"error: {where}: {name} differs from lossdsl, the timing would mean nothing:\n{error}")


def check_equal(row: Row, inputs: dict[str, torch.Tensor], device: torch.device, where: str,
                sides: dict[str, torch.nn.Module] | None = None) -> None:
    """Every side (fresh, eager, unless ``sides`` are given) gives lossdsl's value and gradient."""
    sides = sides or build_sides(row, device)
    results = {name: two_calls(module, inputs) for name, module in sides.items()}
    expected = results.pop("lossdsl")
    for name, result in results.items():
        assert_same(name, result, expected, where, inputs["target"].numel())
    print(f"values and gradients equal: {where}: lossdsl = {' = '.join(results)}", flush=True)


def repetitions(args: argparse.Namespace, per_round_s: float) -> int:
    budget_s, floor, cap = (0.2, 6, 40) if args.quick else (args.budget, 20, 2000)
    return max(floor, min(cap, int(budget_s / per_round_s)))


def measure(sides: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor], device: torch.device,
            args: argparse.Namespace, clock: Callable[[], float]) -> dict[str, list[float]]:
    """Milliseconds per forward + backward of each side, over interleaved repetitions (ABBA order)."""
    pred = inputs["pred"].clone().requires_grad_()
    cuda = device.type == "cuda"
    order = tuple(sides.items())

    def timed(loss_fn: torch.nn.Module) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        step(loss_fn, inputs, pred)
        if cuda:
            torch.cuda.synchronize()
        return (clock() - start) * 1e3

    warm = []
    for rep in range(2 if args.quick else 5):
        warm.append(sum(timed(loss_fn) for _, loss_fn in (order if rep % 2 == 0 else order[::-1])))
    reps = repetitions(args, statistics.median(warm) / 1e3)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(reps):
        for name, loss_fn in (order if rep % 2 == 0 else order[::-1]):  # ABBA: cancels order effects
            times[name].append(timed(loss_fn))
    return times


@dataclass
class Result:
    row: Row
    n: int
    device: torch.device
    times: dict[str, list[float]]

    def median(self, side: str) -> float:
        return statistics.median(self.times[side])

    @property
    def fastest_known(self) -> str:
        return min(self.row.known, key=self.median)

    def ratio(self, side: str) -> tuple[float, float, float]:
        return spread(block_ratios(self.times["lossdsl"], self.times[side]))

    @property
    def reps(self) -> int:
        return len(self.times["lossdsl"])


def compile_report(row: Row, inputs: dict[str, torch.Tensor], device: torch.device,
                   where: str) -> tuple[dict[str, torch.nn.Module], dict[str, list[str]]]:
    """Every side compiled, after two calls (checked against eager lossdsl), ready to time; and per
    side: compiles after the first call, recompiled on the second, then the graphs, breaks, guards
    and graph outputs of one traced forward of a fresh module (``torch._dynamo.explain``)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    eager = two_calls(build_sides(row, device)["lossdsl"], inputs)
    traced: dict[str, list[str]] = {}
    for name, fresh in build_sides(row, device).items():
        explained = torch._dynamo.explain(fresh)(**{**inputs, "pred": inputs["pred"].clone().requires_grad_()})
        outputs = 0
        for graph in explained.graphs:
            result = next(node for node in graph.graph.nodes if node.op == "output").args[0]
            outputs += len(result) if isinstance(result, (tuple, list)) else 1
        traced[name] = [str(explained.graph_count), str(explained.graph_break_count),
                        str(len(explained.out_guards or ())), str(outputs)]
    torch._dynamo.reset()  # explain's compiles out of the way: the counts below start from nothing
    compiled: dict[str, torch.nn.Module] = {}
    report: dict[str, list[str]] = {}
    for name, module in build_sides(row, device).items():
        counter = CompileCounterWithBackend("inductor")
        compiled[name] = torch.compile(module, backend=counter, dynamic=False)
        pred = inputs["pred"].clone().requires_grad_()
        step(compiled[name], inputs, pred)
        first = counter.frame_count
        loss = step(compiled[name], inputs, pred)
        assert_same(f"{name} (compiled)", (loss.detach(), pred.grad), eager, where, inputs["target"].numel())
        report[name] = [str(first), "yes" if counter.frame_count > first else "no", *traced[name]]
    print(f"values and gradients equal: {where} (compiled): lossdsl = {' = '.join(n for n in report if n != 'lossdsl')}",
          flush=True)
    return compiled, report


# ---------------------------------------------------------------------------------------------
# Printing.


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    for cells in (header, ["-" * w for w in widths], *rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(cells, widths)) + " |")


def print_targets(results: list[Result], compiled: bool) -> None:
    """The issue's targets against the same-knowledge baseline, met or missed."""
    print()
    for result in results:
        row, n, ratio = result.row, result.n, result.ratio(result.fastest_known)[0]
        if row.key == "shared-gaps":
            target, what = TARGET_SHARED, "sharing across terms"
        elif compiled:
            target, what = TARGET_LARGE, "compiled"
        elif row.key == "one-liner" and result.device.type == "cpu":
            target, what = TARGET_ONE_LINER, "the one-liner without groups= on the CPU"
        else:
            target, what = (TARGET_SMALL, "N < 4096") if n < 4096 else (TARGET_LARGE, "N >= 4096")
        verdict = "meets" if ratio <= target else "misses"
        print(f"{row.key:<11} N={size_label(n):<6} {result.device.type}: {ratio:.3f} {verdict} "
              f"the target of at most {target:.2f} ({what})")


def print_markdown(results: list[Result], sizes: tuple[int, ...]) -> None:
    """The README's table: spec by N, a line per baseline, median ratio and [p10, p90]."""
    print("\n| spec | baseline | " + " | ".join(f"N={size_label(n)}" if i == 0 else size_label(n)
                                             for i, n in enumerate(sizes)) + " |")
    print("|---|---|" + "---|" * len(sizes))
    by_key = {(r.row.key, r.n, r.device.type): r for r in results}
    for device in dict.fromkeys(r.device.type for r in results):
        for row in dict.fromkeys(r.row for r in results):
            cells = [by_key.get((row.key, n, device)) for n in sizes]
            # a second line only where the term's algorithm was not itself the fastest known form
            distinct = any(r and r.fastest_known != row.same for r in cells)
            lines = [("same knowledge" if distinct else "hand-written", lambda r: r.fastest_known)]
            if distinct:
                lines.append(("same algorithm", lambda r: r.row.same))
            for baseline, side in lines:
                values = [format_spread(r.ratio(side(r))) if r else "" for r in cells]
                suffix = f" ({device})" if device != "cpu" else ""
                print(f"| {row.label}{suffix} | {baseline} | " + " | ".join(values) + " |")


def run_memory(rows: tuple[Row, ...], device: torch.device, n: int) -> None:
    """Peak memory of one eager forward + backward per side, after a warm-up call."""
    print(f"\npeak memory of one forward + backward, N = {size_label(n)}, {device.type} (MiB; ratio = lossdsl / side)")
    table = []
    for row in rows:
        inputs = row.inputs(n, device)
        peaks = {}
        for name, module in build_sides(row, device).items():
            pred = inputs["pred"].clone().requires_grad_()
            step(module, inputs, pred)  # buffers at their size, one-off allocations made
            pred.grad = None  # freed before, not during, the measured call
            peaks[name] = peak_memory_bytes(lambda: step(module, inputs, pred), device) / 2**20
        for name, peak in peaks.items():
            ratio = f"{peaks['lossdsl'] / peak:.2f}" if name != "lossdsl" and peak > 0 else ""
            table.append([row.key, name, f"{peak:.1f}", ratio])
    print_table(["row", "side", "peak MiB", "ratio"], table)


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> list[Result]:
    """Parse ``argv``, check, measure and print; the measurements (``benchmarks/cuda.py`` reads them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--row", action="append", choices=list(ROW_KEYS), help="only these rows (repeatable)")
    parser.add_argument("--n", action="append", type=int, help="only these batch sizes (repeatable)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or the process's CPU time (CPU only, with --threads 1)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per row and N (default 3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides; compile counts, guards")
    parser.add_argument("--memory", action="store_true", help="also the peak memory of each side at --memory-n")
    parser.add_argument("--memory-n", type=int, default=1 << 20, help="N for --memory (default 1M)")
    parser.add_argument("--markdown", action="store_true", help="also print the README's table")
    parser.add_argument("--profile", action="store_true", help="a torch.profiler table per side of each row afterwards")
    args = parser.parse_args(argv)
    chosen = devices(args)
    if args.clock == "cpu" and any(device.type != "cpu" for device in chosen):
        parser.error("--clock cpu times CPU work only: use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = tuple(ROW_KEYS[key] for key in dict.fromkeys(args.row)) if args.row else ROWS
    sizes = tuple(args.n) if args.n else (QUICK_SIZES if args.quick else SIZES)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"forward + backward{', torch.compile on both sides' if args.compile else ', eager'}; median "
          f"{'CPU' if args.clock == 'cpu' else 'wall'}-clock ms over interleaved ABBA repetitions"
          f"{' (--quick)' if args.quick else ''}; ratio = lossdsl / hand-written, median of per-block ratios "
          "[p10, p90]\n")
    results: list[Result] = []
    table: list[list[str]] = []
    compiles: list[list[str]] = []
    for device in chosen:
        for row in rows:
            for n in sizes:
                where = f"{row.key} N={size_label(n)} {device.type}"
                inputs = row.inputs(n, device)
                check_equal(row, inputs, device, where)
                if args.compile:
                    torch._dynamo.reset()  # each row and N compiles from nothing
                    sides, report = compile_report(row, inputs, device, where)
                    compiles += [[row.key, size_label(n), name, *cells] for name, cells in report.items()]
                else:
                    sides = build_sides(row, device)
                result = Result(row, n, device, measure(sides, inputs, device, args, clock))
                results.append(result)
                known = result.fastest_known
                table.append([row.key, size_label(n), device.type, f"{result.median('lossdsl'):.3f}",
                              f"{result.median(known):.3f} ({known})", format_spread(result.ratio(known)),
                              f"{result.median(row.same):.3f} ({row.same})", format_spread(result.ratio(row.same)),
                              str(result.reps)])
    print()
    print_table(["row", "N", "device", "lossdsl ms", "same knowledge ms (fastest)", "ratio [p10, p90]",
                 "same algorithm ms", "ratio [p10, p90]", "reps"], table)
    if compiles:
        print("\ntorch.compile, per side: compiles after the first call, recompiled on the second; "
              "one traced forward's graphs, graph breaks, guards and graph outputs")
        print_table(["row", "N", "side", "compiles", "recompiled", "graphs", "breaks", "guards", "outputs"], compiles)
    print_targets(results, args.compile)
    if args.markdown:
        print_markdown(results, sizes)
    if args.memory:
        for device in chosen:
            run_memory(rows, device, args.memory_n)
    if args.profile:
        for device in chosen:
            for row in rows:
                inputs = row.inputs(sizes[0], device)
                for name, module in build_sides(row, device).items():
                    pred = inputs["pred"].clone().requires_grad_()
                    print_profile(f"{row.key} {name}: N={size_label(sizes[0])}", lambda: step(module, inputs, pred),
                                  device, 50)
    return results


if __name__ == "__main__":
    sys.exit(main())
