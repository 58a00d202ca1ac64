"""The CUDA check of issue 16, one short script: host syncs, CUDA-graph capture, the speed table, the 4M target.

(Not ``cuda.py``: a file of that name in this folder, which is ``sys.path[0]`` when any script
here runs, shadows NVIDIA's ``cuda`` package, and ``import torch`` (``torch/cuda/_utils.py``
imports ``cuda.bindings``) then fails with a circular import in every benchmark script.)

    python benchmarks/cuda_check.py            # on a machine with a GPU: the four parts, then one summary
    python benchmarks/cuda_check.py --dry-run  # on the CPU: every part that runs without CUDA, at tiny sizes
    python benchmarks/cuda_check.py --full     # (c) compiled at every N, not only 1M (many more compiles)

Without CUDA (and without ``--dry-run``) it says so and exits 0. It exits 1 when a check fails
(a host sync, a graph replay that differs from eager, values that differ from the hand-written
loss); timings never fail it.

(a) Host syncs: the forward and backward of every spec of ``benchmarks/overhead.py``'s rows, the
    first call and a later one, under ``torch.cuda.set_sync_debug_mode("error")`` (any sync
    raises). Beforehand a dispatch mode lists the ops that read device data on the host
    (``aten._local_scalar_dense`` behind ``.item()``, ``bool(t)``, ``int(t)``; ``nonzero``,
    ``masked_select``, ``unique``: data-dependent shapes), to name the culprit. On the CPU
    (``--dry-run``) a host read costs no sync and is allowed: it is reported, not failed.
(b) CUDA graphs: a training step (a linear model's forward, the one-liner's loss, backward, an
    Adam step with ``capturable=True``) captured with ``torch.cuda.CUDAGraph`` on static inputs
    after warm-up steps on a side stream, then replayed on new batches; an eager twin, from the same
    start, takes the same batches; losses and parameters must agree. ``--dry-run`` runs both twins
    eagerly (no capture on the CPU), which checks the step and the comparison.
(c) The table: ``benchmarks/overhead.py``'s rows on the GPU, eager at N = 256 ... 1M, then compiled
    on both sides (at 1M unless ``--full``), and compiled lossdsl against eager hand-written code.
(d) The one-liner at N = 4M (4 * 2^20 binary logits: its fairness term needs binary logits ``[N]``,
    so the issue's "4M x 10" is read as 4M rows), 32 groups, forward + backward compiled, median ms
    (target: under 1.0 ms on an H100-class GPU), beside hand-written code that knows the 32 groups.

On the project's device machine (torch 2.11 with CUDA, Python 3.12; no lark or pydantic), carry
lossdsl's other dependencies as wheels (/work/.library/device/README.md), from the repository root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        lark==1.3.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \\
        typing_extensions==4.16.0

then run, with ``carry: [".whl"]`` and a timeout of about 9 minutes:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/cuda_check.py 2>&1 | tee $OUT/cuda.log
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import lossdsl  # noqa: E402
import overhead  # noqa: E402
from lossdsl.library.group_fairness import gap_of_sums  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

# Ops that bring device data to the host: a sync on CUDA.
HOST_READS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
                        "unique_dim", "unique_consecutive", "repeat_interleave", "equal", "is_nonzero"})
# Indexing ops that take a boolean mask as an index (``t[mask]``, ``t[mask] = v``): on CUDA they
# find the mask's true positions on the host (a nonzero below the dispatcher).
MASK_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
GROUPS_4M = 32


def _has_mask(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in indices)


class HostReads(TorchDispatchMode):
    """Records the ops of ``HOST_READS`` dispatched while active (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func._schema.name.split("::")[-1]
        if name in HOST_READS or (name in MASK_INDEXING and _has_mask(args)):
            self.seen.append(str(func) + (" with a boolean mask" if name in MASK_INDEXING else ""))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def sync_debug_error(cuda: bool) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode("error")`` for the block (nothing on the CPU)."""
    if not cuda:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def check_syncs(device: torch.device, n: int) -> list[str]:
    """(a): the problems found (on CUDA a host read or a sync is one; on the CPU reads are reported)."""
    cuda = device.type == "cuda"
    problems: list[str] = []
    for row in overhead.ROWS:
        inputs = row.inputs(n, device)
        # Two modules in lockstep: one call of each per round, so the checked call sees the recorded one's state.
        recorded, checked = (lossdsl.compile(row.spec).to(device) for _ in range(2))
        for call in ("first call", "later call"):
            recorder = HostReads()
            with recorder:
                overhead.step(recorded, inputs, inputs["pred"].clone().requires_grad_())
            reads = sorted(set(recorder.seen))
            error = ""
            try:
                # backward's kernels are launched (and any sync made) before step returns
                with sync_debug_error(cuda):
                    overhead.step(checked, inputs, inputs["pred"].clone().requires_grad_())
            except RuntimeError as raised:
                error = str(raised).splitlines()[0]
            verdict = "ok" if not reads and not error else ("host reads (allowed on the CPU)" if not cuda else "FAIL")
            print(f"  {row.key:<11} {call}: {verdict}" + (f"; reads: {', '.join(reads)}" if reads else "")
                  + (f"; sync: {error}" if error else ""), flush=True)
            if cuda and (reads or error):
                problems.append(f"{row.key} {call}: {', '.join(reads) or error}")
    return problems


def training_step(model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's forward, the loss, backward, the optimizer's step: what (b) captures."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(pred=model(batch["x"]).squeeze(1), target=batch["target"], sex=batch["sex"], y=batch["y"])
    loss.backward()
    optimizer.step()
    return loss


def batches(count: int, n: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(count):
        inputs = overhead.make_inputs(n, 2, device, seed=seed)
        x = torch.randn(n, 16, generator=torch.Generator().manual_seed(100 + seed)).to(device)
        out.append({"x": x, "target": inputs["target"], "sex": inputs["sex"], "y": inputs["y"]})
    return out


def check_graph(device: torch.device, n: int, warmup: int = 3, replays: int = 5) -> list[str]:
    """(b): replay of a captured training step equals the same steps taken eagerly."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1).to(device)
    twins = []
    for _ in range(2):  # (graphed, eager): the same start
        twin_model = copy.deepcopy(model)
        optimizer = torch.optim.Adam(twin_model.parameters(), lr=1e-2, capturable=cuda)
        twins.append((twin_model, lossdsl.compile(overhead.SPEC).to(device), optimizer))
    data = batches(warmup + replays, n, device)
    (g_model, g_loss, g_opt), (e_model, e_loss, e_opt) = twins
    eager_losses = [training_step(e_model, e_loss, e_opt, batch).detach() for batch in data]

    static = {name: tensor.clone() for name, tensor in data[0].items()}
    graphed_losses = []
    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the CUDA-graph docs ask
            for batch in data[:warmup]:
                graphed_losses.append(training_step(g_model, g_loss, g_opt, batch).detach().clone())
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        g_opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                static_loss = training_step(g_model, g_loss, g_opt, static)
        except RuntimeError as error:  # a sync or a host read inside the step cannot be captured
            problem = f"capture failed: {str(error).splitlines()[0]}"
            print("  " + problem, flush=True)
            return [problem]
        for batch in data[warmup:]:
            for name, tensor in batch.items():
                static[name].copy_(tensor)
            graph.replay()
            graphed_losses.append(static_loss.detach().clone())
        torch.cuda.synchronize()
    else:  # no capture on the CPU: the twin steps eagerly through the static inputs
        for batch in data:
            for name, tensor in batch.items():
                static[name].copy_(tensor)
            graphed_losses.append(training_step(g_model, g_loss, g_opt, static).detach().clone())
    problems = []
    try:
        torch.testing.assert_close(torch.stack(graphed_losses), torch.stack(eager_losses))
        for a, b in zip(g_model.parameters(), e_model.parameters()):
            torch.testing.assert_close(a, b)
    except AssertionError as error:
        problems.append(f"graph replay differs from eager: {str(error).splitlines()[0]}")
    what = "CUDA-graph replay" if cuda else "eager twin through static inputs (no capture on the CPU)"
    print(f"  {what} over {warmup} warm-up + {replays} steps: "
          + ("losses and parameters equal eager" if not problems else problems[0]), flush=True)
    return problems


def table(device: torch.device, dry_run: bool, full: bool) -> list[str]:
    """(c): the rows eager, then compiled; summary lines."""
    base = ["--device", device.type, "--threads", "1", *([] if dry_run else ["--budget", "1"])]
    if dry_run:
        eager = overhead.run([*base, "--quick", "--n", "256"])
        compiled = []
    else:
        eager = overhead.run([*base, "--markdown", "--memory"])
        compiled = overhead.run([*base, "--compile", "--markdown", *([] if full else ["--n", str(1 << 20)])])
    lines = []
    worst = max(eager, key=lambda r: r.ratio(r.fastest_known)[0])
    lines.append(f"eager worst ratio vs same knowledge {worst.ratio(worst.fastest_known)[0]:.2f} "
                 f"({worst.row.key}, N={overhead.size_label(worst.n)})")
    if compiled:
        worst = max(compiled, key=lambda r: r.ratio(r.fastest_known)[0])
        lines.append(f"compiled worst ratio vs compiled same knowledge {worst.ratio(worst.fastest_known)[0]:.2f} "
                     f"({worst.row.key}, N={overhead.size_label(worst.n)})")
        eager_by = {(r.row.key, r.n): r for r in eager}
        for result in compiled:  # compiled lossdsl against eager hand-written, from the two runs' medians
            against = eager_by.get((result.row.key, result.n))
            if against:
                lines.append(f"compiled lossdsl / eager hand-written, {result.row.key} N={overhead.size_label(result.n)}: "
                             f"{result.median('lossdsl') / against.median(against.fastest_known):.2f}")
    else:
        lines.append("compiled: skipped in --dry-run (inductor compiles take minutes on the CPU; "
                     "overhead.py --compile runs them)")
    return lines


def known_groups(groups: int) -> Callable[..., torch.Tensor]:
    """Hand-written fairness gap that knows the group count: one index_add into ``groups`` bins."""

    def gap(num: torch.Tensor, den: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        return gap_of_sums(num.new_zeros(groups, 2).index_add_(0, sex, torch.stack([num, den], dim=1)))

    return gap


def target_4m(device: torch.device, n: int, compiled: bool, reps: int) -> str:
    """(d): median ms of forward + backward of the one-liner (and hand-written with the count)."""
    inputs = overhead.make_inputs(n, GROUPS_4M, device)
    sides = {"lossdsl": lossdsl.compile(overhead.SPEC).to(device),
             "hand-written": overhead.OneLiner(known_groups(GROUPS_4M)).to(device)}
    if compiled:
        sides = {name: torch.compile(module, dynamic=False) for name, module in sides.items()}
    pred = inputs["pred"].clone().requires_grad_()
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides.items())
    for rep in range(3 + reps):
        for name, module in (order if rep % 2 == 0 else order[::-1]):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            overhead.step(module, inputs, pred)
            if cuda:
                torch.cuda.synchronize()
            if rep >= 3:
                times[name].append((time.perf_counter() - start) * 1e3)
    ours, theirs = (statistics.median(times[name]) for name in sides)
    mode = "compiled" if compiled else "eager"
    verdict = "" if not cuda else (" meets" if ours < 1.0 else " misses") + " the target of under 1.0 ms (H100-class)"
    return (f"one-liner N={overhead.size_label(n)}, {GROUPS_4M} groups, {mode} forward + backward: lossdsl {ours:.3f} ms, "
            f"hand-written {theirs:.3f} ms{verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes: what runs without CUDA")
    parser.add_argument("--full", action="store_true", help="(c) compiled at every N, not only 1M")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks/cuda_check.py: no CUDA device here, nothing checked (--dry-run exercises the script on the CPU)")
        return 0
    device = torch.device("cpu" if args.dry_run else "cuda")
    torch.set_num_threads(1)
    n_small = 256 if args.dry_run else 1 << 20
    print(f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ", CPU")
          + (" (--dry-run)" if args.dry_run else ""), flush=True)
    summary: list[str] = []
    problems: list[str] = []

    def part(label: str, run: Callable[[], list[str]]) -> list[str]:
        """Run one part; a part that breaks (or a benchmark that stops on unequal values) is a failed
        check, and the later parts and the summary still run: a GPU lease is short."""
        try:
            return run()
        except (Exception, SystemExit) as error:  # noqa: BLE001
            problem = f"{label} broke: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            print("  " + problem, flush=True)
            problems.append(problem)
            summary.append(problem)
            return []

    print(f"\n(a) host syncs in forward + backward, N={overhead.size_label(n_small)}")
    found = part("(a)", lambda: check_syncs(device, n_small))
    problems += found
    if device.type == "cpu":
        summary.append("(a) CPU: host reads, if any, listed above (allowed there; the sync check needs CUDA)")
    elif found:
        summary.append(f"(a) {len(found)} syncing calls: " + "; ".join(found))
    elif not any(line.startswith("(a)") for line in summary):
        summary.append("(a) no host sync in any row's forward or backward")

    print(f"\n(b) a captured training step, N={overhead.size_label(n_small)}")
    found = part("(b)", lambda: check_graph(device, n_small))
    problems += found
    if not any(line.startswith("(b)") for line in summary):
        summary.append("(b) " + (found[0] if found else "replay equals eager (losses and parameters)"
                                 if device.type == "cuda" else "eager twins equal (no capture on the CPU)"))

    print("\n(c) the table")
    summary += ["(c) " + line for line in part("(c)", lambda: table(device, args.dry_run, args.full))]

    print("\n(d) the 4M target")
    n_big = 4096 if args.dry_run else 4 << 20
    found = part("(d)", lambda: [target_4m(device, n_big, compiled=not args.dry_run, reps=5 if args.dry_run else 50)])
    for line in found:
        print("  " + line)
        summary.append("(d) " + line + (" (--dry-run: eager, small N)" if args.dry_run else ""))

    print("\nsummary:")
    print("\n".join("  " + line for line in summary))
    print("all checks passed" if not problems else f"{len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
