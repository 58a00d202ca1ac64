"""The Python builder (from lossdsl import T) builds the parser's AST for the same spec."""

import re

import pydantic
import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import T

y, pred, target = T.input("y"), T.input("pred"), T.input("target")

PAIRS = [
    (T.ce(), "ce()"),
    (T.ce(weight="balanced"), "ce(weight=balanced)"),
    (T.ce(weight=[0.25, 0.75], label_smoothing=0.05), "ce(weight=[0.25, 0.75], label_smoothing=0.05)"),
    (T.ce(ignore_index=-1, reduction="sum"), "ce(ignore_index=-1, reduction=sum)"),
    (T.ce(pred="head2", target="label2"), "ce(pred=head2, target=label2)"),
    (
        T.ce(weight="balanced") + 0.1 * T.fairness("fpr_gap", group="sex") + T.soft_bound(y <= 100),
        "ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)",
    ),
    (T.bce(pos_weight=2.0, label_smoothing=0.1), "bce(pos_weight=2.0, label_smoothing=0.1)"),
    (T.focal(gamma=2.0, alpha=0.25), "focal(gamma=2.0, alpha=0.25)"),
    (T.hinge(squared=True), "hinge(squared=true)"),
    (T.dice(include_background=False) + T.ce(), "dice(include_background=false) + ce()"),
    (T.huber(0.5), "huber(0.5)"),
    (T.quantile(q=[0.1, 0.5, 0.9]), "quantile(q=[0.1, 0.5, 0.9])"),
    (T.mse() - T.mae() / 4, "mse() - mae() / 4"),
    (-T.mse(), "-mse()"),
    ((T.mse() + T.mae()) * 2, "(mse() + mae()) * 2"),
    (T.mse() - (T.mae() - T.huber()), "mse() - (mae() - huber())"),
    (T.mse() * 2 * 3, "mse() * 2 * 3"),
    (T.kl_normal(mu="mu", logvar="logvar") * 0.5, "kl_normal(mu=mu, logvar=logvar) * 0.5"),
    (T.kl(p="teacher", q="student"), "kl(p=teacher, q=student)"),
    (T.triplet(margin=0.5, p=1), "triplet(margin=0.5, p=1)"),
    (T.soft_bound(T.chain(0, "<=", y, "<=", 1), margin=0.1), "soft_bound(0 <= y <= 1, margin=0.1)"),
    (T.soft_bound(T.input("upper") - T.input("lower") >= 0, penalty="hinge"), "soft_bound(upper - lower >= 0, penalty=hinge)"),
    (T.soft_bound(y == 3), "soft_bound(y == 3)"),
    (T.mean(T.abs(pred - target)), "mean(abs(pred - target))"),
    (T.sum(T.clamp(pred, -1, 1)), "sum(clamp(pred, -1, 1))"),
    (T.mse(sample_weight="w") + T.l2(weight=1e-4), "mse(sample_weight=w) + l2(weight=0.0001)"),
    (T.fairness("eo_gap", group="race", groups=5), "fairness(eo_gap, group=race, groups=5)"),
    (T.soft_f1(beta=2.0), 'soft_f1(beta=2.0)'),
    (
        T.soft_bound(((y <= 1) | (pred <= 1)) & ~(y >= 5), penalty="hinge"),
        "soft_bound((y <= 1 or pred <= 1) and not y >= 5, penalty=hinge)",
    ),
    (T.soft_bound(T.implies(y >= 0, pred >= 0)), "soft_bound(y >= 0 implies pred >= 0)"),
    (T.fairness(T.group_loss(T.huber(delta=2)), group="g"), "fairness(group_loss(huber(delta=2)), group=g)"),
    (T.fairness(T.group_loss(T.mse(), form="group_loss_ratio"), group="g"), "fairness(group_loss_ratio(mse()), group=g)"),
    (T.fairness("dp_gap", group="g", agg=T.call("smoothmax", 0.1)), "fairness(dp_gap, group=g, agg=smoothmax(0.1))"),
]


@pytest.mark.parametrize(("built", "text"), PAIRS, ids=[text for _, text in PAIRS])
def test_builder_and_parser_give_equal_asts(built, text):
    assert built.spec == lossdsl.parse(text)
    assert lossdsl.parse(str(built)) == built.spec  # str() is the canonical text
    assert str(built) == lossdsl.format(lossdsl.parse(text)).strip()


def test_built_spec_compiles_to_the_same_loss():
    built = T.mse() + 0.5 * T.mean(T.relu(pred - target))
    text = lossdsl.compile("mse() + 0.5 * mean(relu(pred - target))")
    p, t = torch.randn(6), torch.randn(6)
    torch.testing.assert_close(built.compile()(p, t), text(p, t))
    torch.testing.assert_close(built.compile()(p, t), F.mse_loss(p, t) + 0.5 * F.relu(p - t).mean())


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: T.fairness("fpr_gp", group="sex"), "E201"),
        (lambda: T.cee(), None),  # no such term: AttributeError
        (lambda: T.ce(wieght="balanced"), "E203"),
        (lambda: T.ce(label_smoothing=2), "E205"),
        (lambda: T.fairness("fpr_gap"), "E206"),
        (lambda: (T.ce() * T.ce()).compile(), "E302"),
        (lambda: (T.ce() + 1).check(), "E302"),
        (lambda: T.soft_bound(T.chain(3, "<=", 4)), "E303"),
    ],
)
def test_mistakes_raise_the_same_diagnostics(make, code):
    if code is None:
        with pytest.raises(AttributeError):
            make()
        return
    with pytest.raises(lossdsl.LossSpecError) as info:
        make()
    assert info.value.diagnostics[0].code == code
    assert info.value.diagnostics[0].span is None  # no file, no place
    assert str(info.value).startswith(f"error[{code}]")


def test_python_chained_comparison_is_refused_with_a_pointer_to_chain():
    with pytest.raises(TypeError, match="T.chain"):
        T.soft_bound(0 <= y <= 1)


def test_python_values_become_spec_values():
    assert T.ce(weight="balanced").node.keywords[0].value == lossdsl.parse("balanced").objective.value
    assert str(T.abs("a b")) == 'abs("a b")'  # not an identifier: a string
    assert str(T.soft_bound(y <= -2.5)) == "soft_bound(y <= -2.5)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: T.ce(pred="a\nb"), "a spec string cannot hold a line break"),
        (lambda: T.ce(weight=()), "an empty tuple has no spec form"),
        (lambda: T.chain(0, "<<", T.input("y")), "unknown comparison '<<'"),
        (lambda: T.input("and"), "an input name is an identifier other than and, or, not, implies"),
        (lambda: T.ce(weight=[1e39, 1.0]), "a spec number is finite and at most 3.403e+38"),
    ],
)
def test_values_with_no_spec_form_are_refused_plainly(build, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        build()
    assert not isinstance(info.value, pydantic.ValidationError)


def test_a_reserved_word_as_a_string_value_round_trips():
    """A str that is a reserved word becomes a quoted string, which parses back."""
    spec = T.abs("or")
    assert str(spec) == 'abs("or")'
    assert lossdsl.parse(str(spec)) == spec.spec


@pytest.mark.parametrize("name", ["", "a b", "or"])
def test_a_string_that_is_no_identifier_is_refused_as_an_input_name(name):
    """As in text (``mse(pred="a b")`` is E204): no input could be passed by that name."""
    with pytest.raises(lossdsl.LossSpecError) as info:
        T.mse(pred=name)
    assert [d.code for d in info.value.diagnostics] == ["E204"]
    assert "names an input by an identifier" in info.value.diagnostics[0].message


DEPTH = 3000  # far past Python's recursion limit (1000) and the nesting limit (lossdsl.parsing.MAX_NESTING)


def _deep_sum():
    expr = T.mse()
    for _ in range(DEPTH):
        expr = expr + T.mae()
    return expr


def _deep_right_sum():
    expr = T.mae()
    for _ in range(DEPTH):
        expr = T.mse() + expr
    return expr


def _deep_negation():
    expr = T.mse()
    for _ in range(DEPTH):
        expr = -expr
    return expr


@pytest.mark.parametrize(
    ("build", "text"),
    [
        (_deep_sum, "mse()" + " + mae()" * DEPTH),
        # right-nested: each sum on the right of a + needs its brackets
        (_deep_right_sum, "mse() + (" * (DEPTH - 1) + "mse() + mae()" + ")" * (DEPTH - 1)),
        (_deep_negation, "-" * DEPTH + "mse()"),
    ],
)
def test_a_deep_builder_expression_prints_and_is_e004_when_checked(build, text):
    """``str(e)`` and ``e.check()`` of 3,000 nested sums were a RecursionError (the formatter
    recursed); printing now works, and checking is E004, as compiling its Spec or its text is."""
    expr = build()
    assert str(expr) == text
    assert repr(expr) == f"lossdsl.builder.Expr({text!r})"
    reports = []
    for attempt in (expr.check, expr.compile, lambda: lossdsl.compile(expr.spec), lambda: lossdsl.compile(text)):
        with pytest.raises(lossdsl.LossSpecError) as info:
            attempt()
        reports.append([(d.code, d.message) for d in info.value.diagnostics])
    limit = lossdsl.parsing.MAX_NESTING
    assert reports == [[("E004", f"expression nested too deeply (the limit is {limit} levels)")]] * 4


def test_the_builder_and_the_parser_draw_the_nesting_limit_at_one_place():
    """99 sums of terms (100 levels with the calls) check and round-trip; one more is E004 both ways."""
    expr = T.mse()
    for _ in range(lossdsl.parsing.MAX_NESTING - 1):
        expr = expr + T.mae()
    assert len(expr.check().terms) == lossdsl.parsing.MAX_NESTING
    assert lossdsl.parse(str(expr)) == expr.spec
    deeper = expr + T.mae()
    for attempt in (deeper.check, lambda: lossdsl.parse(str(deeper))):
        with pytest.raises(lossdsl.LossSpecError) as info:
            attempt()
        assert [d.code for d in info.value.diagnostics] == ["E004"]
