"""Every registered term, compiled alone, against its reference implementation called directly.

    python benchmarks/terms.py                      # full run
    python benchmarks/terms.py --quick              # a smoke run, well under a minute
    python benchmarks/terms.py --threads 1          # steadier on a busy machine
    python benchmarks/terms.py --clock cpu          # CPU time, not wall time: for a shared machine
    python benchmarks/terms.py --term ce --size large  # only these rows
    python benchmarks/terms.py --profile            # also profile one-call rows over target

Sizes: small is N = 4096 (classes C = 10, regression outputs 8, embeddings 16), large is
N = 262144; images are [1, 4, 64, 64] and [16, 4, 64, 64]; the l1 / l2 model is 2 x Linear(64)
and 8 x Linear(256).

For each term in ``lossdsl.REGISTRY`` (a term without a case here is an error, so
new terms are not forgotten), a one-term spec is compiled with lossdsl and timed,
forward + backward, against the term's reference:

- the torch functional it documents (``F.cross_entropy``, ``F.mse_loss``, ...),
- MONAI's ``DiceLoss``, ``TverskyLoss`` and ``FocalLoss`` where MONAI is the reference,
- otherwise the closed form written in plain torch, the way a practitioner would
  (``fairness`` as in ``benchmarks/overhead.py``'s hand-written version).

Rows marked ``1-call`` are terms whose reference is one torch call (ce, bce, mse,
mae, huber, smooth_l1, multi-class hinge, kl, triplet): lossdsl should cost no more
than that call, and the worst of their ratios is reported against the target 1.05.

Before timing, each case checks that lossdsl and the reference give the same
value and the same gradients (``torch.testing.assert_close``, float32
tolerances). Timing follows ``benchmarks/overhead.py``: lossdsl and reference
repetitions alternate in ABBA order in one loop, each side's time is the median,
and on CUDA each repetition is bracketed by ``torch.cuda.synchronize()``. The
number of repetitions adapts to the step time (a time budget per row, with a
floor and a cap). ``--clock cpu`` times with the process's CPU time instead of the
wall clock: on a machine shared with other jobs, time spent waiting for a core is
otherwise most of the noise.
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
from harness import add_common_arguments, devices, fpr_gap_ranked, gap_of_sums, print_profile  # noqa: E402

Inputs = dict[str, torch.Tensor]
Reference = Callable[..., torch.Tensor]

SMALL, LARGE = 4096, 262144
CLASSES = 10  # classes, labels
OUTPUTS = 8  # regression outputs per sample
EMBED = 16  # embedding / latent width
IMAGE = (4, 64, 64)  # channels, height, width of the segmentation cases
BATCH_IMAGES = {"small": 1, "large": 16}
GROUPS = 8
MANY_GROUPS = 2000  # sparse codes (multiples of 37), ranked within the batch
MLP = {"small": (64, 2), "large": (256, 8)}  # width, layers of the model that l1 and l2 penalise
TARGET_RATIO = 1.05


@dataclass
class Case:
    """One row: a one-term spec, its inputs and its reference, at one size."""

    term: str
    spec: str
    size: str  # "small" or "large"
    shape: str  # the main input's shape, shown in the table
    make: Callable[[torch.Generator], Inputs]  # CPU tensors; moved to the device afterwards
    reference: Reference  # called with the inputs as keywords
    grad: tuple[str, ...] = ("pred",)  # inputs that require grad
    one_call: bool = False  # the reference is a single torch call
    note: str = ""  # what the reference is, when it is not one torch functional
    variant: str = ""  # shown after the shape: "binary", "softmax", ...
    #: For weight penalties: builds the model that lossdsl is bound to (``LossModule.bind``). The
    #: gradients checked are then its parameters', and ``reference(model)`` returns the reference.
    model: Callable[[torch.Generator], torch.nn.Module] | None = None

    @property
    def size_label(self) -> str:
        return f"{self.shape} {self.variant}".rstrip()

    @property
    def label(self) -> str:
        return f"{self.spec} {self.size_label}"


# ---------------------------------------------------------------------------------------------
# References: called directly, written as a practitioner would.


def _torchvision_sigmoid_focal(pred: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """``torchvision.ops.sigmoid_focal_loss(..., alpha=-1, reduction="mean")``, its code inlined
    (torchvision is not a dependency)."""
    p = torch.sigmoid(pred)
    ce_loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (ce_loss * ((1 - p_t) ** gamma)).mean()


def _monai_softmax_focal(classes: int) -> Reference:
    """MONAI's softmax focal loss, summed over classes: its mean divides by N * C, lossdsl's by N."""
    from monai.losses import FocalLoss

    loss = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)
    return lambda pred, target: loss(pred, target.unsqueeze(1)) * classes


def _monai(name: str) -> Reference:
    import monai.losses

    loss = getattr(monai.losses, name)(softmax=True, to_onehot_y=True)
    return lambda pred, target: loss(pred, target)


def _soft_f1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(pred)
    tp = (p * target).sum(0)
    fp = (p * (1 - target)).sum(0)
    fn = ((1 - p) * target).sum(0)
    return (1 - 2 * tp / (2 * tp + fn + fp)).mean()


def _quantile(quantiles: tuple[float, ...]) -> Reference:
    q_cpu = torch.tensor(quantiles)
    cache: dict[torch.device, torch.Tensor] = {}

    def reference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = cache.get(pred.device)
        if q is None:
            q = cache[pred.device] = q_cpu.to(pred.device)
        residual = target.unsqueeze(-1) - pred
        return torch.maximum(q * residual, (q - 1) * residual).mean()

    return reference


def _kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def _contrastive(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    squared = (a - b).pow(2).sum(dim=1)
    distance = squared.sqrt()
    return (same * squared + (1 - same) * F.relu(margin - distance).pow(2)).mean()


def _fairness_known_groups(groups: int) -> Reference:
    def reference(pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(pred)
        negative = 1 - target.to(pred.dtype)
        sums = prob.new_zeros(groups, 2).index_add_(0, sex, torch.stack([prob * negative, negative], dim=1))
        return gap_of_sums(sums)

    return reference


def _worst_group_mse(groups: int) -> Reference:
    """group_loss(mse) with known groups: the largest per-group mean squared error, by index_add."""

    def reference(pred: torch.Tensor, target: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        squared = (pred - target).square()
        sums = pred.new_zeros(groups, 2).index_add_(0, sex, torch.stack([squared, torch.ones_like(squared)], dim=1))
        defined = sums[:, 1] > 0
        means = sums[:, 0] / torch.where(defined, sums[:, 1], torch.ones_like(sums[:, 1]))
        return means.masked_fill(~defined, float("-inf")).amax()

    return reference


def _penalty(weight: float, norm: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.nn.Module], Reference]:
    """weight * sum of norm(w) over the model's weights (biases and normalisation layers left out)."""

    def bind(model: torch.nn.Module) -> Reference:
        weights = [p for name, p in model.named_parameters() if not name.endswith("bias")]
        return lambda: weight * sum(norm(p) for p in weights)

    return bind


def _mlp(width: int, layers: int) -> Callable[[torch.Generator], torch.nn.Module]:
    def make(g: torch.Generator) -> torch.nn.Module:
        modules: list[torch.nn.Module] = []
        for _ in range(layers):
            linear = torch.nn.Linear(width, width)
            with torch.no_grad():
                linear.weight.copy_(torch.randn(width, width, generator=g) / math.sqrt(width))
                linear.bias.copy_(torch.randn(width, generator=g))
            modules += [linear, torch.nn.ReLU()]
        return torch.nn.Sequential(*modules[:-1])

    return make


# ---------------------------------------------------------------------------------------------
# Cases.


def _randn(*shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randn(*shape, generator=g)


def _labels(*shape: int, classes: int = CLASSES) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randint(0, classes, shape, generator=g)


def _flags(
    *shape: int, dtype: torch.dtype = torch.float32, p: float = 0.3
) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: (torch.rand(*shape, generator=g) < p).to(dtype)


def _inputs(**makers: Callable[[torch.Generator], torch.Tensor]) -> Callable[[torch.Generator], Inputs]:
    return lambda g: {name: make(g) for name, make in makers.items()}


def _shape(*dims: int) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def cases_at(size: str) -> list[Case]:
    """Every benchmark case at one size."""
    n = SMALL if size == "small" else LARGE
    c, o, d = CLASSES, OUTPUTS, EMBED
    images = (BATCH_IMAGES[size], *IMAGE)
    width, layers = MLP[size]
    mlp = f"{layers} x Linear({width})"
    channels = images[1]
    indices = (images[0], *images[2:])  # class indices [N, H, W] for ce
    pixels = (images[0], 1, *images[2:])  # class indices [N, 1, H, W], as MONAI's to_onehot_y takes them
    out = [
        # Classification.
        Case("ce", "ce()", size, _shape(n, c), _inputs(pred=_randn(n, c), target=_labels(n)),
             lambda pred, target: F.cross_entropy(pred, target), one_call=True),
        Case("ce", "ce()", size, _shape(n), _inputs(pred=_randn(n), target=_flags(n, dtype=torch.long)),
             lambda pred, target: F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype)),
             one_call=True, variant="binary"),
        Case("ce", "ce()", size, _shape(*images), _inputs(pred=_randn(*images), target=_labels(*indices, classes=channels)),
             lambda pred, target: F.cross_entropy(pred, target), one_call=True),
        Case("bce", "bce()", size, _shape(n, c), _inputs(pred=_randn(n, c), target=_flags(n, c)),
             lambda pred, target: F.binary_cross_entropy_with_logits(pred, target), one_call=True),
        Case("focal", "focal()", size, _shape(n, c), _inputs(pred=_randn(n, c), target=_flags(n, c)),
             _torchvision_sigmoid_focal, note="torchvision.ops.sigmoid_focal_loss's code", variant="sigmoid"),
        Case("focal", "focal()", size, _shape(n, c), _inputs(pred=_randn(n, c), target=_labels(n)),
             _monai_softmax_focal(c), note="monai FocalLoss(use_softmax=True) * C", variant="softmax"),
        Case("hinge", "hinge()", size, _shape(n, c), _inputs(pred=_randn(n, c), target=_labels(n)),
             lambda pred, target: F.multi_margin_loss(pred, target), one_call=True),
        Case("hinge", "hinge()", size, _shape(n), _inputs(pred=_randn(n), target=_flags(n, dtype=torch.long)),
             lambda pred, target: F.relu(1 - (2 * target.to(pred.dtype) - 1) * pred).mean(), variant="binary"),
        Case("soft_f1", "soft_f1()", size, _shape(n, c), _inputs(pred=_randn(n, c), target=_flags(n, c)), _soft_f1),
        # Regression.
        Case("mse", "mse()", size, _shape(n, o), _inputs(pred=_randn(n, o), target=_randn(n, o)),
             lambda pred, target: F.mse_loss(pred, target), one_call=True),
        Case("mae", "mae()", size, _shape(n, o), _inputs(pred=_randn(n, o), target=_randn(n, o)),
             lambda pred, target: F.l1_loss(pred, target), one_call=True),
        Case("huber", "huber()", size, _shape(n, o), _inputs(pred=_randn(n, o), target=_randn(n, o)),
             lambda pred, target: F.huber_loss(pred, target), one_call=True),
        Case("smooth_l1", "smooth_l1()", size, _shape(n, o), _inputs(pred=_randn(n, o), target=_randn(n, o)),
             lambda pred, target: F.smooth_l1_loss(pred, target), one_call=True),
        Case("log_cosh", "log_cosh()", size, _shape(n, o), _inputs(pred=_randn(n, o), target=_randn(n, o)),
             lambda pred, target: torch.log(torch.cosh(pred - target)).mean(),
             note="naive log(cosh(x)); lossdsl's form does not overflow"),
        Case("quantile", "quantile(q=[0.1, 0.5, 0.9])", size, _shape(n, 3),
             _inputs(pred=_randn(n, 3), target=_randn(n)),
             _quantile((0.1, 0.5, 0.9))),
        # Segmentation.
        Case("dice", "dice()", size, _shape(*images), _inputs(pred=_randn(*images), target=_labels(*pixels, classes=channels)),
             _monai("DiceLoss"), note="monai DiceLoss(softmax=True, to_onehot_y=True)"),
        Case("tversky", "tversky()", size, _shape(*images),
             _inputs(pred=_randn(*images), target=_labels(*pixels, classes=channels)),
             _monai("TverskyLoss"), note="monai TverskyLoss(softmax=True, to_onehot_y=True)"),
        # Divergences.
        Case("kl_normal", "kl_normal()", size, _shape(n, d), _inputs(mu=_randn(n, d), logvar=_randn(n, d)),
             _kl_normal, grad=("mu", "logvar")),
        Case("kl", "kl(p=teacher, q=student)", size, _shape(n, c), _inputs(teacher=_randn(n, c), student=_randn(n, c)),
             lambda teacher, student: F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1),
                                               log_target=True, reduction="batchmean"),
             grad=("student",), one_call=True),
        # Metric learning.
        Case("contrastive", "contrastive()", size, _shape(n, d),
             _inputs(a=_randn(n, d), b=_randn(n, d), same=_flags(n, p=0.5)),
             _contrastive, grad=("a", "b")),
        Case("triplet", "triplet()", size, _shape(n, d),
             _inputs(anchor=_randn(n, d), positive=_randn(n, d), negative=_randn(n, d)),
             lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative),
             grad=("anchor", "positive", "negative"), one_call=True),
        # Fairness.
        Case("fairness", "fairness(fpr_gap, group=sex)", size, _shape(n),
             _inputs(pred=_randn(n), target=_flags(n, dtype=torch.long), sex=_labels(n, classes=GROUPS)),
             fpr_gap_ranked, note="benchmarks/overhead.py's hand-written gap", variant=f"{GROUPS} groups"),
        Case("fairness", f"fairness(fpr_gap, group=sex, groups={GROUPS})", size, _shape(n),
             _inputs(pred=_randn(n), target=_flags(n, dtype=torch.long), sex=_labels(n, classes=GROUPS)),
             _fairness_known_groups(GROUPS), variant=f"{GROUPS} groups"),
        Case("fairness", "fairness(fpr_gap, group=sex)", size, _shape(n),
             _inputs(pred=_randn(n), target=_flags(n, dtype=torch.long),
                     sex=lambda g: 37 * torch.randint(0, MANY_GROUPS, (n,), generator=g)),
             fpr_gap_ranked, variant=f"{MANY_GROUPS} sparse groups"),
        Case("fairness", f"fairness(group_loss(mse), group=sex, groups={GROUPS})", size, _shape(n),
             _inputs(pred=_randn(n), target=_randn(n), sex=_labels(n, classes=GROUPS)),
             _worst_group_mse(GROUPS), variant=f"group_loss, {GROUPS} groups"),
        # Constraints.
        Case("soft_bound", "soft_bound(0 <= y <= 1)", size, _shape(n, o),
             _inputs(y=lambda g: 1.4 * torch.rand(n, o, generator=g) - 0.2),
             lambda y: F.relu(-y).square().mean() + F.relu(y - 1).square().mean(), grad=("y",)),
        # Reductions of tensor expressions.
        Case("mean", "mean(abs(pred - target))", size, _shape(n, o), _inputs(pred=_randn(n, o), target=_randn(n, o)),
             lambda pred, target: (pred - target).abs().mean()),
        Case("sum", "sum(square(pred - target))", size, _shape(n, o), _inputs(pred=_randn(n, o), target=_randn(n, o)),
             lambda pred, target: (pred - target).square().sum()),
        # Weight penalties, over a bound model.
        Case("l1", "l1(weight=1e-4)", size, mlp, _inputs(), _penalty(1e-4, lambda p: p.abs().sum()),
             grad=(), model=_mlp(width, layers)),
        Case("l2", "l2(weight=1e-4)", size, mlp, _inputs(), _penalty(1e-4, lambda p: p.square().sum()),
             grad=(), model=_mlp(width, layers)),
    ]
    return out


def check_coverage(cases: list[Case]) -> None:
    """Every registered term has a case, and every case names a registered term: fail loudly otherwise."""
    covered = {case.term for case in cases}
    missing = [name for name in lossdsl.REGISTRY if name not in covered]
    unknown = sorted(covered - set(lossdsl.REGISTRY))
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"no benchmark case for term(s) {', '.join(missing)}: add one to cases_at() in {__file__}")
        if unknown:
            problems.append(f"case(s) for unregistered term(s) {', '.join(unknown)}")
        raise SystemExit("error: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Measurement.


@dataclass
class Setup:
    """One case made concrete on a device: fresh inputs, a fresh lossdsl module, the reference."""

    inputs: Inputs
    grads: tuple[torch.Tensor, ...]  # the tensors whose gradients are checked (and reset each step)
    names: tuple[str, ...]  # their names, for messages
    ours: torch.nn.Module
    reference: Reference


def materialise(case: Case, device: torch.device, seed: int = 0) -> Setup:
    generator = torch.Generator().manual_seed(seed)
    inputs = {name: tensor.to(device) for name, tensor in case.make(generator).items()}
    for name in case.grad:
        inputs[name].requires_grad_()
    grads, names = tuple(inputs[name] for name in case.grad), case.grad
    ours = lossdsl.compile(case.spec).to(device)
    expected = lossdsl.REGISTRY[case.term].module
    if len(ours.terms) != 1 or type(ours.terms[0]) is not expected:
        raise SystemExit(f"error: spec {case.spec!r} does not compile to the single term {case.term}")
    reference = case.reference
    if case.model is not None:
        model = case.model(generator).to(device)
        ours.bind(model)
        reference = case.reference(model)
        named = list(model.named_parameters())
        grads, names = tuple(p for _, p in named), tuple(name for name, _ in named)
    return Setup(inputs, grads, names, ours, reference)


def step(loss_fn: Callable[..., torch.Tensor], inputs: Inputs, grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One forward + backward, gradients reset first."""
    for tensor in grads:
        tensor.grad = None
    loss = loss_fn(**inputs)
    loss.backward()
    return loss


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """float32 tolerances: relative 1e-4, absolute 1e-5 of the largest reference magnitude."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=max(1e-5 * scale, 1e-12), msg=lambda m: f"{what}: {m}")


def check_equal(case: Case, device: torch.device) -> None:
    """Fresh inputs and modules for each side: same value, same gradient for every tensor that takes one."""
    results = []
    for side in ("ours", "reference"):
        setup = materialise(case, device)
        value = step(getattr(setup, side), setup.inputs, setup.grads).detach()
        results.append((value, [None if t.grad is None else t.grad.clone() for t in setup.grads]))
    (ours, our_grads), (theirs, their_grads) = results
    where = case.label
    _close(ours, theirs, f"{where}: value")
    for name, mine, reference in zip(setup.names, our_grads, their_grads):
        if mine is None or reference is None:
            if (mine is None) != (reference is None):
                raise AssertionError(f"{where}: gradient of {name}: only one side has one")
            continue
        _close(mine, reference, f"{where}: gradient of {name}")


def measure(case: Case, device: torch.device, budget_s: float, min_reps: int, max_reps: int,
            warmup: int, clock: Callable[[], float] = time.perf_counter) -> tuple[float, float, int]:
    """Median ms per forward+backward (lossdsl, reference) and the repetitions per side.

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
    return statistics.median(times["lossdsl"]), statistics.median(times["reference"]), reps


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
          f"repetitions{' (--quick)' if args.quick else ''}; "
          f"value and gradients checked equal first; 1-call: the reference is one torch call\n")
    header = ["term", "spec", "size", "device", "lossdsl ms", "reference ms", "ratio", "1-call", "reps"]
    rows: list[tuple[Case, torch.device, float]] = []
    widths = [11, 43, 24, 6, 10, 12, 5, 6, 5]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    started = time.perf_counter()
    for device in chosen:
        for case in selected:
            check_equal(case, device)
            ours, theirs, reps = measure(case, device, budget_s, min_reps, max_reps, warmup, clock)
            ratio = ours / theirs
            rows.append((case, device, ratio))
            cells = [case.term, f"`{case.spec}`", case.size_label, device.type, f"{ours:.3f}", f"{theirs:.3f}",
                     f"{ratio:.2f}", "yes" if case.one_call else "", str(reps)]
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
