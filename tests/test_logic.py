"""and / or / not / implies inside soft_bound, with DL2's semantics (Fischer et al., 2019).

Each comparison's penalty is its violation (hinge) or the violation squared; ``and`` adds,
``or`` multiplies, ``not`` is pushed into the comparisons, and ``a implies b`` is ``not a or b``.
"""

import math
import operator
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ast


def inputs(seed, n=16, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(n, dtype=dtype, generator=generator) * 2).requires_grad_() for name in "abc"}


def hinge_le(x, bound):  # violation of x <= bound
    return torch.relu(x - bound)


def hinge_ge(x, bound):  # violation of x >= bound
    return torch.relu(bound - x)


# spec condition (penalty=hinge) -> its DL2 formula
FORMULAS = {
    "a <= 1 and b >= 0": lambda a, b, c: hinge_le(a, 1) + hinge_ge(b, 0),
    "a <= 1 or b >= 0": lambda a, b, c: hinge_le(a, 1) * hinge_ge(b, 0),
    "not a <= 1": lambda a, b, c: hinge_ge(a, 1),
    "not a > 1": lambda a, b, c: hinge_le(a, 1),
    "a >= 0 implies b >= 0": lambda a, b, c: hinge_le(a, 0) * hinge_ge(b, 0),
    "not (a <= 1 and b >= 0)": lambda a, b, c: hinge_ge(a, 1) * hinge_le(b, 0),
    "not (a <= 1 or b >= 0)": lambda a, b, c: hinge_ge(a, 1) + hinge_le(b, 0),
    "not (a >= 0 implies b >= 0)": lambda a, b, c: hinge_ge(a, 0) + hinge_le(b, 0),
    "a <= 1 or b <= 1 and c <= 1": lambda a, b, c: hinge_le(a, 1) * (hinge_le(b, 1) + hinge_le(c, 1)),
    "(a <= 1 or b <= 1) and c <= 1": lambda a, b, c: hinge_le(a, 1) * hinge_le(b, 1) + hinge_le(c, 1),
    "not -1 <= a <= 1": lambda a, b, c: hinge_le(a, -1) * hinge_ge(a, 1),  # a < -1 or a > 1
    "a == b or c >= 2": lambda a, b, c: (a - b).abs() * hinge_ge(c, 2),
    "a <= 0 implies b <= 0 implies c <= 0": lambda a, b, c: hinge_ge(a, 0) * hinge_ge(b, 0) * hinge_le(c, 0),
    "not not a <= 1": lambda a, b, c: hinge_le(a, 1),
}


@pytest.mark.parametrize("condition", FORMULAS)
@pytest.mark.parametrize("penalty", ["hinge", "squared"])
def test_logic_equals_the_dl2_formula(condition, penalty):
    tensors = inputs(0)
    loss_fn = lossdsl.compile(f"soft_bound({condition}, penalty={penalty})")
    got = loss_fn(**{name: tensors[name] for name in loss_fn.inputs})
    if penalty == "hinge":
        expected = FORMULAS[condition](**tensors).mean()
    else:  # squared: every comparison's violation is squared before and / or combine them
        squared = {name: value for name, value in tensors.items()}
        expected = _squared_formula(condition, squared)
    torch.testing.assert_close(got, expected)
    leaves = [tensors[name] for name in loss_fn.inputs]
    for got_grad, expected_grad in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(expected, leaves)):
        torch.testing.assert_close(got_grad, expected_grad)


def _squared_formula(condition, tensors):
    """The same formulas with each comparison's violation squared (|a - b| becomes (a - b)^2)."""
    global hinge_le, hinge_ge
    saved = hinge_le, hinge_ge
    hinge_le = lambda x, bound: torch.relu(x - bound).square()  # noqa: E731
    hinge_ge = lambda x, bound: torch.relu(bound - x).square()  # noqa: E731
    try:
        if condition == "a == b or c >= 2":
            a, b, c = tensors["a"], tensors["b"], tensors["c"]
            return ((a - b).square() * hinge_ge(c, 2)).mean()
        return FORMULAS[condition](**tensors).mean()
    finally:
        hinge_le, hinge_ge = saved


comparisons = st.sampled_from(["a <= 0.5", "b >= -0.5", "c <= 1", "a >= b", "0 <= c <= 2", "a == c", "-1 < b"])


def _extend(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["and", "or", "implies"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda x: f"not ({x})"),
    )


conditions = st.recursive(comparisons, _extend, max_leaves=4)


def value(condition, tensors, penalty="hinge"):
    spec = f"soft_bound({condition}, penalty={penalty})"
    try:
        loss_fn = lossdsl.compile(spec)
    except lossdsl.LossSpecError as exc:
        assert "not (a == b)" in str(exc)  # the one condition refused
        return None
    return loss_fn(**{name: tensors[name] for name in loss_fn.inputs})


@settings(max_examples=60, deadline=None)
@given(p=conditions, q=conditions, seed=st.integers(0, 1000))
def test_de_morgan_and_implication_identities(p, q, seed):
    tensors = inputs(seed)
    pairs = [
        (f"not (({p}) and ({q}))", f"(not ({p})) or (not ({q}))"),
        (f"not (({p}) or ({q}))", f"(not ({p})) and (not ({q}))"),
        (f"({p}) implies ({q})", f"(not ({p})) or ({q})"),
        (f"not not ({p})", p),
        (f"({p}) and ({q})", f"({q}) and ({p})"),
        (f"({p}) or ({q})", f"({q}) or ({p})"),
    ]
    for left, right in pairs:
        got, expected = value(left, tensors), value(right, tensors)
        if got is None or expected is None:
            assert got is None and expected is None
            continue
        torch.testing.assert_close(got, expected)


@settings(max_examples=40, deadline=None)
@given(p=conditions, seed=st.integers(0, 1000))
def test_a_condition_costs_nothing_exactly_where_it_holds(p, seed):
    """The DL2 property: the penalty is 0 on the elements that satisfy the condition, and only there
    (away from the bounds themselves, where a strict comparison is treated as non-strict)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([-2.3, -0.7, 0.3, 0.8, 2.6], dtype=torch.float64)
    # Offsets keep a, b and c apart, so no element sits on a bound of a >= b (or a == c holds by chance).
    tensors = {name: values[torch.randperm(5, generator=generator)] + shift for name, shift in zip("abc", (0, 0.05, 0.11))}
    condition = lossdsl.parse(f"soft_bound({p})").statements[0].value.args[0]
    for i in range(5):
        element = {name: tensor[i : i + 1] for name, tensor in tensors.items()}
        penalty = value(p, element, penalty="hinge")
        if penalty is None:
            return
        holds = _holds(condition, {name: tensor[i].item() for name, tensor in tensors.items()})
        assert (penalty.item() == 0) == holds


def _holds(node, scope):
    """The condition's truth on plain numbers: the test's own interpreter of the AST."""
    if isinstance(node, ast.Not):
        return not _holds(node.operand, scope)
    if isinstance(node, ast.Logic):
        left, right = _holds(node.left, scope), _holds(node.right, scope)
        return {"and": left and right, "or": left or right, "implies": (not left) or right}[node.op]
    operands = [_number(operand, scope) for operand in node.operands]
    compare = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
    return all(compare[op](x, y) for op, x, y in zip(node.ops, operands, operands[1:]))


def _number(node, scope):
    if isinstance(node, ast.Neg):
        return -_number(node.operand, scope)
    return scope[node.id] if isinstance(node, ast.Name) else node.value


def test_margin_and_sample_weight_apply_to_each_comparison():
    tensors = inputs(1)
    a, b = tensors["a"], tensors["b"]
    w = torch.rand(16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = lossdsl.compile("soft_bound(a <= 1 or not b <= 0, penalty=hinge, margin=0.25, sample_weight=w)")(a=a, b=b, w=w)
    per_element = torch.relu(a - 1 + 0.25) * torch.relu(0 - b + 0.25)
    torch.testing.assert_close(got, (w * per_element).sum() / w.sum())


def test_and_with_any_penalty_adds_the_penalties():
    tensors = inputs(2)
    a, b = tensors["a"], tensors["b"]
    got = lossdsl.compile("soft_bound(a <= 1 and b >= 0, penalty=softplus(4))")(a=a, b=b)
    torch.testing.assert_close(got, (torch.nn.functional.softplus(4 * (a - 1)) / 4 + torch.nn.functional.softplus(-4 * b) / 4).mean())


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("soft_bound(not a == 1)", "E204", "'not (a == b)' has no gradient"),
        ("soft_bound(a <= 0 or b <= 0, penalty=log_barrier)", "E204", "use penalty=squared or penalty=hinge"),
        ("soft_bound(a <= 0 implies b <= 0, penalty=softplus)", "E204", "use penalty=squared or penalty=hinge"),
        ("soft_bound(not (a <= 0 and b <= 0), penalty=log_barrier)", "E204", "use penalty=squared or penalty=hinge"),
        ("loss = ce() and mse()", "E304", "'and' combines comparisons, not losses"),
        ("loss = not ce()", "E304", "'not' combines comparisons, not losses"),
        ("soft_bound(a and b <= 1)", "E204", "combine comparisons; got name 'a'"),
        ("loss = ce()\nsubject to ce() <= 1 and mse() <= 1", "E303", "one comparison"),
        ("soft_bound(a + (b <= 1 or a <= 1) <= 3)", "E303", "cannot be part of a tensor expression"),
    ],
)
def test_logic_mistakes_are_diagnosed(spec, code, message):
    with pytest.raises(lossdsl.LossSpecError, match=re.escape(message)) as caught:
        lossdsl.compile(spec)
    assert f"[{code}]" in str(caught.value)


def test_logic_keywords_parse_over_lines_and_names_that_start_with_them():
    spec = "soft_bound(notice <= 1 and\n    order >= 0 or\n    android <= 2)"
    loss_fn = lossdsl.compile(spec)
    assert loss_fn.inputs == ("notice", "order", "android")
    assert lossdsl.format(lossdsl.parse(spec)) == "soft_bound(notice <= 1 and order >= 0 or android <= 2)\n"


# -- float32's range (issue 10) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "argument", "size"),
    [
        # the penalty for inputs of size 1: (violation)^2, or the product of the sides of an `or`
        ("y >= 1e20", "y >= 1e20", (1e20 + 1) ** 2),
        ("y <= 0, margin=1e20", "1e20", (1 + 1e20) ** 2),
        ("y >= 1e30 or y <= 0", "y >= 1e30 or y <= 0", (1e30 + 1) ** 2 * 1),
        # y <= 100 holds in [-1, 1], not beyond: a premise that fails meets the inf of the other side
        ("y > 100 implies y >= 1e30", "y > 100 implies y >= 1e30", (1 + 1e30) ** 2),
        ("not (-1e20 <= y <= 1e20)", "not (-1e20 <= y <= 1e20)", (1e20 - 1) ** 4),  # y < -1e20 or y > 1e20
        ("y * 1e20 >= 0", "y * 1e20 >= 0", 1e40),
        ("exp(y * 100) <= 1", "exp(y * 100) <= 1", (math.exp(100) + 1) ** 2),
        ("y >= 1e10 or y <= -1e10", "y >= 1e10 or y <= -1e10", (1e10 + 1) ** 4),  # each side fits alone
        ("y >= 1e30, penalty=hinge, reduction=sum", "y >= 1e30", math.nan),  # 1e30 fits: accepted below
    ],
)
def test_a_penalty_its_numbers_push_past_float32_is_e205(condition, argument, size):
    """Unchecked, these were inf (a squared violation of 1e20 is 1e40) or NaN (0 * inf in an `or`)
    on y = torch.randn(8). The size is the penalty's largest value for inputs in [-1, 1]."""
    spec = f"loss = soft_bound({condition})"
    if math.isnan(size):
        loss_fn = lossdsl.compile(spec)
        y = torch.randn(8, dtype=torch.float64)
        torch.testing.assert_close(loss_fn(y=y), torch.relu(1e30 - y).sum())
        return
    with pytest.raises(lossdsl.LossSpecError) as caught:
        lossdsl.compile(spec)
    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.code == "E205"
    assert f"reaches {size:.3g}" in diagnostic.message
    assert spec[diagnostic.span.column - 1:].startswith(argument)  # the condition, or the margin


@pytest.mark.parametrize("condition", ["y <= 1e19", "-1e20 <= y <= 1e20", "not (y >= 1e20)", "y >= -1e30"])
def test_a_huge_bound_that_inputs_of_size_1_satisfy_is_no_false_alarm(condition):
    """The check follows each comparison's direction: y <= 1e19 holds for every input below 1e19,
    so its penalty is 0 there (and finite up to 1.8e19), not a violation of 1e19 squared."""
    loss_fn = lossdsl.compile(f"loss = soft_bound({condition})")
    y = torch.randn(64, requires_grad=True)
    got = loss_fn(y=y)
    got.backward()
    assert got == 0 and (y.grad == 0).all()  # randn never nears these bounds


@pytest.mark.parametrize("penalty", ["squared", "hinge"])
def test_the_largest_accepted_penalty_is_finite(penalty):
    """The limit is float32's largest over a million elements: y >= 1e16 squares to 1e32, which fits."""
    loss_fn = lossdsl.compile(f"loss = soft_bound(y >= 1e16, penalty={penalty})")
    y = torch.randn(1000, requires_grad=True)
    got = loss_fn(y=y)
    got.backward()
    violation = torch.relu(1e16 - y.detach().double())
    expected = (violation**2 if penalty == "squared" else violation).mean()
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize("penalty", ["squared", "hinge"])
@pytest.mark.parametrize("condition", ["x <= 0 or y <= 0", "y <= 0 or x <= 0", "not (0 < y <= x)",
                                       "x >= 0 implies y <= 0"])
def test_or_is_0_where_one_side_holds_even_if_the_other_is_inf(condition, penalty):
    """DL2's `or` multiplies the penalties; a side that holds (0) makes the product 0 even when the
    other side is inf (a huge input squared): 0 * inf was NaN, in the value and the gradients."""
    loss_fn = lossdsl.compile(f"loss = soft_bound({condition}, penalty={penalty})")
    x = torch.tensor([-1.0, 2.0, 3.0, -2.0], requires_grad=True)
    y = torch.tensor([1e20, 1.0, 0.5, -3e38], requires_grad=True)  # elements 0 and 3 hold, with an inf beside
    got = loss_fn(x=x, y=y)
    got.backward()

    def pen(v):
        return torch.relu(v) ** 2 if penalty == "squared" else torch.relu(v)

    xd, yd = x.detach().double(), y.detach().double()  # float64 holds the inf sides: then masked
    if condition == "not (0 < y <= x)":  # y <= 0 or y > x
        sides = pen(yd), pen(xd - yd)
    elif condition == "x >= 0 implies y <= 0":  # x < 0 or y <= 0
        sides = pen(xd), pen(yd)
    else:
        sides = pen(xd), pen(yd)
    holds = (sides[0] == 0) | (sides[1] == 0)
    expected = torch.where(holds, 0.0, sides[0] * sides[1]).mean()
    assert torch.isfinite(got) and bool(holds[0]) and bool(holds[3])
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert x.grad[0] == 0 and y.grad[0] == 0  # the condition holds there: no pull


def test_or_keeps_a_nan_visible():
    """A side that holds does not hide a NaN on the other side: NaN in, NaN out (issue 10's policy)."""
    loss_fn = lossdsl.compile("loss = soft_bound(x <= 0 or y <= 0)")
    assert torch.isnan(loss_fn(x=torch.tensor([-1.0]), y=torch.tensor([math.nan])))
