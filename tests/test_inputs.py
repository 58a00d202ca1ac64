"""inputs: blocks: declared names, kinds per term, group counts, and call-time shape and dtype checks."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.driver import plan_for

CREDIT = """inputs:
    pred:   logits[N]
    target: binary[N]
    sex:    group[N] of 2
    y:      real[N]

let data = ce(weight=balanced)
let fair = fairness(fpr_gap, group=sex)
loss = data + 0.1 * fair + soft_bound(y <= 100)
"""


def credit_inputs(n=8, **changes):
    g = torch.Generator().manual_seed(0)
    inputs = {
        "pred": torch.randn(n, generator=g),
        "target": torch.randint(0, 2, (n,), generator=g),
        "sex": torch.randint(0, 2, (n,), generator=g),
        "y": torch.randn(n, generator=g) * 100,
    }
    inputs.update(changes)
    return inputs


def test_declared_spec_equals_the_undeclared_one():
    undeclared = lossdsl.compile(CREDIT.split("\n\n", 1)[1])
    declared = lossdsl.compile(CREDIT)
    inputs = credit_inputs()
    torch.testing.assert_close(declared(**inputs), undeclared(**inputs))


def test_group_count_comes_from_the_declaration():
    assert lossdsl.compile(CREDIT).terms[1].num_groups == 2
    explicit = lossdsl.compile(CREDIT.replace("group=sex)", "group=sex, groups=3)"))
    assert explicit.terms[1].num_groups == 3  # an explicit argument wins


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"sex": torch.rand(8)}, "input 'sex' (declared group[N] at credit.loss:4): expected integer group"),
        ({"y": torch.randn(9)}, "input 'y' (declared real[N] at credit.loss:5): N is 9 here (shape (9,)) but 8 in 'pred'"),
        ({"pred": torch.randn(8, 1)}, "input 'pred' (declared logits[N] at credit.loss:2): expected 1 dimension, got shape (8, 1)"),
        ({"pred": torch.zeros(8, dtype=torch.long)}, "expected a floating-point tensor, got torch.int64"),
    ],
)
def test_call_time_checks_name_the_input_and_its_declaration(changes, fragment):
    loss_fn = lossdsl.compile(CREDIT, filename="credit.loss")
    with pytest.raises(lossdsl.LossSpecError) as info:
        loss_fn(**credit_inputs(**changes))
    assert info.value.diagnostics[0].code == "E402"
    assert fragment in str(info.value)


def test_fixed_dimensions_are_checked():
    loss_fn = lossdsl.compile("inputs:\n  pred: logits[N, 3]\n  target: labels[N]\nloss = ce()")
    pred, target = torch.randn(4, 3), torch.randint(0, 3, (4,))
    torch.testing.assert_close(loss_fn(pred, target), F.cross_entropy(pred, target))
    with pytest.raises(lossdsl.LossSpecError, match="dimension 1 must be 3, got shape"):
        loss_fn(torch.randn(4, 5), target)


@pytest.mark.parametrize(
    ("src", "code", "line", "column", "fragment"),
    [
        ("inputs:\n  p: logits[N]\nloss = ce(pred=p)", "E104", 3, 8, "ce() (by default) reads input 'target', which is not declared"),
        ("inputs:\n  pred: logits[N]\n  target: labels[N]\nloss = ce(pred=prd)", "E104", 4, 16, "did you mean 'pred'?"),
        ("inputs:\n  pred: real[N]\n  target: labels[N]\nloss = ce()", "E204", 4, 8, "takes logits, but 'pred' is declared real (line 2)"),
        ("inputs:\n  pred: logits[N]\n  target: binary[N]\n  sex: labels[N]\nloss = fairness(dp_gap, group=sex)", "E204", 5, 31, "takes group, but 'sex' is declared labels"),
        ("inputs:\n  pred: logit[N]\nloss = mse()", "E106", 2, 3, "did you mean 'logits'?"),
        ("inputs:\n  y: real[N]\n  y: real[N]\nloss = soft_bound(y <= 1)", "E102", 3, 3, "declared twice"),
        ("inputs:\n  y: real[N] of 3\nloss = soft_bound(y <= 1)", "E204", 2, 3, "applies to group inputs"),
        ("inputs:\n  pred: logits[N]\n  target: binary[N]\n  sex: group[N] of 99999999999\n"
         "loss = fairness(dp_gap, group=sex)", "E205", 4, 3, "a group input has 1 to 65536 groups"),
        ("inputs:\n  pred: logits[N]\n  target: binary[N]\n  sex: group[N] of 0\n"
         "loss = fairness(dp_gap, group=sex)", "E205", 4, 3, "a group input has 1 to 65536 groups"),
        ("fairness(dp_gap, group=sex, groups=2147483648)", "E205", 1, 36, "less than or equal to 2147483647"),
        ("inputs:\n  y: real[N]\nloss = soft_bound(yy <= 1)", "E104", 3, 19, "did you mean 'y'?"),
        ("inputs:\n  y: real[N]\nloss = mean(abs(y)) + z", "E104", 3, 23, "undefined name 'z'"),
        ("loss = ce()\ny: real[N]", "E005", 2, 1, "outside an 'inputs:' block"),
    ],
)
def test_declaration_errors(src, code, line, column, fragment):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    diagnostic = info.value.diagnostics[0]
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == (code, line, column)
    assert fragment in str(info.value)


def test_unread_declaration_is_a_warning():
    plan = plan_for("inputs:\n  pred: real[N]\n  target: real[N]\n  extra: real[N]\nloss = mse()")
    assert [(d.code, d.span.line) for d in plan.warnings] == [("W003", 4)]


def test_declared_specs_format_and_reparse():
    spec = lossdsl.parse(CREDIT)
    assert lossdsl.parse(lossdsl.format(spec)) == spec
    assert lossdsl.format(spec).startswith("inputs:\n    pred: logits[N]\n")


def test_too_many_declared_groups_is_one_diagnostic():
    """The fairness term that reads the input does not repeat the declaration's error."""
    src = "inputs:\n  pred: logits[N]\n  target: binary[N]\n  sex: group[N] of 99999999999\nloss = fairness(dp_gap, group=sex)"
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    assert [(d.code, d.span.line) for d in info.value.diagnostics] == [("E205", 4)]
