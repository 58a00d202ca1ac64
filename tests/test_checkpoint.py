"""Checkpoint and resume lose nothing; eval mode changes no state.

One spec holds every kind of state a loss keeps: running class counts (ce(weight=balanced)), a
fairness window's running sums, a constraint's audited window, a Lagrange multiplier with its
update's state, and a schedule's step counter.
"""

import io

import torch

import lossdsl

SPEC = """
let data = ce(weight=balanced)
loss = data + warmup(5) * fairness(fpr_gap, group=g, groups=3, window=ema(0.8))
subject to fairness(dp_gap, group=g, groups=3) <= 0.01 as parity using lagrangian(lr=0.5)
"""
STATE = {"terms.0.class_counts", "terms.1.running_sums", "terms.2.running_sums", "multipliers", "dual_state",
         "step_count"}


def batch(step):
    generator = torch.Generator().manual_seed(step)
    pred = torch.randn(32, 2, dtype=torch.float64, generator=generator)
    target = torch.randint(0, 2, (32,), generator=generator)
    g = torch.randint(0, 3, (32,), generator=generator)
    return {"pred": pred, "target": target, "g": g}


def state_of(loss_fn):
    return {key: value.clone() for key, value in loss_fn.state_dict().items()}


def test_the_spec_keeps_every_kind_of_state():
    assert set(lossdsl.compile(SPEC).state_dict()) == STATE


def test_resume_from_a_state_dict_continues_exactly():
    trained = lossdsl.compile(SPEC)
    for step in range(4):
        trained(**batch(step))
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)  # through bytes, as a checkpoint file would
    buffer.seek(0)
    resumed = lossdsl.compile(SPEC)
    resumed.load_state_dict(torch.load(buffer))
    assert int(resumed.step_count) == 4 and float(resumed.multipliers[0]) > 0
    for step in range(4, 9):  # both go on in lockstep: equal values and equal state at every step
        value, expected = resumed(**batch(step)), trained(**batch(step))
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
        for key, tensor in state_of(resumed).items():
            torch.testing.assert_close(tensor, trained.state_dict()[key], rtol=0, atol=0)


def test_a_fresh_module_differs_so_the_round_trip_is_what_carries_the_state():
    trained = lossdsl.compile(SPEC)
    for step in range(4):
        trained(**batch(step))
    fresh = lossdsl.compile(SPEC)
    assert not torch.equal(fresh(**batch(4)), trained(**batch(4)))


def test_eval_mode_changes_no_state():
    loss_fn = lossdsl.compile(SPEC)
    for step in range(3):
        loss_fn(**batch(step))
    before = state_of(loss_fn)
    loss_fn.eval()
    first = loss_fn(**batch(10))
    second = loss_fn(**batch(10))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    for key, tensor in state_of(loss_fn).items():
        torch.testing.assert_close(tensor, before[key], rtol=0, atol=0)
