"""Memory and time of ``linear_ce`` (chunked) against ``F.cross_entropy(hidden @ W.T, y)`` at a large vocabulary.

    python benchmarks/large_vocab.py                       # CUDA if available: N=4096, D=4096, V=128k, bfloat16
    python benchmarks/large_vocab.py --device cpu          # CPU defaults: N=512, D=512, V=128k, float32
    python benchmarks/large_vocab.py --n 256 --d 128 --v 32768 --reps 3   # a few seconds

Both sides get the same hidden states [N, D], output weight [V, D] (both requiring grad) and
targets [N], and run forward + backward. Memory is measured

- on CUDA: ``torch.cuda.max_memory_allocated`` during forward + backward, minus what was
  allocated before (the inputs): the peak the loss adds, the whole logits and their gradient
  for the reference, one chunk of them for linear_ce (plus the gradients of hidden and W, which
  both sides allocate);
- on the CPU: the bytes autograd keeps between forward and backward, beyond the inputs
  themselves, counted with ``torch.autograd.graph.saved_tensors_hooks`` (the reference keeps the
  [N, V] log-softmax; linear_ce each row's log-sum-exp [N]). This is no peak: transient buffers
  (one chunk of logits, the [N, V] gradient of the reference's backward) are not counted.

Time is the median of ``--reps`` forward + backward calls after one warm-up. The script first
checks that both give the same loss and gradients.
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the table; return the memory ratio (reference / linear_ce) and the time ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, help="rows (tokens); default 4096 on CUDA, 512 on the CPU")
    parser.add_argument("--d", type=int, help="hidden width; default 4096 on CUDA, 512 on the CPU")
    parser.add_argument("--v", type=int, default=128 * 1024, help="vocabulary (default 131072)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="default bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--chunk", default="auto", help="linear_ce's chunk_size (default auto)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n = args.n or (4096 if cuda else 512)
    d = args.d or (4096 if cuda else 512)
    v = args.v
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    chunk = args.chunk if args.chunk == "auto" else int(args.chunk)

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).to(device, dtype).requires_grad_()
    head = (torch.randn(v, d, generator=g) / d**0.5).to(device, dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g).to(device)
    chunked = lossdsl.compile(f"linear_ce(hidden=h, target=y, head=w, chunk_size={chunk})").to(device)

    sides = {
        "F.cross_entropy(h @ W.T, y)": lambda: F.cross_entropy((hidden @ head.T).float(), target),
        f"linear_ce(chunk_size={chunk})": lambda: chunked(h=hidden, y=target, w=head),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if cuda else ""))
    print(f"N={n} D={d} V={v} {str(dtype).removeprefix('torch.')} on {device}; forward + backward\n")
    _check_same(sides, hidden, head, dtype)
    memory = {name: _memory(run, hidden, head, cuda) for name, run in sides.items()}
    times = {name: _time(run, hidden, head, cuda, args.reps) for name, run in sides.items()}
    what = "peak CUDA memory added (MiB)" if cuda else "saved for backward beyond inputs (MiB)"
    print(f"| loss | {what} | median ms |")
    print("|---|---|---|")
    for name in sides:
        print(f"| {name} | {memory[name] / 2**20:,.3f} | {times[name] * 1e3:,.1f} |")
    reference, ours = list(sides)
    print(f"\nmemory ratio reference / linear_ce: {memory[reference] / max(memory[ours], 1):,.1f}x; "
          f"time ratio linear_ce / reference: {times[ours] / times[reference]:.2f}x")
    return {"memory_ratio": memory[reference] / max(memory[ours], 1), "time_ratio": times[ours] / times[reference]}


def _step(run, hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    hidden.grad = head.grad = None
    loss = run()
    loss.backward()
    return loss.detach()


def _check_same(sides, hidden: torch.Tensor, head: torch.Tensor, dtype: torch.dtype) -> None:
    results = []
    for run in sides.values():
        loss = _step(run, hidden, head)
        results.append((loss.float(), hidden.grad.float(), head.grad.float()))
    (a, *ga), (b, *gb) = results
    difference = max([(a - b).abs().item()] + [(x - y).abs().max().item() for x, y in zip(ga, gb)])
    print(f"same loss and gradients: largest difference {difference:.2e} (loss {b.item():.4f})\n")
    limit = 1e-4 if dtype == torch.float32 else 5e-2
    if difference > limit:
        raise SystemExit(f"linear_ce differs from the reference by {difference:.2e}")


def _memory(run, hidden: torch.Tensor, head: torch.Tensor, cuda: bool) -> int:
    if cuda:
        hidden.grad = head.grad = None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(run, hidden, head)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    inputs = {hidden.untyped_storage().data_ptr(), head.untyped_storage().data_ptr()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in inputs:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    hidden.grad = head.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = run()
    loss.backward()
    return sum(kept.values())


def _time(run, hidden: torch.Tensor, head: torch.Tensor, cuda: bool, reps: int) -> float:
    _step(run, hidden, head)  # warm-up
    samples = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        _step(run, hidden, head)
        if cuda:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


if __name__ == "__main__":
    main()
