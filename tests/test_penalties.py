"""soft_bound's softplus(k) and log_barrier penalties, against their closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossdsl
from lossdsl.library.soft_bound import BARRIER_EDGE


def value_and_grad(spec, **inputs):
    leaf = next(iter(inputs.values()))
    value = lossdsl.compile(spec)(**inputs)
    return value, torch.autograd.grad(value, leaf)[0]


@pytest.mark.parametrize("k", [1.0, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_penalty(k, dtype):
    y = (torch.randn(20, dtype=dtype) * 2).requires_grad_()
    spec = f"soft_bound(y <= 1, penalty=softplus({k}), margin=0.5)" if k != 1.0 else "soft_bound(y <= 1, penalty=softplus, margin=0.5)"
    got, grad = value_and_grad(spec, y=y)
    expected = (F.softplus(k * (y - 1 + 0.5)) / k).mean()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, y)[0])


def test_softplus_penalty_for_a_lower_bound():
    y = torch.randn(10, dtype=torch.float64, requires_grad=True)
    got, _ = value_and_grad("soft_bound(y >= 0, penalty=softplus(4))", y=y)
    torch.testing.assert_close(got, (F.softplus(4 * -y) / 4).mean())


def barrier_reference(excess):
    inside = -excess
    linear = -math.log(BARRIER_EDGE) + (excess + BARRIER_EDGE) / BARRIER_EDGE
    return torch.where(inside > BARRIER_EDGE, -torch.log(inside.clamp_min(BARRIER_EDGE)), linear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_barrier_inside_and_past_the_bound(dtype):
    y = torch.tensor([-3.0, 0.0, 0.5, 0.995, 1.0, 2.0, 1e4], dtype=dtype, requires_grad=True)
    got, grad = value_and_grad("soft_bound(y <= 1, penalty=log_barrier)", y=y)
    expected = barrier_reference(y - 1).mean()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, y)[0])
    assert torch.isfinite(got) and torch.isfinite(grad).all()
    # continuous at the edge, and its slope keeps pushing violations back
    edge = torch.tensor([1 - BARRIER_EDGE], dtype=torch.float64)
    torch.testing.assert_close(barrier_reference(edge - 1), torch.tensor([-math.log(BARRIER_EDGE)], dtype=torch.float64))
    assert grad[-1] > 0 and grad[-2] > 0


def test_equality_takes_only_squared_or_hinge():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("soft_bound(y == 1, penalty=log_barrier)")
    assert info.value.diagnostics[0].code == "E204"
    assert "an == comparison takes penalty=squared or penalty=hinge" in str(info.value)


@pytest.mark.parametrize(("spec", "code"), [
    ("soft_bound(y <= 1, penalty=softplus(-1))", "E205"),
    ("soft_bound(y <= 1, penalty=hinge(2))", "E204"),
    ("soft_bound(y <= 1, penalty=sofplus(2))", "E204"),
])
def test_bad_penalties(spec, code):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec)
    assert info.value.diagnostics[0].code == code


def test_option_with_argument_formats_and_builds():
    from lossdsl import T

    text = "soft_bound(y <= 1, penalty=softplus(10))"
    assert lossdsl.format(lossdsl.parse(text)).strip() == text
    assert T.soft_bound(T.input("y") <= 1, penalty=T.call("softplus", 10)).spec == lossdsl.parse(text)


@pytest.mark.parametrize("spec", ["soft_bound(y <= 1, sample_weight=y)", "soft_bound(0 <= y <= z, sample_weight=z)"])
def test_sample_weight_may_be_an_input_of_the_condition(spec):
    """The weights may be one of the condition's own inputs (weighting each sample by its size)."""
    y = torch.tensor([0.5, 2.0, 3.0, -1.0], requires_grad=True)
    z = torch.tensor([1.0, 1.5, 4.0, 0.5], requires_grad=True)
    got = lossdsl.compile(spec)(y=y, z=z)
    if "z)" in spec.split("sample_weight=")[1]:
        weight, penalty = z, F.relu(-y).square() + F.relu(y - z).square()
    else:
        weight, penalty = y, F.relu(y - 1).square()
    expected = (weight * penalty).sum() / weight.sum()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, (y, z), allow_unused=True, materialize_grads=True),
                               torch.autograd.grad(expected, (y, z), allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("term", ["l1", "l2"])
def test_a_penalty_weight_beyond_the_loss_weight_limit_is_refused(term):
    """l1(weight=3e38) was inf for any model whose weights sum above 1 (found by the fuzz, in an augmented constraint)."""
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(f"{term}(weight=3e38)")
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "E205" and (diagnostic.span.line, diagnostic.span.column) == (1, 11)
    model = nn.Linear(3, 2, bias=False)
    loss_fn = lossdsl.compile(f"{term}(weight=1e15)").bind(model)
    expected = model.weight.abs().sum() if term == "l1" else model.weight.square().sum()
    torch.testing.assert_close(loss_fn(), 1e15 * expected)
