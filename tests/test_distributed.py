"""Under torch.distributed (two CPU processes, gloo), statistics cover the global batch.

Each rank holds half of a batch. The fairness penalty on every rank must equal the single-process
penalty of the whole batch, and the parameter gradients, averaged over ranks as DDP averages them,
must equal the single-process gradients. ce(weight=balanced)'s running class counts, and a
fairness window's running sums, must be the global ones on every rank.
"""

import datetime
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lossdsl

WORLD = 2
N = 24  # per rank
SPECS = {
    "fpr": "ce() + 2 * fairness(fpr_gap, group=g, groups=3)",
    "eo_ratio_overall": "ce() + fairness(eo_ratio, group=g, groups=3, ref=overall, agg=mean)",
    "group_loss": "fairness(group_loss(ce), group=g, groups=3) + 0.5 * fairness(dp_gap, group=g, groups=3, agg=smoothmax(0.1))",
    "window": "ce() + fairness(tpr_gap, group=g, groups=3, window=ema(0.5))",
}


def make_batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * N, 5, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 2, (WORLD * N,), generator=generator)
    g = torch.randint(0, 3, (WORLD * N,), generator=generator)
    g[:N] = torch.where(g[:N] == 2, 0, g[:N])  # group 2 lives mostly on rank 1: local rates would differ
    return x, y, g


def make_model():
    torch.manual_seed(1)
    return torch.nn.Linear(5, 1).double()


def run(spec, x, y, g, steps=2):
    """Loss values, the fairness value, parameter gradients and the state after ``steps`` calls."""
    model = make_model()
    loss_fn = lossdsl.compile(spec)
    outputs = []
    for _ in range(steps):
        model.zero_grad()
        loss = loss_fn(pred=model(x)[:, 0], target=y, g=g)
        loss.backward()
        terms = {k: v.clone() for k, v in loss_fn.last_terms.items()}
        outputs.append((terms, [p.grad.clone() for p in model.parameters()]))
    return outputs, {k: v.clone() for k, v in loss_fn.state_dict().items()}


def _worker(rank, init_file, out_dir):
    # A short timeout: a rank that skips a collective fails the test instead of hanging it.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        x, y, g = make_batch()
        part = slice(rank * N, (rank + 1) * N)
        results = {}
        for name, spec in SPECS.items():
            outputs, state = run(spec, x[part], y[part], g[part])
            for terms, grads in outputs:
                for grad in grads:  # what DDP does: average the parameter gradients over ranks
                    dist.all_reduce(grad)
                    grad /= WORLD
            results[name] = (outputs, state)
        outputs, state = run("ce(weight=balanced)", x[part], y[part], g[part], steps=1)
        results["balanced"] = state
        # Rank 1 has an empty batch: it must still take part in every sum, or rank 0 waits forever.
        mine = slice(0, N) if rank == 0 else slice(0, 0)
        for name in ("fpr", "group_loss"):
            outputs, _ = run(SPECS[name], x[mine], y[mine], g[mine], steps=1)
            results[f"{name}_empty_rank"] = outputs[0][0]
        outputs, state = run("ce(weight=balanced)", x[mine], y[mine], g[mine], steps=1)
        results["balanced_empty_rank"] = state
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while another still talks to it (a rare SIGABRT in CI)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as out_dir:
        init_file = os.path.join(out_dir, "init")
        mp.start_processes(_worker, args=(init_file, out_dir), nprocs=WORLD, join=True, start_method="spawn")
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("name", SPECS)
def test_each_rank_sees_the_global_batch(ranks, name):
    x, y, g = make_batch()
    expected_outputs, expected_state = run(SPECS[name], x, y, g)
    fairness_labels = [label for label in expected_outputs[0][0] if label.startswith("fairness")]
    for rank in ranks:
        outputs, state = rank[name]
        for (terms, grads), (expected_terms, expected_grads) in zip(outputs, expected_outputs):
            for label in fairness_labels:  # the penalty of the global batch, on every rank
                torch.testing.assert_close(terms[label], expected_terms[label])
            for grad, expected_grad in zip(grads, expected_grads):  # DDP-averaged = single process
                torch.testing.assert_close(grad, expected_grad)
        for key, value in expected_state.items():  # running sums of the window: global ones
            torch.testing.assert_close(state[key], value)


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")
def test_balanced_class_counts_are_the_global_counts(ranks):
    x, y, g = make_batch()
    _, expected = run("ce(weight=balanced)", x, y, g, steps=1)
    assert expected["terms.0.class_counts"].sum() == WORLD * N
    for rank in ranks:
        torch.testing.assert_close(rank["balanced"]["terms.0.class_counts"], expected["terms.0.class_counts"])


@pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")
@pytest.mark.parametrize("name", ["fpr", "group_loss"])
def test_a_rank_with_an_empty_batch_still_takes_part(ranks, name):
    x, y, g = make_batch()
    (expected_terms, _), = run(SPECS[name], x[:N], y[:N], g[:N], steps=1)[0][:1]
    for rank in ranks:
        terms = rank[f"{name}_empty_rank"]
        for label, value in expected_terms.items():
            if label.startswith("fairness"):
                torch.testing.assert_close(terms[label], value)
    _, expected_state = run("ce(weight=balanced)", x[:N], y[:N], g[:N], steps=1)
    for rank in ranks:
        torch.testing.assert_close(rank["balanced_empty_rank"]["terms.0.class_counts"], expected_state["terms.0.class_counts"])


def test_without_a_group_count_the_ranks_cannot_agree(monkeypatch):
    from lossdsl import distributed

    monkeypatch.setattr(distributed, "active", lambda: True)
    pred, g = torch.randn(6), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(lossdsl.LossSpecError, match=r"E403.*give groups=K") as caught:
        lossdsl.compile("fairness(dp_gap, group=g)")(pred=pred, g=g)
    assert "fairness() at <spec>:1:1" in str(caught.value)
    # sync=false keeps each rank's own batch, and needs no collective
    value = lossdsl.compile("fairness(dp_gap, group=g, sync=false)")(pred=pred, g=g)
    assert torch.isfinite(value)
