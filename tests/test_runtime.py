"""The compiled module: call conventions, last_terms, state, input errors, torch.compile."""

import copy

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.driver import plan_for

CARD = "ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)"


def card_inputs(n=64, groups=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "pred": torch.randn(n, generator=g, dtype=dtype),
        "target": torch.randint(0, 2, (n,), generator=g),
        "sex": torch.randint(0, groups, (n,), generator=g),
        "y": (torch.randn(n, generator=g) * 100).to(dtype),
    }


def test_positional_pred_and_target_equal_keywords():
    loss_fn = lossdsl.compile("mse()")
    pred, target = torch.randn(8), torch.randn(8)
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target))
    torch.testing.assert_close(loss_fn(pred=pred, target=target), F.mse_loss(pred, target))


def test_last_terms_labels_lets_and_repeated_terms():
    loss_fn = lossdsl.compile(
        "let data = mse()\nlet both = mae() + mae(pred=aux)\nloss = data + 0.5 * both + huber(pred=aux)"
    )
    pred, target, aux = torch.randn(10), torch.randn(10), torch.randn(10)
    total = loss_fn(pred=pred, target=target, aux=aux)
    terms = loss_fn.last_terms
    assert list(terms) == ["data", "mae_1", "mae_2", "huber", "both", "total"]
    torch.testing.assert_close(terms["data"], F.mse_loss(pred, target))
    torch.testing.assert_close(terms["mae_1"], F.l1_loss(pred, target))
    torch.testing.assert_close(terms["mae_2"], F.l1_loss(aux, target))
    torch.testing.assert_close(terms["both"], terms["mae_1"] + terms["mae_2"])
    expected = F.mse_loss(pred, target) + 0.5 * (F.l1_loss(pred, target) + F.l1_loss(aux, target)) + F.huber_loss(
        aux, target
    )
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(terms["total"], expected)
    assert not any(value.requires_grad for value in terms.values())


def test_arithmetic_of_losses_matches_hand_written():
    pred, target = torch.randn(12, requires_grad=True), torch.randn(12)
    loss_fn = lossdsl.compile("(mse() - mae() / 4) * 2 + -huber() + 3 * 2 * mae()")
    got = loss_fn(pred, target)
    expected = (F.mse_loss(pred, target) - F.l1_loss(pred, target) / 4) * 2 - F.huber_loss(pred, target) + 6 * F.l1_loss(
        pred, target
    )
    torch.testing.assert_close(got, expected)
    (grad,) = torch.autograd.grad(got, pred)
    (expected_grad,) = torch.autograd.grad(expected, pred)
    torch.testing.assert_close(grad, expected_grad)


def test_a_let_used_twice_is_computed_once():
    loss_fn = lossdsl.compile("let data = mse()\nloss = data + 0.5 * data")
    assert len(loss_fn.terms) == 1
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(loss_fn(pred, target), 1.5 * F.mse_loss(pred, target))


def test_unused_let_is_a_warning_and_not_computed():
    plan = plan_for("let unused = mae(pred=other)\nloss = mse()")
    assert [d.code for d in plan.warnings] == ["W001"]
    loss_fn = lossdsl.compile("let unused = mae(pred=other)\nloss = mse()")
    assert loss_fn.inputs == ("pred", "target")


def test_inputs_in_first_use_order():
    assert lossdsl.compile(CARD).inputs == ("pred", "target", "sex", "y")
    assert lossdsl.compile("mse(pred=a, target=b) + soft_bound(c - a >= 0)").inputs == ("a", "b", "c")


def test_extra_inputs_are_ignored():
    loss_fn = lossdsl.compile("mse()")
    pred, target = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(loss_fn(pred, target, unused=torch.zeros(3)), F.mse_loss(pred, target))


def test_plans_are_cached_and_modules_are_fresh():
    assert plan_for(CARD) is plan_for(CARD)
    first, second = lossdsl.compile(CARD), lossdsl.compile(CARD)
    assert first is not second
    first(**card_inputs())
    assert first.terms[0].class_counts.sum() == 64
    assert second.terms[0].class_counts.numel() == 0  # untouched


def test_float64_follows_the_inputs():
    inputs = card_inputs(dtype=torch.float64)
    loss = lossdsl.compile(CARD)(**inputs)
    assert loss.dtype == torch.float64


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "a.loss"
    path.write_text("# comment\nlet data = mse()\nloss = data\n")
    loss_fn = lossdsl.load(path)
    pred, target = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target))


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.loss"
    path.write_text("loss = mse() +\n")
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(path)
    assert str(info.value).startswith(f"{path}:1:")
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(tmp_path / "missing.loss")
    assert info.value.diagnostics[0].code == "E010"


PARAMS_SPEC = """
param lam = 0.1 in [0, 10]
param eps = 0.05
let data = ce(label_smoothing=eps)
loss = data + lam * 2 * mse(pred=y, target=t) - mae(pred=y, target=t) / (lam + 1)
"""


@pytest.mark.parametrize("overrides", [{}, {"lam": 0.5}, {"lam": 3, "eps": 0.2}])
def test_params_weigh_terms_and_set_term_arguments(overrides):
    values = {"lam": 0.1, "eps": 0.05, **overrides}
    loss_fn = lossdsl.compile(PARAMS_SPEC, params=overrides)
    assert loss_fn.params == values
    pred, labels = torch.randn(6, 3), torch.randint(0, 3, (6,))
    y, t = torch.randn(6), torch.randn(6)
    expected = (
        F.cross_entropy(pred, labels, label_smoothing=values["eps"])
        + values["lam"] * 2 * F.mse_loss(y, t)
        - F.l1_loss(y, t) / (values["lam"] + 1)
    )
    torch.testing.assert_close(loss_fn(pred, labels, y=y, t=t), expected)


@pytest.mark.parametrize(
    ("overrides", "code", "fragment"),
    [
        ({"lamb": 1.0}, "E105", "did you mean 'lam'?"),
        ({"lam": 11}, "E205", "outside its range [0, 10]"),
        ({"lam": "0.3"}, "E204", "takes a finite number"),
        ({"eps": 1.5}, "E205", "'label_smoothing' of ce() is param 'eps' = 1.5"),
    ],
)
def test_bad_param_overrides(overrides, code, fragment):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(PARAMS_SPEC, params=overrides)
    assert info.value.diagnostics[0].code == code
    assert fragment in str(info.value)


def test_load_takes_param_overrides(tmp_path):
    path = tmp_path / "p.loss"
    path.write_text("param w = 1.0\nloss = w * mse()\n")
    pred, target = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(lossdsl.load(path, params={"w": 4.0})(pred, target), 4 * F.mse_loss(pred, target))


# --- input errors name the input, the term and the spec line ---


def test_missing_input_names_the_reader_and_suggests():
    loss_fn = lossdsl.compile("let data = mse()\nloss = data + fairness(dp_gap, group=sex)", filename="f.loss")
    inputs = {"pred": torch.randn(4), "target": torch.randn(4), "sexx": torch.zeros(4, dtype=torch.long)}
    with pytest.raises(lossdsl.LossSpecError) as info:
        loss_fn(**inputs)
    message = str(info.value)
    assert info.value.diagnostics[0].code == "E401"
    assert "missing input 'sex'" in message
    assert "fairness() at f.loss:2:15" in message
    assert "did you mean 'sexx'?" in message


def test_non_tensor_input():
    with pytest.raises(lossdsl.LossSpecError, match=r"input 'target' \(read by mse\(\) at <spec>:1:1\) must be a torch.Tensor, got list"):
        lossdsl.compile("mse()")(torch.zeros(2), [0.0, 1.0])


@pytest.mark.parametrize(
    ("spec", "inputs", "fragment"),
    [
        ("mse()", {"pred": torch.zeros(3), "target": torch.zeros(4)}, "input 'target' of mse() at <spec>:1:1: shape (4,)"),
        ("mse()", {"pred": torch.zeros(3, dtype=torch.long), "target": torch.zeros(3)}, "input 'pred' of mse()"),
        ("ce()", {"pred": torch.zeros(4, 3), "target": torch.zeros(4)}, "input 'target' of ce() at <spec>:1:1: logits (4, 3) need integer class indices of shape (4,)"),
        ("ce()", {"pred": torch.zeros(4, 3), "target": torch.zeros(5, dtype=torch.long)}, "need integer class indices of shape (4,)"),
        ("ce()", {"pred": torch.zeros(4), "target": torch.zeros(5, dtype=torch.long)}, "binary logits (4,) need 0/1 targets"),
        ("ce(weight=[1, 2, 3])", {"pred": torch.zeros(4, 2), "target": torch.zeros(4, dtype=torch.long)}, "weight has 3 entries"),
        ("bce(pos_weight=[1, 2, 3])", {"pred": torch.zeros(4, 2), "target": torch.zeros(4, 2)}, "pos_weight has 3 entries"),
        ("\nsoft_bound(a <= b)", {"a": torch.zeros(3), "b": torch.zeros(4)}, "input 'b' of soft_bound() at <spec>:2:1"),
    ],
)
def test_mis_shaped_inputs(spec, inputs, fragment):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec)(**inputs)
    assert fragment in str(info.value)
    assert info.value.diagnostics[0].code == "E402"


# --- state ---


def test_balanced_counts_survive_state_dict_and_deepcopy():
    trained = lossdsl.compile(CARD)
    trained(**card_inputs(seed=1))
    trained(**card_inputs(seed=2))
    state = trained.state_dict()
    assert list(state) == ["terms.0.class_counts"]
    restored = lossdsl.compile(CARD)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.terms[0].class_counts, trained.terms[0].class_counts)
    trained.eval(), restored.eval()
    inputs = card_inputs(seed=3)
    torch.testing.assert_close(restored(**inputs), trained(**inputs))
    torch.testing.assert_close(copy.deepcopy(trained)(**inputs), trained(**inputs))


def test_eval_mode_changes_no_state():
    loss_fn = lossdsl.compile(CARD)
    loss_fn(**card_inputs(seed=1))
    before = loss_fn.terms[0].class_counts.clone()
    loss_fn.eval()
    loss_fn(**card_inputs(seed=2))
    torch.testing.assert_close(loss_fn.terms[0].class_counts, before)


# --- torch.compile ---


@pytest.mark.parametrize("fullgraph", [True, False])
def test_torch_compile_matches_eager(fullgraph):
    # Without fullgraph, dynamo converts each frame it enters; on the look-up of loss_fn.forward (a
    # descriptor's __get__) it recursed until RecursionError.
    inputs = card_inputs(n=48)
    eager_fn, compiled_source = lossdsl.compile(CARD), lossdsl.compile(CARD)
    compiled_fn = torch.compile(compiled_source, fullgraph=fullgraph)
    for step in range(2):  # the second call reuses the graph with updated class counts
        inputs = card_inputs(n=48, seed=step)
        pred_eager = inputs["pred"].clone().requires_grad_()
        pred_compiled = inputs["pred"].clone().requires_grad_()
        expected = eager_fn(**{**inputs, "pred": pred_eager})
        got = compiled_fn(**{**inputs, "pred": pred_compiled})
        torch.testing.assert_close(got, expected)
        (grad_expected,) = torch.autograd.grad(expected, pred_eager)
        (grad_got,) = torch.autograd.grad(got, pred_compiled)
        torch.testing.assert_close(grad_got, grad_expected)
        torch.testing.assert_close(compiled_source.terms[0].class_counts, eager_fn.terms[0].class_counts)
        assert set(compiled_source.last_terms) == {"ce", "fairness", "soft_bound", "total"}


@pytest.mark.parametrize("fullgraph", [False, True])
def test_a_compiled_training_step_that_calls_the_loss_matches_eager(fullgraph):
    loss_fn = lossdsl.compile(CARD)
    model = torch.nn.Linear(4, 1)
    inputs = card_inputs(n=48)
    features = torch.randn(48, 4, generator=torch.Generator().manual_seed(5))

    def step(features):
        return loss_fn(**{**inputs, "pred": model(features)[:, 0]})

    expected = step(features)
    (expected_grad,) = torch.autograd.grad(expected, model.weight)
    got = torch.compile(step, fullgraph=fullgraph)(features)  # the loss traced inside the caller's graph
    (got_grad,) = torch.autograd.grad(got, model.weight)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)

FRESH_PROCESS_COMPILES = """
import sys, torch, lossdsl
modules = [lossdsl.compile("ce() + 0.1 * fairness(fpr_gap, group=sex)") for _ in range(3)]
assert "torch._dynamo" not in sys.modules, "building a module loaded dynamo"
g = torch.Generator().manual_seed(0)
x, y, s = torch.randn(64, generator=g), torch.randint(0, 2, (64,), generator=g), torch.randint(0, 2, (64,), generator=g)
expected = modules[0](x, y, sex=s)
modules[1].compile()  # nn.Module.compile: no eager call before its first compiled one
compiled = torch.compile(modules[2])
for got in (modules[1](x, y, sex=s), compiled(x, y, sex=s)):
    torch.testing.assert_close(got, expected)
print("ok")
"""


def test_a_fresh_process_compiles_without_loading_dynamo_first(tmp_path):
    # Building a module does not import torch._dynamo (1.6 s); once torch.compile or
    # LossModule.compile has, neither recurses on the look-up of forward.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS_COMPILES], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")

NEW_FEATURES = {  # today's features under torch.compile(fullgraph=True): spec -> inputs
    "soft_bound(not (0 <= y <= 1)) + soft_bound(0 <= y <= 1 implies z <= 0, penalty=hinge)": "yz",
    "fairness(tpr_gap, group=g, groups=3, agg=smoothmax(0.1), hard=true) + fairness(dp_ratio, group=g, agg=mean)": "pg",
    "fairness(group_loss_gap(huber(delta=2)), group=g, groups=3)": "pg",
}


@pytest.mark.parametrize("spec", NEW_FEATURES)
def test_logic_agg_hard_and_group_loss_compile_fullgraph(spec):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "y": torch.randn(24, generator=generator), "z": torch.randn(24, generator=generator),
        "pred": torch.randn(24, generator=generator), "target": torch.randint(0, 2, (24,), generator=generator),
        "g": torch.arange(24) % 3,
    }
    eager_fn = lossdsl.compile(spec)
    compiled_fn = torch.compile(lossdsl.compile(spec), fullgraph=True)
    inputs = {name: tensors[name] for name in eager_fn.inputs}
    leaf = "y" if NEW_FEATURES[spec] == "yz" else "pred"
    eager_leaf, compiled_leaf = inputs[leaf].clone().requires_grad_(), inputs[leaf].clone().requires_grad_()
    expected = eager_fn(**{**inputs, leaf: eager_leaf})
    got = compiled_fn(**{**inputs, leaf: compiled_leaf})
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, compiled_leaf)[0], torch.autograd.grad(expected, eager_leaf)[0])
