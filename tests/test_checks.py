"""Checks that need more than one line of table: folding, strictness, several errors per call."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def codes(src):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    return [(d.code, d.span.line, d.span.column) for d in info.value.diagnostics]


@pytest.mark.parametrize(
    ("src", "column"),
    [
        ("ce() / (1-1)", 9),  # the divisor's span: inside the brackets
        ("1/(1-1) * ce()", 4),
        ("soft_bound(y <= 1/0)", 19),
        ("soft_bound(y / (2 - 2) <= 1)", 17),
        ("soft_bound(y <= 2 * (1 / 0))", 26),
    ],
)
def test_constant_division_by_zero_is_found_statically(src, column):
    assert codes(src) == [("E205", 1, column)]


def test_constant_overflow_is_found_statically():
    assert codes("1e300 * 1e300 * ce()") == [("E205", 1, 1)]


def test_constants_are_folded_into_one_weight():
    loss_fn = lossdsl.compile("2 * 3 * mse() - -(1 / 4) * mae()")
    pred, target = torch.randn(6), torch.randn(6)
    torch.testing.assert_close(loss_fn(pred, target), 6 * F.mse_loss(pred, target) + 0.25 * F.l1_loss(pred, target))


@pytest.mark.parametrize(
    ("src", "code"),
    [
        ("ce(weight=[])", "E204"),  # an empty list of weights means nothing
        ("bce(pos_weight=[])", "E204"),
        ('ce(label_smoothing="0.1")', "E204"),  # a string is not a number
        ("fairness(dp_gap, group=s, groups=2.0)", "E204"),  # a float is not an int
        ("ce(ignore_index=99999999999999999999999)", "E205"),  # beyond int64
    ],
)
def test_parameters_are_strict(src, code):
    assert codes(src)[0][0] == code


def test_every_argument_problem_of_a_call_is_reported():
    assert codes("ce(wieght=1, reduction=x, label_smoothing=3)") == [
        ("E203", 1, 4),
        ("E205", 1, 43),  # validation reports in the parameter model's field order
        ("E201", 1, 24),
    ]


def test_no_missing_report_after_a_misspelt_argument():
    # 'gruop' is unknown; reporting 'group' missing too would say the same thing twice.
    assert codes("fairness(dp_gap, gruop=sex)") == [("E203", 1, 18)]
