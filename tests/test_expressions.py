"""mean(...)/sum(...) of element-wise expressions, tensor functions in soft_bound, and l1/l2 penalties."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def grad(value, tensor):
    (result,) = torch.autograd.grad(value, tensor)
    return result


FUNCTION_CASES = [
    ("abs(pred - target)", lambda p, t: (p - t).abs()),
    ("square(pred - target)", lambda p, t: (p - t).square()),
    ("relu(pred - target)", lambda p, t: F.relu(p - t)),
    ("exp(-square(pred))", lambda p, t: torch.exp(-p.square())),
    ("log(1 + exp(pred)) - target * pred", lambda p, t: torch.log(1 + torch.exp(p)) - t * p),
    ("sigmoid(pred) * (1 - target)", lambda p, t: torch.sigmoid(p) * (1 - t)),
    ("softplus(-pred * target)", lambda p, t: F.softplus(-p * t)),
    ("clamp(pred, -0.5, 0.5) - target / 2", lambda p, t: torch.clamp(p, -0.5, 0.5) - t / 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("expression", "reference"), FUNCTION_CASES)
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_reductions_of_expressions_match_torch(reduce, expression, reference, dtype):
    pred = torch.randn(6, 3, dtype=dtype, requires_grad=True)
    target = torch.randn(6, 3, dtype=dtype)
    got = lossdsl.compile(f"{reduce}({expression})")(pred, target)
    expected = getattr(reference(pred, target), reduce)()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad(got, pred), grad(expected, pred))


def test_mean_with_sample_weight_is_the_weighted_mean_of_sample_means():
    pred, target, w = torch.randn(5, 4), torch.randn(5, 4), torch.rand(5)
    got = lossdsl.compile("mean(abs(pred - target), sample_weight=w)")(pred, target, w=w)
    per_sample = (pred - target).abs().mean(dim=1)
    torch.testing.assert_close(got, (w * per_sample).sum() / w.sum())


def test_integer_inputs_are_cast_to_float():
    counts = torch.tensor([1, 5, 12])
    got = lossdsl.compile("mean(relu(counts - 4))")(counts=counts)
    torch.testing.assert_close(got, F.relu(counts.float() - 4).mean())


def test_soft_bound_takes_functions_of_inputs():
    y = torch.randn(7, requires_grad=True) * 4
    got = lossdsl.compile("soft_bound(abs(y) <= 3)")(y=y)
    torch.testing.assert_close(got, F.relu(y.abs() - 3).square().mean())


@pytest.mark.parametrize(
    ("src", "code"),
    [
        ("mean(abss(pred))", "E202"),
        ("mean(ce())", "E202"),
        ("mean(3)", "E303"),
        ("mean(clamp(pred, 0))", "E207"),
        ("mean(clamp(pred, lo, 1))", "E204"),
        ("sum(abs(pred, target))", "E207"),
        ("mean(abs(x=pred))", "E207"),
        ("mean(pred <= 1)", "E303"),
        ("let a = mse()\nloss = mean(a)", "E204"),
    ],
)
def test_bad_expressions(src, code):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    assert info.value.diagnostics[0].code == code


# --- weight penalties ---


def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.LayerNorm(2)
    )


@pytest.mark.parametrize(("term", "norm"), [("l1", lambda p: p.abs().sum()), ("l2", lambda p: p.square().sum())])
def test_penalties_cover_weights_but_not_biases_or_norm_layers_by_default(term, norm):
    net = model()
    loss_fn = lossdsl.compile(f"{term}(weight=0.5)").bind(net)
    value = loss_fn()
    expected = 0.5 * (norm(net[0].weight) + norm(net[3].weight))
    torch.testing.assert_close(value, expected)
    value.backward()
    expected_grad = torch.autograd.grad(0.5 * norm(net[0].weight), net[0].weight)[0]
    torch.testing.assert_close(net[0].weight.grad, expected_grad)
    assert net[0].bias.grad is None and net[1].weight.grad is None


def test_penalties_can_include_biases_and_norm_layers():
    net = model()
    value = lossdsl.compile("l2(include_bias=true, include_norm=true)").bind(net)()
    torch.testing.assert_close(value, sum(p.square().sum() for p in net.parameters()))


def test_penalties_read_the_current_weights_and_own_nothing():
    net = model()
    loss_fn = lossdsl.compile("mse() + l1(weight=0.1)").bind(net)
    assert list(loss_fn.parameters()) == [] and list(loss_fn.state_dict()) == []
    with torch.no_grad():
        net[0].weight.add_(1.0)  # an optimiser step, in place
    pred, target = torch.randn(4), torch.randn(4)
    expected = F.mse_loss(pred, target) + 0.1 * (net[0].weight.abs().sum() + net[3].weight.abs().sum())
    torch.testing.assert_close(loss_fn(pred, target), expected)


def test_penalty_before_bind_is_a_clear_error():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("mse() + l2()", filename="reg.loss")(torch.zeros(2), torch.zeros(2))
    assert info.value.diagnostics[0].code == "E403"
    assert "l2() at reg.loss:1:9" in str(info.value) and "bind(model)" in str(info.value)


def test_inputs_that_do_not_broadcast_name_the_inputs():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("mean(y - z)")(y=torch.randn(8), z=torch.randn(3))
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "E402"
    assert "do not broadcast together: y (8,), z (3,)" in diagnostic.message


def test_inputs_that_broadcast_reduce_as_in_torch():
    y, z = torch.randn(8, 1), torch.randn(3)
    torch.testing.assert_close(lossdsl.compile("mean(abs(y - z))")(y=y, z=z), (y - z).abs().mean())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_clamp_bounds_beyond_the_dtype_act_as_its_edge(dtype):
    """torch.clamp refuses a bound the dtype cannot hold (1e30 in float16); mean(clamp(...)) clamps
    at the dtype's largest finite value instead, which changes no finite value."""
    y = torch.tensor([-2.0, 0.5, 3.0], dtype=dtype)
    got = lossdsl.compile("mean(clamp(y, -1e30, 1e30))")(y=y)
    torch.testing.assert_close(got, y.mean())
    torch.testing.assert_close(lossdsl.compile("mean(clamp(y, 0, 1e30))")(y=y), y.clamp(min=0).mean())


def test_clamp_bounds_beyond_the_dtype_on_either_side():
    y = torch.tensor([0.5, 2.0], dtype=torch.float16)
    torch.testing.assert_close(lossdsl.compile("mean(clamp(y, 1e20, 0.999))")(y=y), torch.clamp(y.float(), 1e20, 0.999).mean().half())


def test_the_input_that_does_not_broadcast_is_named():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("mean(y + w - z)")(y=torch.randn(8), w=torch.randn(8, 1), z=torch.randn(3))
    assert info.value.diagnostics[0].message.startswith("input 'z' of mean()")
    assert "y (8,), w (8, 1), z (3,)" in info.value.diagnostics[0].message
