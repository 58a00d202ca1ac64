"""The structure of the term library: one safe division, per-sample parts, the builder namespace T,
and a term written as one file reaching every place that lists terms."""

from __future__ import annotations

import pathlib
import re
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import REGISTRY, T
from lossdsl.duals import METHODS
from lossdsl.registry import safe_divide, weighted_mean
from lossdsl.schedules import SCHEDULES

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- safe_divide ------------------------------------------------------------------------------------

_values = st.lists(st.tuples(st.floats(-1e3, 1e3), st.sampled_from([0.0, 0.0, 0.5, 2.0, 1e-3, 7.0])),
                   min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(_values)
def test_safe_divide_divides_where_defined_and_passes_the_numerator_elsewhere(pairs):
    numerator = torch.tensor([p[0] for p in pairs], dtype=torch.float64, requires_grad=True)
    denominator = torch.tensor([p[1] for p in pairs], dtype=torch.float64, requires_grad=True)
    result = safe_divide(numerator, denominator)
    result.sum().backward()
    for i, (n, d) in enumerate(pairs):
        if d > 0:  # the quotient and its derivatives: 1 / d and -n / d^2
            assert result[i].item() == n / d
            assert numerator.grad[i].item() == 1 / d
            assert abs(denominator.grad[i].item() + n / d**2) <= 1e-12 * max(1.0, abs(n / d**2))
        else:  # divided by 1, and the zero denominator takes no gradient: never NaN
            assert result[i].item() == n
            assert numerator.grad[i].item() == 1.0
            assert denominator.grad[i].item() == 0.0


def test_safe_divide_takes_the_caller_s_definition():
    """soft dice's ``~(d <= 0)`` keeps a NaN denominator NaN; the default ``d > 0`` hides it."""
    numerator, denominator = torch.tensor([1.0, 1.0]), torch.tensor([float("nan"), 0.0])
    assert safe_divide(numerator, denominator).tolist() == [1.0, 1.0]
    kept = safe_divide(numerator, denominator, ~(denominator <= 0))
    assert kept[0].isnan() and kept[1].item() == 1.0


def test_weighted_mean_of_no_weight_is_zero_with_zero_gradients():
    total, weight = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
    value = weighted_mean(total, weight)
    value.backward()
    assert value.item() == 0.0 and total.grad.item() == 1.0 and weight.grad.item() == 0.0


def test_no_term_writes_the_safe_division_by_hand():
    """One source per fact: ``x / torch.where(d > 0, d, 1)`` is ``registry.safe_divide``."""
    by_hand = re.compile(r"/\s*torch\.where\(")
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for path in sorted((ROOT / "lossdsl").rglob("*.py")) if path.name != "registry.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if by_hand.search(line)]
    assert offenders == []


# -- per_sample_parts -------------------------------------------------------------------------------


def test_per_sample_parts_of_an_elementwise_term_are_each_sample_s_mean_and_one():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    term = lossdsl.compile("mse()").terms[0]
    parts = term.per_sample_parts(pred, target, torch.ones(5))
    torch.testing.assert_close(parts[:, 0], F.mse_loss(pred, target, reduction="none").mean(dim=1))
    torch.testing.assert_close(parts[:, 1], torch.ones(5))
    summed = lossdsl.compile("mse(reduction=sum)").terms[0].per_sample_parts(pred, target, torch.ones(5))
    torch.testing.assert_close(summed[:, 0], F.mse_loss(pred, target, reduction="none").sum(dim=1))


def test_per_sample_parts_of_ce_are_its_class_weighted_sums():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(6, 3, 2, generator=g), torch.randint(0, 3, (6, 2), generator=g)
    weight = torch.tensor([1.0, 2.0, 0.5])
    term = lossdsl.compile("ce(weight=[1, 2, 0.5])").terms[0]
    parts = term.per_sample_parts(pred, target, torch.ones(6))
    losses = F.cross_entropy(pred, target, weight=weight, reduction="none")  # already times w[target]
    torch.testing.assert_close(parts[:, 0], losses.sum(dim=1))
    torch.testing.assert_close(parts[:, 1], weight[target].sum(dim=1))


def test_group_loss_leaves_its_inner_term_a_plain_loss():
    """group_loss asks for the parts; it sets no mode on the inner term, whose forward still reduces."""
    g = torch.Generator().manual_seed(2)
    pred, target, group = torch.randn(8, generator=g), torch.randn(8, generator=g), torch.randint(0, 2, (8,), generator=g)
    loss_fn = lossdsl.compile("fairness(group_loss(mse), group=g)")
    loss_fn(pred=pred, target=target, g=group)
    inner = loss_fn.terms[0].inner
    weight = torch.rand(8, generator=g)  # weighted, the forward goes through reduce (no fused torch call)
    expected = (weight * (pred - target).square()).sum() / weight.sum()
    torch.testing.assert_close(inner(pred, target, weight), expected)


def test_a_batch_level_term_has_no_per_sample_parts():
    term = lossdsl.compile("soft_f1()").terms[0]
    with pytest.raises(TypeError, match="whole batch"):
        term.per_sample_parts(torch.zeros(2), torch.zeros(2))


# -- the builder namespace T -------------------------------------------------------------------------


@pytest.fixture
def unregister():
    """Names registered in a test are removed afterwards (the docs test reads REGISTRY)."""
    before = set(REGISTRY)
    yield
    for name in set(REGISTRY) - before:
        del REGISTRY[name]


def test_T_builds_every_term_and_schedule():
    assert set(REGISTRY) | set(SCHEDULES) | set(METHODS) <= set(dir(T))
    expr = T.warmup(4) * T.kl_normal() + T.linear(1, 0, 10) * T.group_loss_gap(T.mse())
    assert str(expr) == "warmup(4) * kl_normal() + linear(1, 0, 10) * group_loss_gap(mse())"
    loss_fn = (T.warmup(4) * T.mse()).compile().train()
    pred, target = torch.zeros(3), torch.ones(3)
    assert [loss_fn(pred, target).item() for _ in range(3)] == [0.0, 0.25, 0.5]  # warmup's share, times mse 1


def test_T_has_no_modules_and_names_what_it_lacks():
    with pytest.raises(AttributeError, match="no term, schedule, constraint method or function named 'metric'"):
        T.metric  # noqa: B018 - today a builder namespace, not the package of implementations
    with pytest.raises(AttributeError):
        T.classification  # noqa: B018


def test_custom_terms_named_metric_and_chain_are_reached_through_T(unregister):
    @lossdsl.term("metric")
    def metric(pred, target):
        return (pred - target).abs().mean()

    @lossdsl.term("chain")
    def chain(pred, target):
        return (pred - target).square().mean()

    assert str(T.metric() + T["chain"]() + T.call("chain")) == "metric() + chain() + chain()"
    assert str(T.chain(0, "<=", T.input("y"), "<=", 1)) == "0 <= y <= 1"  # the helper stays the helper
    value = (T.metric() + T["chain"]()).compile()(torch.zeros(2), torch.full((2,), 2.0))
    assert value.item() == 2.0 + 4.0


def test_lossdsl_terms_is_a_deprecated_alias_of_T():
    sys.modules.pop("lossdsl.terms", None)
    with pytest.warns(DeprecationWarning, match="from lossdsl import T"):
        from lossdsl import terms
    assert str(terms.ce(weight="balanced") + terms.warmup(3) * terms.mse()) == "ce(weight=balanced) + warmup(3) * mse()"
    assert terms.input is T.input and isinstance(terms.mse(), terms.Expr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert str(lossdsl.terms.mae()) == "mae()"  # the attribute, once imported, warns no more


def test_T_builds_constraints_as_text_writes_them():
    objective = (T.mse() + T.warmup(5) * T.mae()).subject_to(
        T.mae(pred=T.input("a"), target=T.input("b")) <= 0.5, name="close", using=T.penalty(10)
    ).subject_to(T.fairness("eo_gap", group="g", groups=2) <= 0.02)
    text = ("loss = mse() + warmup(5) * mae()\n"
            "subject to mae(pred=a, target=b) <= 0.5 as close using penalty(10)\n"
            "subject to fairness(eo_gap, group=g, groups=2) <= 0.02\n")
    assert str(objective) == text and lossdsl.parse(text) == objective.spec
    built, written = objective.compile().train(), lossdsl.compile(text).train()
    g = torch.Generator().manual_seed(4)
    inputs = dict(pred=torch.randn(8, generator=g), target=torch.randn(8, generator=g), a=torch.randn(8, generator=g),
                  b=torch.randn(8, generator=g), g=torch.randint(0, 2, (8,), generator=g))
    for _ in range(2):  # the multipliers' state moves alike
        torch.testing.assert_close(built(**inputs), written(**inputs), rtol=0, atol=0)
    assert list(built.last_terms) == list(written.last_terms)
    checked, expected = objective.check(), lossdsl.check(lossdsl.parse(text), text)  # checked without a module
    assert [t.label for t in checked.terms] == [t.label for t in expected.terms] == ["mse", "mae_1", "mae_2", "fairness"]
    assert [c.name for c in checked.constraints] == [c.name for c in expected.constraints]


def test_a_constraint_is_a_comparison():
    with pytest.raises(TypeError, match="a constraint is a comparison of a loss with a bound"):
        T.mse().subject_to(0.5)
    with pytest.raises(ValueError, match="a constraint's name is an identifier"):
        T.mse().subject_to(T.mae() <= 1, name="not a name")
