"""``fairness(group_loss(INNER), group=g)``: the inner loss's mean per group, its worst, gap and ratio."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairlearn.metrics import MetricFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mean_absolute_error, mean_squared_error

import lossdsl


def binary_inputs(n, generator):
    return torch.randn(n, dtype=torch.float64, generator=generator), torch.randint(0, 2, (n,), generator=generator)


def class_inputs(n, generator):
    return torch.randn(n, 4, dtype=torch.float64, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def real_inputs(n, generator):
    return torch.randn(n, dtype=torch.float64, generator=generator), torch.randn(n, dtype=torch.float64, generator=generator)


def float_binary_inputs(n, generator):
    pred, target = binary_inputs(n, generator)
    return pred, target.to(torch.float64)


# inner loss -> how to draw (pred, target)
INNERS = {
    "mse": real_inputs,
    "mae": real_inputs,
    "huber(delta=0.5)": real_inputs,
    "smooth_l1(beta=0.3)": real_inputs,
    "log_cosh": real_inputs,
    "quantile(0.3)": real_inputs,
    "bce": float_binary_inputs,
    "bce(pos_weight=2.0)": float_binary_inputs,
    "ce": binary_inputs,
    "ce(label_smoothing=0.1)": binary_inputs,
    "ce(weight=[1, 3, 2, 5])": class_inputs,
    "ce(ignore_index=2)": class_inputs,
    "focal(gamma=2.0)": float_binary_inputs,
    "focal(gamma=1.0, alpha=[1, 2, 1, 1])": class_inputs,
    "hinge": binary_inputs,
    "hinge(squared=true)": class_inputs,
}


@pytest.mark.parametrize("inner", INNERS)
def test_one_group_gives_the_inner_terms_own_value_and_gradient(inner):
    generator = torch.Generator().manual_seed(0)
    pred, target = INNERS[inner](16, generator)
    pred.requires_grad_()
    g = torch.full((16,), 7)
    got = lossdsl.compile(f"fairness(group_loss({inner}), group=g)")(pred=pred, target=target, g=g)
    expected = lossdsl.compile(inner if "(" in inner else f"{inner}()")(pred=pred, target=target)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(expected, pred)[0])


@pytest.mark.parametrize("inner", INNERS)
def test_each_group_mean_is_the_inner_term_on_that_group(inner):
    """The worst group, the gap and the ratio, against the inner term run group by group."""
    generator = torch.Generator().manual_seed(1)
    pred, target = INNERS[inner](30, generator)
    g = torch.randint(0, 3, (30,), generator=generator) * 5 - 4  # sparse, negative codes
    reference = lossdsl.compile(inner if "(" in inner else f"{inner}()")
    per_group = torch.stack([reference(pred=pred[g == k], target=target[g == k]) for k in torch.unique(g)])
    expected = {
        "group_loss": per_group.max(),
        "group_loss_gap": per_group.max() - per_group.min(),
        "group_loss_ratio": 1 - per_group.min() / per_group.max(),
    }
    for form, value in expected.items():
        got = lossdsl.compile(f"fairness({form}({inner}), group=g)")(pred=pred, target=target, g=g)
        torch.testing.assert_close(got, value)


@st.composite
def regression_groups(draw):
    num_groups = draw(st.integers(1, 6))
    n = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, num_groups, n) * draw(st.sampled_from([1, 3, 1000]))
    return rng.normal(size=n), rng.normal(size=n) * 2, groups, rng.random(n) + 0.1


@pytest.mark.parametrize(("inner", "metric"), [("mse", mean_squared_error), ("mae", mean_absolute_error)])
@settings(max_examples=25, deadline=None)
@given(data=regression_groups(), weighted=st.booleans())
def test_group_loss_equals_fairlearn_metric_frame(inner, metric, data, weighted):
    y, yhat, groups, weights = data
    kwargs = {"sample_params": {"sample_weight": weights}} if weighted else {}
    frame = MetricFrame(metrics=metric, y_true=y, y_pred=yhat, sensitive_features=groups, **kwargs)
    suffix = ", sample_weight=w)" if weighted else ")"
    inputs = {"pred": torch.tensor(yhat), "target": torch.tensor(y), "g": torch.tensor(groups), "w": torch.tensor(weights)}

    def ours(spec):
        loss_fn = lossdsl.compile(spec + suffix)
        return float(loss_fn(**{name: inputs[name] for name in loss_fn.inputs}))

    assert ours(f"fairness(group_loss({inner}), group=g") == pytest.approx(frame.group_max(), abs=1e-9)
    assert ours(f"fairness(group_loss({inner}), group=g, agg=mean") == pytest.approx(frame.by_group.mean(), abs=1e-9)
    if len(frame.by_group) < 2:  # one group: no disparity (fairlearn: 0 too)
        assert ours(f"fairness(group_loss_gap({inner}), group=g") == 0.0
        return
    for ref, method in (("groups", "between_groups"), ("overall", "to_overall")):
        gap = ours(f"fairness(group_loss_gap({inner}), group=g, ref={ref}")
        ratio = ours(f"fairness(group_loss_ratio({inner}), group=g, ref={ref}")
        assert gap == pytest.approx(frame.difference(method=method), abs=1e-9)
        assert ratio == pytest.approx(1 - frame.ratio(method=method), abs=1e-9)


def test_smoothmax_of_group_losses_is_the_log_mean_exp():
    generator = torch.Generator().manual_seed(2)
    pred, target = real_inputs(24, generator)
    pred.requires_grad_()
    g = torch.arange(24) % 4
    per_group = torch.stack([F.mse_loss(pred[g == k], target[g == k]) for k in range(4)])
    expected = 0.5 * (torch.logsumexp(per_group / 0.5, 0) - math.log(4))
    got = lossdsl.compile("fairness(group_loss(mse), group=g, agg=smoothmax(0.5))")(pred=pred, target=target, g=g)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(expected, pred)[0])


def test_inner_terms_read_their_own_inputs():
    loss_fn = lossdsl.compile("fairness(group_loss(contrastive(margin=2.0)), group=g, groups=3)")
    assert loss_fn.inputs == ("a", "b", "same", "g")
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(12, 5, generator=generator), torch.randn(12, 5, generator=generator)
    same = torch.randint(0, 2, (12,), generator=generator)
    g = torch.arange(12) % 3
    reference = lossdsl.compile("contrastive(margin=2.0)")
    per_group = torch.stack([reference(a=a[g == k], b=b[g == k], same=same[g == k]) for k in range(3)])
    torch.testing.assert_close(loss_fn(a=a, b=b, same=same, g=g), per_group.max())


def test_never_nan_on_empty_batches_and_ignored_groups():
    loss_fn = lossdsl.compile("fairness(group_loss_ratio(ce), group=g)")
    empty = loss_fn(pred=torch.zeros(0, requires_grad=True), target=torch.zeros(0, dtype=torch.long),
                    g=torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0
    pred = torch.randn(6, requires_grad=True)
    target = torch.tensor([1, 0, -100, -100, 1, 1])  # group 1 has only ignored targets: left out
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    for form in ("group_loss", "group_loss_gap", "group_loss_ratio"):
        value = lossdsl.compile(f"fairness({form}(ce), group=g)")(pred=pred, target=target, g=g)
        (grad,) = torch.autograd.grad(value, pred)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        assert grad[2:4].abs().sum() == 0


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("fairness(group_loss(dice), group=g)", "E204", "needs a loss with one value per sample"),
        ("fairness(group_loss(mse, mae), group=g)", "E207", "takes one loss term"),
        ("fairness(group_loss(mse(reduction=sum)), group=g)", "E204", "leave out 'reduction'"),
        ("fairness(group_loss(mse(sample_weight=w)), group=g)", "E204", "leave out 'sample_weight'"),
        ("fairness(group_loss(mes), group=g)", "E202", "did you mean 'mse'"),
        ("fairness(group_loss(3), group=g)", "E204", "takes a loss term"),
        ("fairness(group_loss, group=g)", "E204", "as in group_loss(mse)"),
        ("fairness(group_loss(mse), group=g, ref=overall)", "E204", "ref=overall takes group_loss_gap"),
        ("param d = 2\nloss = fairness(group_loss(huber(delta=d)), group=g)", "E204", "cannot set an argument"),
    ],
)
def test_group_loss_mistakes_are_diagnosed(spec, code, message):
    with pytest.raises(lossdsl.LossSpecError, match=re.escape(message)) as caught:
        lossdsl.compile(spec)
    assert f"[{code}]" in str(caught.value)


def test_group_loss_round_trips_through_format_and_explains():
    spec = "fairness(group_loss_gap(huber(delta=2)), group=g, sample_weight=w)"
    assert lossdsl.format(lossdsl.parse(spec)) == spec + "\n"
    assert str(lossdsl.compile(spec).plan.terms[0].params.stat) == "group_loss_gap(huber(delta=2))"


def test_fit_reaches_the_inner_term():
    labels = torch.tensor([0] * 90 + [1] * 10)
    pred, target, g = torch.tensor([[2.0, 0.0]] * 4), torch.tensor([0, 1, 1, 1]), torch.zeros(4, dtype=torch.long)
    plain = lossdsl.compile("ce(weight=balanced)").fit(target=labels).eval()
    grouped = lossdsl.compile("fairness(group_loss(ce(weight=balanced)), group=g)").fit(target=labels).eval()
    torch.testing.assert_close(grouped.terms[0].inner.class_counts, torch.tensor([90, 10]))
    torch.testing.assert_close(grouped(pred=pred, target=target, g=g), plain(pred=pred, target=target))


def test_half_precision_sums_do_not_overflow():
    g = torch.tensor([0, 0, 1, 1])
    pred, target = torch.zeros(4, dtype=torch.float16), torch.tensor([60.0, 60.0, 10.0, 10.0], dtype=torch.float16)
    for agg in ("max", "smoothmax(0.05)"):
        value = lossdsl.compile(f"fairness(group_loss(mse), group=g, agg={agg})")(pred=pred, target=target, g=g)
        assert value.dtype == torch.float16 and float(value) == pytest.approx(3600, rel=1e-3)
    n = 140_000  # float16 sums of this many ones overflow
    pred = torch.randn(n, generator=torch.Generator().manual_seed(0)).half().requires_grad_()
    target, g = torch.zeros(n, dtype=torch.float16), torch.zeros(n, dtype=torch.long)
    value = lossdsl.compile("fairness(group_loss(mse), group=g)")(pred=pred, target=target, g=g)
    expected = pred.detach().float().square().mean()
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-2)
    assert torch.isfinite(torch.autograd.grad(value, pred)[0]).all()


def test_fairness_pred_or_target_with_group_loss_is_diagnosed():
    with pytest.raises(lossdsl.LossSpecError, match=r"give pred= to it, as in group_loss\(mse\(pred=\.\.\.\)\)"):
        lossdsl.compile("fairness(group_loss(mse()), group=g, pred=z)")
