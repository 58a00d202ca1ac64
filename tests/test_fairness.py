"""The ``fairness(STAT, group=G)`` term against fairlearn (hard predictions) and a
hand-written per-group reference (soft predictions), values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate_difference,
    true_positive_rate_difference,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossdsl

STATS = ["dp_gap", "tpr_gap", "fpr_gap", "eo_gap"]
FAIRLEARN = {
    "dp_gap": demographic_parity_difference,
    "tpr_gap": true_positive_rate_difference,
    "fpr_gap": false_positive_rate_difference,
    "eo_gap": equalized_odds_difference,
}
DTYPES = [torch.float32, torch.float64]
HARD = 40.0  # sigmoid(+-40) is 1 and 4e-18: 0/1 to far below the 1e-6 tolerance
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def compile_fairness(stat: str, groups: int | None = None):
    extra = f", groups={groups}" if groups is not None else ""
    return lossdsl.compile(f"fairness({stat}, group=sex{extra})")


def run(stat: str, pred, group, target=None, groups: int | None = None) -> torch.Tensor:
    loss_fn = compile_fairness(stat, groups)
    inputs = {"pred": pred, "sex": group}
    if stat != "dp_gap":
        inputs["target"] = target
    return loss_fn(**inputs)


def shaped(logit: torch.Tensor, form: str) -> torch.Tensor:
    """Binary logits in the form ``[N]``, ``[N, 1]`` or ``[N, 2]`` (softmax column 1 = sigmoid(logit))."""
    if form == "N":
        return logit
    if form == "N1":
        return logit[:, None]
    return torch.stack([torch.zeros_like(logit), logit], dim=1)


def grad(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(value, x)[0]


# --------------------------------------------------------------------------------------------
# A straightforward reference: one Python loop over the groups.
# --------------------------------------------------------------------------------------------


def reference_rates(rate: str, prob: torch.Tensor, group: torch.Tensor, target: torch.Tensor | None) -> list:
    rates = []
    for code in sorted(set(group.tolist())):
        member = group == code
        if rate == "selection":
            chosen = member
        elif rate == "tpr":
            chosen = member & (target == 1)
        else:
            chosen = member & (target == 0)
        if chosen.any():  # an undefined rate is left out
            rates.append(prob[chosen].mean())
    return rates


def reference_gap(rates: list, prob: torch.Tensor) -> torch.Tensor:
    if len(rates) < 2:
        return prob.sum() * 0  # a constant 0 that still has a (zero) gradient
    return max(rates) - min(rates)


def reference(stat: str, prob: torch.Tensor, group: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    if stat == "dp_gap":
        return reference_gap(reference_rates("selection", prob, group, None), prob)
    tpr = reference_gap(reference_rates("tpr", prob, group, target), prob)
    fpr = reference_gap(reference_rates("fpr", prob, group, target), prob)
    return {"tpr_gap": tpr, "fpr_gap": fpr, "eo_gap": tpr if tpr >= fpr else fpr}[stat]


# --------------------------------------------------------------------------------------------
# Data: group codes that are sparse, negative, large; imbalanced group sizes.
# --------------------------------------------------------------------------------------------

CODES = st.one_of(
    st.integers(0, 10),
    st.integers(-1000, 1000),
    st.integers(-(2**62), 2**62),
)


@st.composite
def cases(draw, both_labels: bool = True, min_size: int = 1):
    """(group codes, 0/1 labels, seed): every group has both labels when ``both_labels``."""
    k = draw(st.integers(2, 8))
    codes = draw(st.lists(CODES, min_size=k, max_size=k, unique=True))
    sizes = draw(st.lists(st.integers(max(min_size, 2 if both_labels else 1), 30), min_size=k, max_size=k))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    group, labels = [], []
    for code, size in zip(codes, sizes):
        y = rng.integers(0, 2, size)
        if both_labels:
            y[:2] = [0, 1]
        group += [code] * size
        labels += list(y)
    order = rng.permutation(len(group))
    group = np.asarray(group, dtype=np.int64)[order]
    labels = np.asarray(labels, dtype=np.int64)[order]
    return group, labels, seed + 1  # a fresh generator for the test's own draws


# --------------------------------------------------------------------------------------------
# Hard predictions: parity with fairlearn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stat", STATS)
@settings(SETTINGS, max_examples=30)  # fairlearn takes ~50 ms a call: 120 cases in all
@given(data=cases(), form=st.sampled_from(["N", "N1", "N2"]), dtype=st.sampled_from(DTYPES))
def test_hard_predictions_match_fairlearn(stat, data, form, dtype):
    group, labels, seed = data
    hard = np.random.default_rng(seed).integers(0, 2, len(group))
    pred = shaped(torch.tensor(np.where(hard == 1, HARD, -HARD), dtype=dtype), form)
    g, y = torch.from_numpy(group), torch.from_numpy(labels)
    expected = FAIRLEARN[stat](labels, hard, sensitive_features=group)
    ours = run(stat, pred, g, y)
    assert ours.dtype == dtype
    assert abs(ours.item() - expected) <= 1e-6, (ours.item(), expected)


@settings(SETTINGS, max_examples=40)
@given(data=cases(both_labels=False), dtype=st.sampled_from(DTYPES))
def test_hard_demographic_parity_matches_fairlearn_for_any_labels(data, dtype):
    """Selection rate is defined for every present group, whatever the labels, even size 1."""
    group, labels, seed = data
    hard = np.random.default_rng(seed).integers(0, 2, len(group))
    pred = torch.tensor(np.where(hard == 1, HARD, -HARD), dtype=dtype)
    expected = demographic_parity_difference(labels, hard, sensitive_features=group)
    ours = run("dp_gap", pred, torch.from_numpy(group))
    assert abs(ours.item() - expected) <= 1e-6


@pytest.mark.parametrize("stat", ["tpr_gap", "fpr_gap", "eo_gap"])
def test_undefined_rate_is_skipped_where_fairlearn_scores_zero(stat):
    """Documented divergence: fairlearn counts a group with no positives (tpr) or no
    negatives (fpr) as rate 0; we leave that group out of that rate."""
    # group 0 has both labels; group 1 has no positives; group 2 has no negatives
    group = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    hard = np.array([1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0])
    pred = torch.tensor(np.where(hard == 1, HARD, -HARD), dtype=torch.float64)
    g, y = torch.from_numpy(group), torch.from_numpy(labels)
    ours = run(stat, pred, g, y).item()

    # Ours: fairlearn's metric over only the groups where each rate is defined.
    has_pos = np.isin(group, [c for c in np.unique(group) if labels[group == c].any()])
    has_neg = np.isin(group, [c for c in np.unique(group) if (labels[group == c] == 0).any()])
    tpr = true_positive_rate_difference(labels[has_pos], hard[has_pos], sensitive_features=group[has_pos])
    fpr = false_positive_rate_difference(labels[has_neg], hard[has_neg], sensitive_features=group[has_neg])
    skipped = {"tpr_gap": tpr, "fpr_gap": fpr, "eo_gap": max(tpr, fpr)}[stat]
    assert abs(ours - skipped) <= 1e-6
    # fairlearn, scoring the undefined rates 0, reports a larger gap here.
    theirs = FAIRLEARN[stat](labels, hard, sensitive_features=group)
    assert theirs > skipped + 0.1
    # and our value equals the hand-written reference that skips undefined rates.
    assert abs(ours - reference(stat, torch.sigmoid(pred), g, y).item()) <= 1e-6


# --------------------------------------------------------------------------------------------
# Soft predictions: parity with the hand-written reference, values and gradients
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(data=cases(both_labels=False), form=st.sampled_from(["N", "N1", "N2"]), dtype=st.sampled_from(DTYPES))
def test_soft_rates_match_reference(data, form, dtype):
    group, labels, seed = data
    g, y = torch.from_numpy(group), torch.from_numpy(labels)
    logit = torch.tensor(np.random.default_rng(seed).normal(0.0, 2.0, len(group)), dtype=dtype, requires_grad=True)
    for stat in STATS:
        ours = run(stat, shaped(logit, form), g, y)
        expected = reference(stat, torch.sigmoid(logit), g, y)
        torch.testing.assert_close(ours, expected.to(dtype))
        torch.testing.assert_close(grad(ours, logit), grad(expected, logit))


@SETTINGS
@given(
    num_groups=st.integers(2, 8),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
)
def test_known_group_count_equals_ranked(num_groups, n, seed, dtype):
    rng = np.random.default_rng(seed)
    g = torch.from_numpy(rng.integers(0, num_groups, n))  # some codes in [0, K) may be absent
    y = torch.from_numpy(rng.integers(0, 2, n))
    logit = torch.tensor(rng.normal(0.0, 2.0, n), dtype=dtype, requires_grad=True)
    for stat in STATS:
        ranked = run(stat, logit, g, y)
        known = run(stat, logit, g, y, groups=num_groups)
        torch.testing.assert_close(known, ranked)
        torch.testing.assert_close(grad(known, logit), grad(ranked, logit))
        torch.testing.assert_close(known, reference(stat, torch.sigmoid(logit), g, y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stat", STATS)
def test_pred_shapes_agree(stat, dtype):
    n = 40
    g = torch.randint(0, 4, (n,))
    y = torch.randint(0, 2, (n,))
    two = torch.randn(n, 2, dtype=dtype, requires_grad=True)
    # softmax column 1 is the sigmoid of the difference
    difference = two[:, 1] - two[:, 0]
    torch.testing.assert_close(torch.softmax(two, dim=1)[:, 1], torch.sigmoid(difference))
    value_two = run(stat, two, g, y)
    logit = difference.detach().requires_grad_()
    value_n = run(stat, logit, g, y)
    value_n1 = run(stat, logit[:, None], g, y)
    torch.testing.assert_close(value_two, value_n)
    torch.testing.assert_close(value_n1, value_n)
    expected = reference(stat, torch.softmax(two, dim=1)[:, 1], g, y)
    torch.testing.assert_close(value_two, expected)
    # gradients: d/d two = (-d/d diff, d/d diff), and the reference's
    g_n = grad(value_n, logit)
    g_two = grad(value_two, two)
    torch.testing.assert_close(g_two, torch.stack([-g_n, g_n], dim=1))
    torch.testing.assert_close(g_two, grad(expected, two))
    # group and target may be [N, 1] too
    torch.testing.assert_close(run(stat, logit, g[:, None], y[:, None]), value_n)


# --------------------------------------------------------------------------------------------
# Never NaN
# --------------------------------------------------------------------------------------------


def assert_value_and_grad(stat, logit, g, y, groups=None):
    """Value equals the reference; gradient is finite and equals the reference's."""
    value = run(stat, logit, g, y, groups=groups)
    expected = reference(stat, torch.sigmoid(logit), g, y)
    gradient = grad(value, logit)
    assert torch.isfinite(value)
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(gradient, grad(expected, logit))
    return value, gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("stat", STATS)
def test_single_group_gives_zero(stat, groups, dtype):
    logit = torch.randn(9, dtype=dtype, requires_grad=True)
    g = torch.full((9,), 2)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    value, gradient = assert_value_and_grad(stat, logit, g, y, groups)
    torch.testing.assert_close(value, torch.zeros((), dtype=dtype))
    torch.testing.assert_close(gradient, torch.zeros_like(logit))


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("stat", STATS)
def test_batch_of_one_gives_zero(stat, groups):
    logit = torch.randn(1, dtype=torch.float64, requires_grad=True)
    value, gradient = assert_value_and_grad(stat, logit, torch.tensor([1]), torch.tensor([1]), groups)
    torch.testing.assert_close(value, torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(gradient, torch.zeros_like(logit))


@pytest.mark.parametrize("groups", [None, 5])
@pytest.mark.parametrize("stat", ["tpr_gap", "fpr_gap", "eo_gap", "dp_gap"])
def test_group_without_positives_or_negatives(stat, groups):
    # group 0: mixed; group 1: no positives; group 3: no negatives; group 4: mixed
    g = torch.tensor([0, 0, 0, 1, 1, 1, 3, 3, 4, 4, 4, 4])
    y = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0])
    logit = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert_value_and_grad(stat, logit, g, y, groups)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("stat", STATS)
def test_all_same_labels(stat, label, dtype):
    logit = torch.randn(10, dtype=dtype, requires_grad=True)
    g = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    y = torch.full((10,), label)
    value, gradient = assert_value_and_grad(stat, logit, g, y)
    undefined = {0: "tpr_gap", 1: "fpr_gap"}[label]  # the rate no group has
    if stat == undefined:
        torch.testing.assert_close(value, torch.zeros((), dtype=dtype))
        torch.testing.assert_close(gradient, torch.zeros_like(logit))


@pytest.mark.parametrize("stat", STATS)
def test_saturated_logits_have_finite_gradients(stat):
    logit = (1e4 * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])).requires_grad_()
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    y = torch.tensor([1, 0, 0, 1, 1, 0])
    value = run(stat, logit, g, y)
    assert torch.isfinite(value)
    assert torch.isfinite(grad(value, logit)).all()
    torch.testing.assert_close(value, reference(stat, torch.sigmoid(logit), g, y))




@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("stat", STATS)
def test_empty_batch_gives_zero(stat, groups):
    logit = torch.zeros(0, requires_grad=True)
    g = torch.zeros(0, dtype=torch.long)
    y = torch.zeros(0, dtype=torch.long)
    value = run(stat, logit, g, y, groups)
    torch.testing.assert_close(value, torch.zeros(()))
    assert grad(value, logit).shape == (0,)


# --------------------------------------------------------------------------------------------
# Wrong inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stat, pred, group, target, culprit",
    [
        ("dp_gap", torch.randn(6, 3), torch.zeros(6, dtype=torch.long), None, "pred"),
        ("tpr_gap", torch.randn(6, 2, 1), torch.zeros(6, dtype=torch.long), torch.zeros(6), "pred"),
        ("dp_gap", torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), None, "pred"),
        ("dp_gap", torch.randn(6), torch.zeros(6), None, "sex"),
        ("fpr_gap", torch.randn(6), torch.tensor([0.0, 1, 0, 1, 0, 1], dtype=torch.float64), torch.zeros(6), "sex"),
        ("dp_gap", torch.randn(6), torch.zeros(5, dtype=torch.long), None, "sex"),
        ("eo_gap", torch.randn(6, 2), torch.zeros(7, dtype=torch.long), torch.zeros(6), "sex"),
        ("dp_gap", torch.randn(6), torch.zeros(6, 2, dtype=torch.long), None, "sex"),
        ("tpr_gap", torch.randn(6), torch.zeros(6, dtype=torch.long), torch.zeros(4), "target"),
    ],
    ids=["pred-N3", "pred-3d", "pred-int", "group-float", "group-float64", "group-short", "group-long",
         "group-2d", "target-short"],
)
def test_wrong_inputs_name_the_input(stat, pred, group, target, culprit):
    with pytest.raises(lossdsl.LossSpecError) as info:
        run(stat, pred, group, target)
    message = str(info.value)
    assert f"input '{culprit}'" in message
    assert "fairness()" in message
