"""Precision (PPV), accuracy and balanced-accuracy parity: ``fairness(ppv_gap | ppv_ratio |
accuracy_gap | accuracy_ratio | balanced_accuracy_gap | balanced_accuracy_ratio, group=G)``.

Hard predictions against fairlearn's ``MetricFrame`` with sklearn's ``precision_score``,
``accuracy_score`` and ``balanced_accuracy_score`` (``difference()`` and ``1 - ratio()``, both
methods, sample weights); soft predictions against a per-group loop, values and gradients; windows,
``subject to`` and ``lossdsl.audit``."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score

import lossdsl

# zero_division=nan: a group without predicted positives has no precision, and MetricFrame's
# difference() / ratio() skip it (pandas' max and min skip NaN), as lossdsl leaves it out.
SKLEARN = {
    "ppv": functools.partial(precision_score, zero_division=np.nan),
    "accuracy": accuracy_score,
    "balanced_accuracy": balanced_accuracy_score,
}
STATS = sorted(SKLEARN)
HARD = 40.0  # sigmoid(+-40) is 1 and 4e-18: 0/1 far below the tolerance
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fairlearn_value(stat, form, ref, y, yhat, g, weights=None, metric=None):
    method = "to_overall" if ref == "overall" else "between_groups"
    kwargs = {"sample_params": {"sample_weight": weights}} if weights is not None else {}
    with warnings.catch_warnings():  # sklearn warns for a group with one class (balanced accuracy)
        warnings.simplefilter("ignore")
        frame = MetricFrame(metrics=metric or SKLEARN[stat], y_true=y, y_pred=yhat, sensitive_features=g, **kwargs)
        return frame.difference(method=method) if form == "gap" else 1 - frame.ratio(method=method)


def ours(spec, logits, y, g, weights=None):
    inputs = {"pred": logits, "target": torch.as_tensor(y), "g": torch.as_tensor(g)}
    if weights is not None:
        inputs["w"] = torch.as_tensor(weights, dtype=torch.float64)
    return lossdsl.compile(spec)(**inputs)


@st.composite
def hard_groups(draw):
    """Hard predictions over 2-5 groups of 1-12 samples: some groups may have one label only or no
    predicted positive, so every rate's undefined case (and sklearn's zero_division) comes up."""
    num_groups = draw(st.integers(2, 5))
    codes = draw(st.lists(st.integers(-50, 50), min_size=num_groups, max_size=num_groups, unique=True))
    y, yhat, g = [], [], []
    for code in codes:
        size = draw(st.integers(1, 12))
        y += draw(st.lists(st.integers(0, 1), min_size=size, max_size=size))
        yhat += draw(st.lists(st.integers(0, 1), min_size=size, max_size=size))
        g += [code] * size
    weighted = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    weights = np.random.default_rng(seed).uniform(0.1, 2.0, len(y)) if weighted else None
    return np.array(y), np.array(yhat), np.array(g), weights


@pytest.mark.parametrize("ref", ["groups", "overall"])
@pytest.mark.parametrize("form", ["gap", "ratio"])
@pytest.mark.parametrize("stat", STATS)
@SETTINGS
@given(data=hard_groups())
def test_hard_predictions_equal_fairlearn_metric_frame(stat, form, ref, data):
    y, yhat, g, weights = data
    expected = fairlearn_value(stat, form, ref, y, yhat, g, weights)
    # hard=true: exact 0/1 predictions (sigmoid(-40) = 4e-18 is no 0 for a ratio of rates near 0)
    logits = torch.tensor(np.where(yhat == 1, 1.5, -0.5), dtype=torch.float64)
    weight = ", sample_weight=w" if weights is not None else ""
    got = ours(f"fairness({stat}_{form}, group=g, ref={ref}, hard=true{weight})", logits, y, g, weights)
    # The soft rates of saturated logits agree with it; but a group without predicted positives keeps
    # a soft precision (the mean of its labels weighted by p = 4e-18), which the hard one has not.
    every_group_selects = all(yhat[g == code].any() for code in np.unique(g))
    if form == "gap" and (stat != "ppv" or every_group_selects):
        saturated = torch.tensor(np.where(yhat == 1, HARD, -HARD), dtype=torch.float64)
        soft = ours(f"fairness({stat}_{form}, group=g, ref={ref}{weight})", saturated, y, g, weights)
        assert float(soft) == pytest.approx(float(got), abs=1e-9)
    assert torch.isfinite(got)
    if np.isnan(expected):  # fairlearn's 0 / 0 (equal rates of 0, or no group defined): ours is 0
        assert float(got) == 0.0
    else:
        assert float(got) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("stat", STATS)
@settings(max_examples=15, deadline=None)
@given(data=hard_groups(), seed=st.integers(0, 1000))
def test_hard_true_and_audit_equal_fairlearn_on_any_logits(stat, data, seed):
    """hard=true and lossdsl.audit threshold pred > 0: fairlearn's value whatever the logits' scale."""
    y, _, g, _ = data
    logits = torch.randn(len(y), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    yhat = (logits > 0).long().numpy()
    expected = np.nan_to_num(fairlearn_value(stat, "gap", "groups", y, yhat, g))
    got = ours(f"fairness({stat}_gap, group=g, hard=true)", logits, y, g)
    assert float(got) == pytest.approx(expected, abs=1e-9)
    loss_fn = lossdsl.compile(f"loss = mse(pred=pred, target=r)\nsubject to fairness({stat}_gap, group=g) <= 0.1 as c")
    report = lossdsl.audit(loss_fn, pred=logits, target=torch.tensor(y), g=torch.tensor(g), r=torch.zeros_like(logits),
                           chunk_size=7)
    assert report.constraints["c"].value == pytest.approx(expected, abs=1e-9)


def test_a_group_without_predicted_positives_is_left_out_where_sklearn_scores_zero():
    """Documented divergence: sklearn's precision_score (zero_division="warn", the default) scores a
    group with no predicted positive 0, so fairlearn's gap spans to 0; lossdsl leaves the group out."""
    y = np.array([1, 1, 0, 0, 1, 0, 0, 1, 1, 0])
    yhat = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])  # group 2 predicts no positive
    logits = torch.tensor(np.where(yhat == 1, HARD, -HARD), dtype=torch.float64, requires_grad=True)
    value = ours("fairness(ppv_gap, group=g)", logits, y, g)
    got = value.detach()
    # group 0: 2 of 3 predicted positives are right; group 1: 1 of 2
    assert float(got) == pytest.approx(2 / 3 - 1 / 2, abs=1e-12)
    assert float(got) == pytest.approx(fairlearn_value("ppv", "gap", "groups", y, yhat, g), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's UndefinedMetricWarning
        sklearn_default = fairlearn_value("ppv", "gap", "groups", y, yhat, g, metric=precision_score)
    assert sklearn_default == pytest.approx(2 / 3)
    assert torch.isfinite(torch.autograd.grad(value, logits)[0]).all()


# --------------------------------------------------------------------------------------------
# Soft predictions: a per-group loop, values and gradients
# --------------------------------------------------------------------------------------------


def soft_rate(stat, p, y):
    """One group's soft rate, or None where undefined."""
    if stat == "ppv":
        return (p * y).sum() / p.sum() if p.sum() > 0 else None
    if stat == "accuracy":
        return (p * y + (1 - p) * (1 - y)).mean()
    recalls = []  # balanced accuracy: the mean of the recalls of the classes present
    if (y == 1).any():
        recalls.append(p[y == 1].mean())
    if (y == 0).any():
        recalls.append((1 - p[y == 0]).mean())
    return sum(recalls) / len(recalls)


def soft_reference(stat, form, prob, y, g):
    rates = [soft_rate(stat, prob[g == code], y[g == code]) for code in sorted(set(g.tolist()))]
    rates = [rate for rate in rates if rate is not None]
    if len(rates) < 2:
        return prob.sum() * 0
    largest, smallest = max(rates), min(rates)
    if form == "gap":
        return largest - smallest
    return 1 - smallest / largest if largest > 0 else prob.sum() * 0  # equal rates of 0: no disparity


@pytest.mark.parametrize("form", ["gap", "ratio"])
@pytest.mark.parametrize("stat", STATS)
@SETTINGS
@given(data=hard_groups(), dtype=st.sampled_from([torch.float32, torch.float64]), known=st.booleans())
def test_soft_rates_match_a_per_group_loop(stat, form, data, dtype, known):
    y, _, g, _ = data
    codes = torch.as_tensor(g) + 50  # in [0, 101) for groups=K
    logit = torch.tensor(np.random.default_rng(len(y)).normal(0.0, 2.0, len(y)), dtype=dtype, requires_grad=True)
    target = torch.as_tensor(y)
    groups = ", groups=101" if known else ""
    got = lossdsl.compile(f"fairness({stat}_{form}, group=g{groups})")(pred=logit, target=target, g=codes)
    expected = soft_reference(stat, form, torch.sigmoid(logit), target.to(dtype), codes)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected.to(dtype))
    torch.testing.assert_close(torch.autograd.grad(got, logit)[0], torch.autograd.grad(expected, logit)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ppv_of_a_group_whose_predicted_mass_underflows_is_left_out_without_nan(dtype):
    """Group 1's predicted-positive mass, sum(w p) = 1e-30 * 1e-14, is below float32's smallest
    normal number: its precision counts as undefined (as the hard form's with no predicted positive).
    Included, the gradient of num / mass is about 1 / mass before p (1 - p) scales it back: inf,
    then NaN, in float32 (a fixed floor, the same for float64)."""
    logit = torch.tensor([2.0, -1.0, 0.5, -32.0, -32.0, -33.0, 0.3, -0.2], dtype=dtype, requires_grad=True)
    y = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    w = torch.tensor([1, 1, 1, 1e-30, 1e-30, 1e-30, 1, 1], dtype=dtype)
    got = lossdsl.compile("fairness(ppv_gap, group=g, sample_weight=w)")(pred=logit, target=y, g=g, w=w)
    gradient = torch.autograd.grad(got, logit)[0]
    assert torch.isfinite(got) and torch.isfinite(gradient).all()
    p = torch.sigmoid(logit)
    rate0 = (p[:3] * y[:3]).sum() / p[:3].sum()
    rate2 = p[6] / p[6:].sum()
    expected = (rate0 - rate2).abs()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(gradient, torch.autograd.grad(expected, logit)[0])
    torch.testing.assert_close(gradient[3:6], torch.zeros(3, dtype=dtype))


def test_balanced_accuracy_agg_mean_averages_over_pairs_of_groups():
    """agg=mean for balanced_accuracy is the groups' mean pairwise gap (not eo's mean of two parts)."""
    logit = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(30) % 2
    g = torch.arange(30) % 3
    got = lossdsl.compile("fairness(balanced_accuracy_gap, group=g, agg=mean)")(pred=logit, target=y, g=g)
    p = torch.sigmoid(logit)
    rates = [soft_rate("balanced_accuracy", p[g == k], y[g == k]) for k in range(3)]
    pairs = [(rates[i] - rates[j]).abs() for i in range(3) for j in range(i + 1, 3)]
    torch.testing.assert_close(got, sum(pairs) / 3)


def test_accuracy_gap_equals_error_rate_gap():
    logit = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y, g = torch.arange(40) % 2, torch.arange(40) % 4
    accuracy = lossdsl.compile("fairness(accuracy_gap, group=g)")(pred=logit, target=y, g=g)
    error = lossdsl.compile("fairness(error_rate_gap, group=g)")(pred=logit, target=y, g=g)
    torch.testing.assert_close(accuracy, error)


# --------------------------------------------------------------------------------------------
# Windows and subject to
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stat", STATS)
def test_window_mixes_the_group_sums_of_batches(stat):
    """window=ema(0.5): the rates of 0.5 * history + 0.5 * batch sums; after two training calls the
    sums are 0.25 * first + 0.5 * second (the history starts at 0)."""
    generator = torch.Generator().manual_seed(6)
    loss_fn = lossdsl.compile(f"fairness({stat}_gap, group=g, groups=3, window=ema(0.5))")
    batches = [(torch.randn(24, dtype=torch.float64, generator=generator), torch.randint(0, 2, (24,), generator=generator),
                torch.randint(0, 3, (24,), generator=generator)) for _ in range(2)]
    for logit, y, g in batches:
        got = loss_fn(pred=logit, target=y, g=g)

    def sums(logit, y, g):  # per group: [ppv num, ppv den] or [acc num, n] or [tp, pos, tn, neg]
        p, y = torch.sigmoid(logit), y.double()
        columns = {"ppv": [p * y, p], "accuracy": [p * y + (1 - p) * (1 - y), torch.ones_like(p)],
                   "balanced_accuracy": [p * y, y, (1 - p) * (1 - y), 1 - y]}[stat]
        return torch.stack([torch.stack([c[g == k].sum() for c in columns]) for k in range(3)])

    mixed = 0.25 * sums(*batches[0]) + 0.5 * sums(*batches[1])
    rates = mixed[:, 0] / mixed[:, 1] if stat != "balanced_accuracy" else (
        mixed[:, 0] / mixed[:, 1] + mixed[:, 2] / mixed[:, 3]) / 2
    torch.testing.assert_close(got, rates.max() - rates.min())


@pytest.mark.parametrize("stat", [f"{s}_gap" for s in STATS] + ["ppv_ratio"])
def test_subject_to_compiles_and_trains_a_step_without_nan(stat):
    generator = torch.Generator().manual_seed(8)
    features = torch.randn(64, 5, generator=generator)
    target = torch.randint(0, 2, (64,), generator=generator)
    group = torch.randint(0, 3, (64,), generator=generator)
    model = torch.nn.Linear(5, 2)
    loss_fn = lossdsl.compile(f"loss = ce()\nsubject to fairness({stat}, group=g) <= 0.1 as c")
    optimizer = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lossdsl.LossSpecWarning)  # no fit(): each batch's audited rates
        loss = loss_fn(model(features), target, g=group)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the constraint reads the audited (hard) statistic: fairlearn's number for the batch
    stat_name, form = stat.rsplit("_", 1)
    logits_before = torch.nn.functional.linear(features, before[0], before[1])
    yhat_before = (logits_before[:, 1] > logits_before[:, 0]).long().numpy()
    expected = np.nan_to_num(fairlearn_value(stat_name, form, "groups", target.numpy(), yhat_before, group.numpy()))
    assert float(loss_fn.last_terms["c"]) == pytest.approx(expected, abs=1e-6)
