"""Every fairness statistic and form against fairlearn's MetricFrame, on hard predictions."""

import math

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    false_negative_rate,
    false_positive_rate,
    mean_prediction,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl


def error_rate(y_true, y_pred, sample_weight=None):
    return float(np.average(np.asarray(y_true) != np.asarray(y_pred), weights=sample_weight))


METRICS = {
    "dp": selection_rate,
    "tpr": true_positive_rate,
    "fpr": false_positive_rate,
    "fnr": false_negative_rate,
    "tnr": true_negative_rate,
    "error_rate": error_rate,
}


def fairlearn_value(stat, form, ref, y, yhat, groups, weights=None):
    method = "to_overall" if ref == "overall" else "between_groups"
    kwargs = {"sample_params": {"sample_weight": weights}} if weights is not None else {}

    def measure(metric):
        frame = MetricFrame(metrics=metric, y_true=y, y_pred=yhat, sensitive_features=groups, **kwargs)
        return frame.difference(method=method) if form == "gap" else 1 - frame.ratio(method=method)

    if stat == "eo":  # the worse of the two; a 0 / 0 part (NaN in fairlearn) counts as no disparity
        return max(np.nan_to_num(measure(true_positive_rate)), np.nan_to_num(measure(false_positive_rate)))
    return measure(METRICS[stat])


@st.composite
def labelled_groups(draw):
    """Hard predictions where every group has positives and negatives (all rates defined)."""
    num_groups = draw(st.integers(2, 5))
    codes = draw(st.lists(st.integers(-50, 50), min_size=num_groups, max_size=num_groups, unique=True))
    sizes = draw(st.lists(st.integers(4, 12), min_size=num_groups, max_size=num_groups))
    y, yhat, g = [], [], []
    for code, size in zip(codes, sizes):
        labels = [1, 0] + draw(st.lists(st.integers(0, 1), min_size=size - 2, max_size=size - 2))
        y += labels
        yhat += draw(st.lists(st.integers(0, 1), min_size=size, max_size=size))
        g += [code] * size
    return np.array(y), np.array(yhat), np.array(g)


def ours(stat, form, ref, y, yhat, g, weights=None, groups_param=""):
    spec = f"fairness({stat}_{form}, group=g, ref={ref}{groups_param}" + (", sample_weight=w)" if weights is not None else ")")
    logits = torch.tensor(np.where(yhat == 1, 40.0, -40.0), dtype=torch.float64)  # sigmoid is exactly 0 or 1
    inputs = {"pred": logits, "target": torch.tensor(y), "g": torch.tensor(g)}
    if weights is not None:
        inputs["w"] = torch.tensor(weights, dtype=torch.float64)
    return float(lossdsl.compile(spec)(**inputs))


STATS = ["dp", "tpr", "fpr", "fnr", "tnr", "error_rate", "eo"]


@pytest.mark.parametrize("ref", ["groups", "overall"])
@pytest.mark.parametrize("form", ["gap", "ratio"])
@pytest.mark.parametrize("stat", STATS)
@settings(max_examples=15, deadline=None)
@given(data=labelled_groups())
def test_statistics_equal_fairlearn(stat, form, ref, data):
    y, yhat, g = data
    expected = fairlearn_value(stat, form, ref, y, yhat, g)
    if np.isnan(expected):  # fairlearn's 0 / 0 when every rate is 0; ours counts equal rates as no disparity
        expected = 0.0
    assert ours(stat, form, ref, y, yhat, g) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("form", ["gap", "ratio"])
@pytest.mark.parametrize("stat", ["tpr", "error_rate"])
def test_sample_weights_equal_fairlearn(stat, form):
    rng = np.random.default_rng(0)
    g = np.repeat([0, 1, 2], 10)
    y = np.tile([1, 0, 1, 0, 1, 1, 0, 0, 1, 0], 3)
    yhat = rng.integers(0, 2, 30)
    w = rng.random(30) + 0.1
    for ref in ("groups", "overall"):
        expected = fairlearn_value(stat, form, ref, y, yhat, g, w)
        assert ours(stat, form, ref, y, yhat, g, w) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("form", ["gap", "ratio"])
@pytest.mark.parametrize("ref", ["groups", "overall"])
def test_mean_pred_equals_fairlearn_on_regression_outputs(form, ref):
    rng = np.random.default_rng(1)
    g = rng.integers(0, 4, 40)
    pred = rng.random(40) * 3  # non-negative, so the ratio form is meaningful
    frame = MetricFrame(metrics=mean_prediction, y_true=np.zeros(40), y_pred=pred, sensitive_features=g)
    method = "to_overall" if ref == "overall" else "between_groups"
    expected = frame.difference(method=method) if form == "gap" else 1 - frame.ratio(method=method)
    got = lossdsl.compile(f"fairness(mean_pred_{form}, group=g, ref={ref})")(pred=torch.tensor(pred), g=torch.tensor(g))
    assert float(got) == pytest.approx(expected, abs=1e-9)
    assert lossdsl.compile("fairness(mean_pred_gap, group=g)").inputs == ("pred", "g")  # no target read


@pytest.mark.parametrize("agg", ["max", "mean", "smoothmax(0.1)"])
@pytest.mark.parametrize("stat", [f"{s}_{f}" for s in STATS for f in ("gap", "ratio")])
@pytest.mark.parametrize("ref", ["groups", "overall"])
def test_never_nan_with_one_group_or_missing_labels(stat, ref, agg):
    if stat.startswith("eo"):
        agg = {"max": "worst_case", "smoothmax(0.1)": "worst_case"}.get(agg, agg)
    loss_fn = lossdsl.compile(f"fairness({stat}, group=g, ref={ref}, agg={agg})")
    for target in (torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)):
        for g in (torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([4])):
            pred = torch.randn(len(g), requires_grad=True)
            value = loss_fn(pred=pred, target=target[: len(g)], g=g)
            (grad,) = torch.autograd.grad(value, pred)
            assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_soft_ratio_gradient_matches_a_hand_written_reference():
    pred = torch.randn(12, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([0, 1, 2] * 4)
    got = lossdsl.compile("fairness(dp_ratio, group=g)")(pred=pred, g=g)
    rates = torch.stack([torch.sigmoid(pred[g == k]).mean() for k in range(3)])
    expected = 1 - rates.min() / rates.max()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(expected, pred)[0])


@pytest.mark.parametrize("stat", ["dp", "tpr", "eo"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(12, 60))
def test_intersections_equal_fairlearn_with_two_sensitive_features(stat, seed, n):
    import pandas as pd

    rng = np.random.default_rng(seed)
    sex, race = rng.integers(0, 2, n), rng.integers(-3, 3, n) * 7  # sparse, negative codes
    y = rng.integers(0, 2, n)
    yhat = rng.integers(0, 2, n)
    features = pd.DataFrame({"sex": sex, "race": race})
    metric = true_positive_rate if stat == "tpr" else selection_rate
    # Intersections where a rate is undefined are left out by lossdsl and scored 0 by fairlearn:
    # compare on data where each present intersection has both labels.
    keys = list(zip(sex, race))
    if stat != "dp" and any(len({yy for k, yy in zip(keys, y) if k == key}) < 2 for key in set(keys)):
        return
    if stat == "eo":
        expected = fairlearn_value("eo", "gap", "groups", y, yhat, features)
    else:
        frame = MetricFrame(metrics=metric, y_true=y, y_pred=yhat, sensitive_features=features)
        expected = frame.difference(method="between_groups")
    logits = torch.tensor(np.where(yhat == 1, 40.0, -40.0), dtype=torch.float64)
    got = lossdsl.compile(f"fairness({stat}_gap, group=(sex, race))")(
        pred=logits, target=torch.tensor(y), sex=torch.tensor(sex), race=torch.tensor(race)
    )
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_intersection_slots_are_the_pairs_of_codes():
    sex = torch.tensor([0, 0, 1, 1, 0, 1])
    race = torch.tensor([5, 7, 5, 7, 5, 5])
    pred = torch.tensor([10.0, -10.0, -10.0, 10.0, 10.0, -10.0])  # selection: (0,5)=1, (0,7)=0, (1,5)=0, (1,7)=1
    got = lossdsl.compile("fairness(dp_gap, group=(sex, race))")(pred=pred, sex=sex, race=race)
    torch.testing.assert_close(got, torch.sigmoid(torch.tensor(10.0)) - torch.sigmoid(torch.tensor(-10.0)))
    from lossdsl import T

    assert str(T.fairness("dp_gap", group=("sex", "race"))) == "fairness(dp_gap, group=(sex, race))"


def test_ema_window_combines_the_batch_with_the_detached_history():
    spec = "fairness(dp_gap, group=g, groups=2, window=ema(0.75))"
    loss_fn = lossdsl.compile(spec)
    g = torch.tensor([0, 0, 1, 1, 1])
    history = torch.zeros(2, 2, dtype=torch.float64)
    for seed in range(3):
        pred = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()
        batch = torch.zeros(2, 2, dtype=torch.float64).index_add_(
            0, g, torch.stack([torch.sigmoid(pred), torch.ones(5, dtype=torch.float64)], 1))
        combined = 0.75 * history + 0.25 * batch
        rates = combined[:, 0] / combined[:, 1]
        expected = rates.max() - rates.min()
        got = loss_fn(pred=pred, g=g)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(expected, pred)[0])
        history = combined.detach()
    torch.testing.assert_close(loss_fn.terms[0].running_sums, history)
    loss_fn.eval()
    loss_fn(pred=torch.randn(5, dtype=torch.float64), g=g)
    torch.testing.assert_close(loss_fn.terms[0].running_sums, history)  # eval mode changes no state
    restored = lossdsl.compile(spec)
    restored.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(restored.terms[0].running_sums, history)


def test_ema_window_needs_a_group_count():
    with pytest.raises(lossdsl.LossSpecError, match="give the group count"):
        lossdsl.compile("fairness(dp_gap, group=g, window=ema(0.9))")
    declared = "inputs:\n  pred: logits[N]\n  g: group[N] of 3\nloss = fairness(dp_gap, group=g, window=ema(0.9))"
    assert lossdsl.compile(declared).terms[0].running_sums.shape == (3, 2)


def group_rates(prob, g):
    """Selection rate per group present, by a plain loop (the reference)."""
    return torch.stack([prob[g == k].mean() for k in torch.unique(g)])


def pairwise(rates, form):
    """Each pair of groups' disparity: |a - b|, or 1 - min / max (equal zeros: 0)."""
    values = []
    for i in range(len(rates)):
        for j in range(i + 1, len(rates)):
            a, b = rates[i], rates[j]
            values.append((a - b).abs() if form == "gap" else ratio_disparity(a, b))
    return torch.stack(values)


def ratio_disparity(a, b):
    """1 - min / max, and 0 where both are 0 (equal)."""
    high = torch.maximum(a, b)
    return torch.where(high > 0, 1 - torch.minimum(a, b) / torch.where(high > 0, high, 1), 0)


def log_mean_exp(values, t):
    return t * (torch.logsumexp(values / t, 0) - math.log(len(values)))


@pytest.mark.parametrize("form", ["gap", "ratio"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), num_groups=st.integers(2, 7), zeros=st.booleans())
def test_agg_mean_and_smoothmax_equal_their_formulas(form, seed, num_groups, zeros):
    generator = torch.Generator().manual_seed(seed)
    g = torch.randint(0, num_groups, (40,), generator=generator) * 3  # sparse codes; some may be absent
    pred = torch.randn(40, dtype=torch.float64, generator=generator) * 3
    if zeros:  # two groups with a selection rate of exactly 0
        pred = torch.where(g <= 3, torch.full_like(pred, -1e4), pred)
    pred.requires_grad_()
    prob = torch.sigmoid(pred)
    rates = group_rates(prob, g)
    if len(rates) < 2:
        return
    overall = prob.mean()
    if form == "gap":
        distances = (rates - overall).abs()
    else:
        distances = ratio_disparity(rates, overall)
    expected = {
        ("mean", "groups"): pairwise(rates, form).mean(),
        ("mean", "overall"): distances.mean(),
        ("smoothmax(0.1)", "overall"): log_mean_exp(distances, 0.1),
    }
    smooth_max, smooth_min = log_mean_exp(rates, 0.1), -log_mean_exp(-rates, 0.1)
    expected["smoothmax(0.1)", "groups"] = (
        smooth_max - smooth_min if form == "gap" else ratio_disparity(smooth_min, smooth_max)
    )
    for (agg, ref), value in expected.items():
        got = lossdsl.compile(f"fairness(dp_{form}, group=g, agg={agg}, ref={ref})")(pred=pred, g=g)
        torch.testing.assert_close(got, value)
        if value.requires_grad:
            expected_grad = torch.autograd.grad(value, pred, retain_graph=True)[0]
        else:  # every rate is 0: a constant reference
            expected_grad = torch.zeros_like(pred)
        torch.testing.assert_close(torch.autograd.grad(got, pred)[0], expected_grad)


def test_smoothmax_lies_between_the_mean_and_the_max_and_tends_to_the_max():
    pred = torch.randn(60, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = torch.arange(60) % 5
    for ref in ("groups", "overall"):
        value = {
            agg: float(lossdsl.compile(f"fairness(dp_gap, group=g, ref={ref}, agg={agg})")(pred=pred, g=g))
            for agg in ("max", "mean", "smoothmax(0.05)", "smoothmax(0.0001)")
        }
        assert value["smoothmax(0.05)"] <= value["max"]
        assert value["smoothmax(0.0001)"] == pytest.approx(value["max"], abs=1e-3)
        if ref == "overall":
            assert value["mean"] <= value["smoothmax(0.05)"]


@pytest.mark.parametrize("form", ["gap", "ratio"])
@pytest.mark.parametrize("ref", ["groups", "overall"])
def test_eo_agg_mean_equals_fairlearn(form, ref):
    from fairlearn.metrics import equalized_odds_difference, equalized_odds_ratio

    rng = np.random.default_rng(7)
    g = rng.integers(0, 3, 90)
    y = rng.integers(0, 2, 90)
    yhat = rng.integers(0, 2, 90)
    method = "to_overall" if ref == "overall" else "between_groups"
    for agg in ("worst_case", "mean"):
        if form == "gap":
            expected = equalized_odds_difference(y, yhat, sensitive_features=g, method=method, agg=agg)
        else:
            expected = 1 - equalized_odds_ratio(y, yhat, sensitive_features=g, method=method, agg=agg)
        logits = torch.tensor(np.where(yhat == 1, 40.0, -40.0), dtype=torch.float64)
        loss_fn = lossdsl.compile(f"fairness(eo_{form}, group=g, ref={ref}, agg={agg})")
        got = loss_fn(pred=logits, target=torch.tensor(y), g=torch.tensor(g))
        assert float(got) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fairness(eo_gap, group=g, agg=max)", "eo takes agg=worst_case or agg=mean"),
        ("fairness(dp_gap, group=g, agg=worst_case)", "agg=worst_case is eo's"),
        ("fairness(dp_gap, group=g, agg=smoothmax(0))", "greater than 0"),
        ("fairness(dp_gap, group=g, agg=avg)", "unknown value 'avg'"),
    ],
)
def test_agg_mistakes_are_diagnosed(spec, message):
    with pytest.raises(lossdsl.LossSpecError, match=message):
        lossdsl.compile(spec)


def _named_functions():
    import fairlearn.metrics as fm

    pairs = {
        "dp": ["demographic_parity", "selection_rate"],
        "tpr": ["true_positive_rate", "equal_opportunity"],
        "fpr": ["false_positive_rate"],
        "fnr": ["false_negative_rate"],
        "tnr": ["true_negative_rate"],
        "error_rate": ["zero_one_loss"],
        "eo": ["equalized_odds"],
    }
    return [(stat, getattr(fm, f"{name}_difference"), getattr(fm, f"{name}_ratio"))
            for stat, names in pairs.items() for name in names]


@pytest.mark.parametrize("ref", ["groups", "overall"])
@pytest.mark.parametrize(("stat", "difference", "ratio"), _named_functions(), ids=lambda f: getattr(f, "__name__", f))
@settings(max_examples=10, deadline=None)
@given(data=labelled_groups())
def test_statistics_equal_fairlearns_named_functions(stat, difference, ratio, ref, data):
    y, yhat, g = data
    method = "to_overall" if ref == "overall" else "between_groups"
    kwargs = {"sensitive_features": g, "method": method}
    expected_gap, expected_ratio = difference(y, yhat, **kwargs), 1 - ratio(y, yhat, **kwargs)
    assert ours(stat, "gap", ref, y, yhat, g) == pytest.approx(expected_gap, abs=1e-6)
    if not np.isnan(expected_ratio):  # fairlearn's 0 / 0; ours counts equal zero rates as no disparity
        assert ours(stat, "ratio", ref, y, yhat, g) == pytest.approx(expected_ratio, abs=1e-6)


@pytest.mark.parametrize("stat", STATS)
@settings(max_examples=10, deadline=None)
@given(data=labelled_groups(), seed=st.integers(0, 1000))
def test_hard_rates_equal_fairlearn_on_any_logits(stat, data, seed):
    """hard=true: the value is fairlearn's on pred > 0, whatever the logits' scale."""
    y, _, g = data
    logits = torch.randn(len(y), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    yhat = (logits > 0).long().numpy()
    for form in ("gap", "ratio"):
        for ref in ("groups", "overall"):
            expected = fairlearn_value(stat, form, ref, y, yhat, g)
            spec = f"fairness({stat}_{form}, group=g, ref={ref}, hard=true)"
            got = lossdsl.compile(spec)(pred=logits, target=torch.tensor(y), g=torch.tensor(g))
            assert float(got) == pytest.approx(0.0 if np.isnan(expected) else expected, abs=1e-9)


def test_hard_rates_take_the_soft_gradient_straight_through():
    generator = torch.Generator().manual_seed(5)
    pred = torch.randn(30, dtype=torch.float64, generator=generator, requires_grad=True)
    g = torch.arange(30) % 3
    got = lossdsl.compile("fairness(dp_gap, group=g, hard=true)")(pred=pred, g=g)
    soft = torch.sigmoid(pred)
    straight_through = (pred > 0).double() + soft - soft.detach()
    rates = torch.stack([straight_through[g == k].mean() for k in range(3)])
    expected = rates.max() - rates.min()
    torch.testing.assert_close(got, expected)
    (expected_grad,) = torch.autograd.grad(expected, pred)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], expected_grad)
    assert expected_grad.abs().sum() > 0  # the hard value alone would have none


def test_a_constraint_on_hard_rates_moves_its_multiplier_by_the_hard_excess():
    pred = torch.tensor([2.0, 0.1, -0.1, -3.0, 0.2, -0.2], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    loss_fn = lossdsl.compile("loss = 0 * ce()\nsubject to fairness(dp_gap, group=g, hard=true) <= 0.1 using lagrangian(lr=0.5)")
    loss_fn(pred=pred, target=torch.zeros(6, dtype=torch.long), g=g)
    hard_gap = 2 / 3 - 1 / 3  # selection rates of the hard predictions: 2/3 and 1/3
    torch.testing.assert_close(loss_fn.multipliers[0], torch.tensor(0.5 * (hard_gap - 0.1)))


@pytest.mark.parametrize("spec", ["fairness(mean_pred_gap, group=g, hard=true)", "fairness(group_loss(mse), group=g, hard=true)"])
def test_hard_rates_apply_to_rates_only(spec):
    with pytest.raises(lossdsl.LossSpecError, match="hard=true thresholds predicted probabilities"):
        lossdsl.compile(spec)


def test_half_precision_rates_and_smoothmax_stay_finite():
    n = 140_000
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(n, generator=generator)
    g = torch.randint(0, 2, (n,), generator=generator)
    target = torch.randint(0, 2, (n,), generator=generator)
    for spec in ("fairness(dp_gap, group=g)", "fairness(tpr_gap, group=g, agg=smoothmax(0.00001))"):
        expected = lossdsl.compile(spec)(pred=pred, target=target, g=g)
        half = pred.half().requires_grad_()
        got = lossdsl.compile(spec)(pred=half, target=target, g=g)
        assert got.dtype == torch.float16
        assert float(got.detach()) == pytest.approx(float(expected), abs=2e-3)
        assert torch.isfinite(torch.autograd.grad(got, half)[0]).all()


def test_an_option_with_a_name_for_its_argument_is_diagnosed():
    with pytest.raises(lossdsl.LossSpecError, match=r"the arguments of smoothmax\(\) in 'agg' of fairness\(\) are numbers"):
        lossdsl.compile("param t = 0.1\nloss = fairness(dp_gap, group=g, agg=smoothmax(t))")
