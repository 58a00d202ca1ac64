"""Checks that need more than one line of table: folding, strictness, several errors per call."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def codes(src):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    return [(d.code, d.span.line, d.span.column) for d in info.value.diagnostics]


def only_diagnostic(src, params=None):
    """The one diagnostic that compiling ``src`` raises."""
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src, params)
    (diagnostic,) = info.value.diagnostics
    return diagnostic


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
    # beyond float32's range: inf in the float32 loss it weighs
    assert codes("1e20 * 1e20 * ce()") == [("E205", 1, 1)]
    assert codes("ce() * (1e30 * 1e30)") == [("E205", 1, 9)]


@pytest.mark.parametrize("src", ["1e39 * ce()", "soft_bound(y <= 1, margin=1e300)", "ce(weight=[1e308, 1])"])
def test_a_number_beyond_float32_is_refused(src):
    ((code, _, _),) = codes(src)
    assert code == "E006"


@pytest.mark.parametrize(
    ("spec", "params", "message"),
    [
        ("param lam = 0\nloss = (1 / lam) * mse()", None, "division by zero with lam = 0"),
        ("param lam = 1\nloss = mse() / lam", {"lam": 0}, "division by zero with lam = 0"),
        ("param lam = 2\nloss = mae()\nsubject to mae() <= 1 / (lam - 2)", None, "division by zero with lam = 2"),
        ("param lam = 1e30\nloss = (lam * lam) * mse()", None, "the constant overflows with lam = 1e+30"),
    ],
)
def test_param_arithmetic_is_checked_when_the_params_get_their_values(spec, params, message):
    diagnostic = only_diagnostic(spec, params)
    assert (diagnostic.code, diagnostic.message) == ("E205", message)
    assert diagnostic.span is not None and "^" in diagnostic.render()


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


@pytest.mark.parametrize(
    ("src", "column", "message"),
    [
        ("mse() / warmup(10)", 1, "division by zero: the divisor goes from 0 to 1"),
        ("(1 / linear(-1, 1, 10)) * mse()", 2, "division by zero: the divisor goes from -1 to 1"),
        ("mse() / cosine(0, 1, 10)", 1, "division by zero: the divisor goes from 0 to 1"),
        # inside arithmetic, and over params
        ("mse() / (2 * warmup(10))", 1, "division by zero: the divisor goes from 0 to 2"),
        ("mse() / -warmup(10)", 1, "division by zero: the divisor goes from -1 to 0"),
        ("mse() / (warmup(10) - 1)", 1, "division by zero: the divisor goes from -1 to 0"),
        ("param lam = 1\nloss = mse() / (lam * warmup(10))", 8, "division by zero: the divisor goes from 0 to 1 with lam = 1"),
    ],
)
def test_division_by_a_schedule_that_reaches_zero(src, column, message):
    diagnostic = only_diagnostic(src)
    assert (diagnostic.code, diagnostic.span.column, diagnostic.message) == ("E205", column, message)


@pytest.mark.parametrize(
    ("spec", "params", "message"),
    [
        ("param lam = 1\nloss = mse() * lam * lam", {"lam": 1e20}, "the loss's weight exceeds 1e+15 with lam = 1e+20"),
        ("param lam = 1\nloss = mse() / lam / lam", {"lam": 1e-20}, "the loss's weight exceeds 1e+15 with lam = 1e-20"),
        ("loss = mse() * 1e20 * linear(1, 1e20, 10)", None, "the loss's weight exceeds 1e+15"),
    ],
)
def test_a_loss_weight_beyond_float32_over_several_factors(spec, params, message):
    diagnostic = only_diagnostic(spec, params)
    assert (diagnostic.code, diagnostic.message) == ("E205", message)


def test_division_by_a_schedule_away_from_zero():
    loss_fn = lossdsl.compile("mse() / linear(2, 4, 10)")
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target) / 2)


@pytest.mark.parametrize(
    ("src", "line", "message"),
    [
        ("let total = ce()\nloss = total + mse(pred=p)", 1, "'total' names the whole loss in last_terms"),
        ("loss = mse()\nsubject to mae() <= 1 as total", 2, "'total' names the whole loss in last_terms"),
        ("let fit = mse()\nloss = fit + mae()\nsubject to mae() <= 1 as fit", 3, "'fit' is defined twice"),
        ("loss = mse()\nsubject to mae() <= 1 as a\nsubject to mae() <= 2 as a", 3, "'a' is defined twice"),
    ],
)
def test_names_that_would_clash_in_last_terms(src, line, message):
    diagnostic = only_diagnostic(src)
    assert (diagnostic.code, diagnostic.span.line, diagnostic.message) == ("E102", line, message)


def test_a_term_label_gives_way_to_a_constraint_name():
    loss_fn = lossdsl.compile("loss = mse()\nsubject to mae() <= 1 as mae")
    pred, target = torch.randn(6), torch.randn(6)
    loss_fn(pred, target)
    terms = loss_fn.last_terms
    assert set(terms) == {"mse", "mae_", "mae", "mae.surrogate", "mae.violation", "mae.multiplier", "total"}
    torch.testing.assert_close(terms["mae_"], F.l1_loss(pred, target))
    torch.testing.assert_close(terms["mae"], F.l1_loss(pred, target))


def test_dividing_by_a_number_too_small_for_float32():
    assert codes("soft_f1() / 1e-320") == [("E205", 1, 13)]
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("param lam = 1\nloss = mse() / lam", {"lam": 1e-300})
    assert info.value.diagnostics[0].message == "the loss's weight exceeds 1e+15 with lam = 1e-300"
    torch.testing.assert_close(lossdsl.compile("mse() / 1e-15")(torch.ones(2), torch.zeros(2)), torch.tensor(1e15))


@pytest.mark.parametrize(
    "spec, line, column",
    [
        ("mse() / 1e-16", 1, 1),
        ("3e38 * mae()", 1, 1),
        ("mse() - 3e+38 * mae()", 1, 9),  # a huge literal weight: any loss above 1 overflowed float32 (fuzz)
        ("param lam = 1e20\nloss = lam * mse()", 2, 8),
        ("mse() + 1e10 * warmup(10) * 1e10 * mae()", 1, 9),
    ],
)
def test_a_loss_weight_beyond_1e15_is_refused(spec, line, column):
    """A loss above 3.4e23 times a weight beyond 1e15 overflows float32: the weight is E205 at the product."""
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "E205" and "the loss's weight exceeds 1e+15" in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (line, column)
    weight = 1e15  # the largest weight is accepted, and the loss is exactly weighed
    torch.testing.assert_close(lossdsl.compile(f"{weight} * mse()")(torch.ones(2), torch.zeros(2)), torch.tensor(weight))


def test_a_constraint_rho_too_small_for_float32():
    """augmented divides the multiplier by rho: a rho whose reciprocal float32 cannot hold is refused."""
    ((code, line, _),) = codes("loss = mse()\nsubject to mae() <= 1 using augmented(1e-320)")
    assert (code, line) == ("E205", 2)
    for method in ("lagrangian(lr=1e-40)", "penalty(1e-39)"):  # these only multiply
        lossdsl.compile(f"loss = mse()\nsubject to mae() <= 1 using {method}")


@pytest.mark.parametrize(
    ("src", "labels"),
    [
        ("loss = mse()\nsubject to mae() <= 1\nsubject to mae() <= 2 as constraint_1", ["constraint_1_", "constraint_1"]),
        ("let constraint_1 = mae()\nloss = mse() + constraint_1\nsubject to mae() <= 1", ["constraint_1", "constraint_1_"]),
    ],
)
def test_a_default_constraint_name_gives_way(src, labels):
    loss_fn = lossdsl.compile(src)
    pred, target = torch.randn(6), torch.randn(6)
    loss_fn(pred, target)
    terms = loss_fn.last_terms
    assert [label for label in terms if label.startswith("constraint_") and "." not in label] == labels
    for label in labels:  # each constraint is there, with its own value
        torch.testing.assert_close(terms[label], F.l1_loss(pred, target))
    assert len(terms) == len(loss_fn._last_labels)  # nothing overwritten


# The other arguments each term needs, so that only the input under test is wrong.
_REQUIRED = {"soft_bound": "x <= 1", "mean": "x", "sum": "x", "kl": "p=a, q=b", "fairness": "dp_gap, group=g"}
_INPUT_PARAMS = [
    (name, field)
    for name, term in lossdsl.registry.REGISTRY.items()
    for field in term.params.fields_marked(lossdsl.registry.INPUT)
]


@pytest.mark.parametrize(("term", "field"), _INPUT_PARAMS)
@pytest.mark.parametrize("text", ["", "a b", "1x", "and", "x.y"])
def test_a_string_that_is_no_identifier_names_no_input(term, field, text):
    """``sum(x, sample_weight="")`` compiled and failed on every call (torch's IndexError as E402):
    the empty name dropped out of the inputs while the module still read a weight."""
    required = _REQUIRED.get(term, "")
    if f"{field}=" in required:
        required = ", ".join(arg for arg in required.split(", ") if not arg.startswith(f"{field}="))
    arguments = ", ".join(filter(None, (required, f'{field}="{text}"')))
    src = f"loss = {term}({arguments})"
    diagnostic = only_diagnostic(src)
    assert diagnostic.code == "E204"
    assert diagnostic.message.startswith(f"'{field}' of {term}() names an input by an identifier; got ")
    # at the string, quotes included
    assert diagnostic.span.column == src.index(f'"{text}"') + 1
    assert diagnostic.span.end_column == diagnostic.span.column + len(text) + 2


def test_the_hint_for_a_string_input_name_says_what_to_write():
    assert only_diagnostic('loss = sum(x, sample_weight="")').hint == \
        "leave 'sample_weight' out, or name an input: sample_weight=NAME"
    assert only_diagnostic('loss = mse(pred="")').hint == "leave 'pred' out to read 'pred', or name an input: pred=NAME"
    assert only_diagnostic('loss = fairness(dp_gap, group=("sex", ""))').hint == "name an input: group=NAME"
    assert only_diagnostic('loss = mse(pred="head 2")').hint.endswith(": e.g. pred=head_2")


def test_a_string_that_is_an_identifier_names_an_input_as_a_bare_name_does():
    pred, target, weight = torch.randn(5), torch.randn(5), torch.rand(5)
    quoted = lossdsl.compile('loss = mse(pred="p", sample_weight="w")')
    bare = lossdsl.compile("loss = mse(pred=p, sample_weight=w)")
    assert quoted.inputs == bare.inputs == ("p", "target", "w")
    expected = (weight * (pred - target) ** 2).sum() / weight.sum()
    torch.testing.assert_close(quoted(p=pred, target=target, w=weight), expected)
    torch.testing.assert_close(bare(p=pred, target=target, w=weight), expected)
