"""warmup/linear/cosine schedules and the step counter."""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def reference(kind, step, start=0.0, end=1.0, steps=4):
    progress = min(1.0, step / steps)
    if kind == "warmup":
        return progress
    if kind == "linear":
        return start + (end - start) * progress
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    ("schedule", "kind", "args"),
    [("warmup(4)", "warmup", {}), ("linear(2, 0.5, 4)", "linear", {"start": 2, "end": 0.5}),
     ("cosine(1, 0, steps=4)", "cosine", {"start": 1, "end": 0})],
)
def test_schedules_follow_the_step_counter(schedule, kind, args):
    loss_fn = lossdsl.compile(f"mse() + {schedule} * mae()")
    pred, target = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    for step in range(7):  # training mode: one step per call, held after `steps`
        got = loss_fn(pred, target)
        expected = F.mse_loss(pred, target) + reference(kind, step, **args) * F.l1_loss(pred, target)
        torch.testing.assert_close(got, expected)
    assert int(loss_fn.step_count) == 7


def test_eval_mode_does_not_step_and_step_advances_by_hand():
    loss_fn = lossdsl.compile("warmup(10) * mse()")
    pred, target = torch.randn(3), torch.randn(3)
    loss_fn(pred, target)
    loss_fn.eval()
    loss_fn(pred, target)
    assert int(loss_fn.step_count) == 1
    loss_fn.step(4)
    torch.testing.assert_close(loss_fn(pred, target), 0.5 * F.mse_loss(pred, target))


def test_the_step_counter_survives_state_dict():
    trained = lossdsl.compile("warmup(10) * mse()")
    trained.step(7)
    restored = lossdsl.compile("warmup(10) * mse()")
    restored.load_state_dict(trained.state_dict())
    assert int(restored.step_count) == 7
    assert "step_count" not in lossdsl.compile("mse()").state_dict()  # no schedule, no counter


def test_schedules_with_params_and_under_torch_compile():
    loss_fn = lossdsl.compile("param w = 2.0\nloss = mse() + w * warmup(4) * mae()")
    compiled = torch.compile(loss_fn, fullgraph=True)
    pred, target = torch.randn(5), torch.randn(5)
    for step in range(3):
        expected = F.mse_loss(pred, target) + 2.0 * min(1.0, step / 4) * F.l1_loss(pred, target)
        torch.testing.assert_close(compiled(pred, target), expected)


@pytest.mark.parametrize(
    ("src", "code"),
    [("warmup() * mse()", "E206"), ("warmup(0) * mse()", "E205"), ("warmup(1.5) * mse()", "E204"),
     ("linear(0, 1) * mse()", "E206"), ("warmup(steps=5, x=1) * mse()", "E203"), ("warmup(10)", "E301"),
     ("warmup(10) + mse()", "E302"), ("linear(0, 1, 2, 3) * mse()", "E207")],
)
def test_schedule_mistakes(src, code):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    assert info.value.diagnostics[0].code == code


def test_a_deep_copy_follows_its_own_step_counter():
    import copy

    original = lossdsl.compile("warmup(4) * mse()")
    original.step(4)
    duplicate = copy.deepcopy(original)
    duplicate.step_count.zero_()
    pred, target = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(original(pred, target), F.mse_loss(pred, target))
    torch.testing.assert_close(duplicate(pred, target), 0.0 * F.mse_loss(pred, target))
