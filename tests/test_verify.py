"""lossdsl verify and lossdsl explain, on the shipped specs and on a deliberately broken custom term."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import cli
from lossdsl.driver import plan_for
from lossdsl.registry import REGISTRY
from lossdsl.synthetic import synthetic_inputs
from lossdsl.verify import verify

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(ROOT.glob("specs/*.loss"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_spec_verifies(path):
    checks = verify(plan_for(path.read_text(), str(path)), steps=60)
    assert [c.name for c in checks if not c.passed] == []


def test_synthetic_inputs_follow_the_declarations():
    plan = plan_for("inputs:\n  pred: logits[N, C]\n  target: labels[N]\n  w: weight[N]\n  g: group[N] of 4\n"
                    "loss = ce(sample_weight=w) + fairness(dp_gap, group=g, pred=p1)\n".replace(", pred=p1", ""))
    inputs = synthetic_inputs(plan, batch=6)
    assert inputs["pred"].shape == (6, 3) and inputs["pred"].is_floating_point()
    assert inputs["target"].dtype == torch.int64 and int(inputs["target"].max()) < 3
    assert (inputs["w"] > 0).all() and int(inputs["g"].max()) < 4


@pytest.fixture
def broken_terms():
    @lossdsl.term("naive_bce")
    def naive_bce(pred, target):
        """BCE through log(sigmoid): -inf once a logit saturates (the classic bug)."""
        p = torch.sigmoid(pred)
        return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()

    @lossdsl.term("loud")
    def loud(pred):
        return 1e6 * pred.square().mean()

    yield
    del REGISTRY["naive_bce"], REGISTRY["loud"]


def test_verify_catches_a_broken_custom_term(broken_terms, tmp_path, capsys):
    path = tmp_path / "broken.loss"
    path.write_text("inputs:\n    pred: logits[N]\n    target: binary[N]\nloss = naive_bce()\n")
    checks = {c.name: c for c in verify(plan_for(path.read_text(), str(path)), steps=20)}
    assert checks["finite at ordinary inputs"].passed
    assert not checks["finite at extreme inputs (x1e4)"].passed
    assert cli.main(["verify", str(path), "--steps", "20"]) == 1
    out = capsys.readouterr().out
    assert "finite at extreme inputs (x1e4)  FAIL" in out and out.rstrip().endswith("1 failed")
    # The built-in term passes where the hand-written one fails.
    path.write_text("inputs:\n    pred: logits[N]\n    target: binary[N]\nloss = bce()\n")
    assert all(c.passed for c in verify(plan_for(path.read_text(), str(path)), steps=20))


def test_verify_flags_a_dominating_term(broken_terms, tmp_path):
    path = tmp_path / "loud.loss"
    path.write_text("inputs:\n    pred: logits[N]\n    target: binary[N]\nloss = bce() + loud()\n")
    balance = {c.name: c for c in verify(plan_for(path.read_text(), str(path)), steps=10)}["gradient balance"]
    assert not balance.passed and "loud dominates bce by more than 100x" in balance.detail


def test_verify_flags_non_finite_values(tmp_path, capsys):
    path = tmp_path / "log.loss"
    path.write_text("inputs:\n    y: real[N]\nloss = mean(log(y))\n")  # log of negative inputs
    assert cli.main(["verify", str(path), "--steps", "10"]) == 1
    assert "finite at ordinary inputs        FAIL" in capsys.readouterr().out


def test_undeclared_inputs_are_inferred_from_the_terms(capsys, tmp_path):
    path = tmp_path / "undeclared.loss"
    path.write_text("loss = ce() + 0.1 * fairness(fpr_gap, group=sex) + dice(pred=seg, target=mask)\n")
    inputs = synthetic_inputs(plan_for(path.read_text()))
    assert inputs["pred"].shape == (8,) and inputs["target"].dtype == torch.int64  # binary logits and labels
    assert inputs["sex"].dtype == torch.int64
    assert inputs["seg"].shape == (8, 3, 4, 4) and inputs["mask"].shape == (8, 4, 4)
    assert cli.main(["verify", str(path), "--steps", "20"]) == 0
    assert "all 6 checks passed" in capsys.readouterr().out


def test_inferred_inputs_that_do_not_fit_fail_with_advice(capsys, tmp_path):
    path = tmp_path / "classes.loss"
    path.write_text("loss = ce(weight=[1, 2, 3]) + focal(alpha=[0.1, 0.2, 0.3, 0.4])\n")  # 3 or 4 classes?
    assert cli.main(["verify", str(path), "--steps", "5"]) == 1
    assert "declare the inputs in an inputs: block" in capsys.readouterr().out


# Correct specs whose inputs must follow the terms' arguments (three classes from a weight list, a pred
# column per quantile, ...) and agree between the terms that share them.
UNDECLARED = [
    "bce(pos_weight=[1, 4, 9, 19])",
    "dice() + bce()",
    "quantile(q=[0.1, 0.5, 0.9])",
    "ce() + dice()",
    "mse() + dice()",
    "ce(weight=[1, 2, 3])",
    "ce(weight=[1, 2])",
    "focal(alpha=[0.2, 0.3, 0.5])",
    "focal(alpha=0.25) + bce(pos_weight=[1, 2])",
    "hinge() + ce(weight=[1, 2, 3])",
    "quantile(q=[0.1, 0.9]) + 0.5 * mae(pred=aux)",
    "fairness(dp_gap, group=(sex, race)) + bce()",
    "fairness(group_loss(ce(weight=[1, 2, 3])), group=site)",
    "kl(p=teacher, q=student) + ce(pred=student, target=target)",
]


@pytest.mark.parametrize("spec", UNDECLARED)
def test_verify_passes_correct_specs_without_an_inputs_block(spec, tmp_path, capsys):
    path = tmp_path / "spec.loss"
    path.write_text(spec + "\n")
    assert cli.main(["verify", str(path), "--steps", "20"]) == 0, capsys.readouterr().out
    assert "all 6 checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_spec_verifies_without_its_inputs_block(path, tmp_path):
    text = re.sub(r"^inputs:\n(?:[ \t]+.*\n)+", "", path.read_text(), flags=re.M)
    assert "inputs:" not in text
    checks = verify(plan_for(text), steps=60)
    assert [(c.name, c.detail) for c in checks if not c.passed] == []


@pytest.mark.parametrize(
    ("spec", "shapes"),
    [
        ("bce(pos_weight=[1, 4, 9, 19])", {"pred": ((8, 4), torch.float32), "target": ((8, 4), torch.int64)}),
        ("quantile(q=[0.1, 0.5, 0.9])", {"pred": ((8, 3), torch.float32), "target": ((8,), torch.float32)}),
        # bce needs targets of pred's shape, so dice takes float masks rather than class indices
        ("dice() + bce()", {"pred": ((8, 3, 4, 4), torch.float32), "target": ((8, 3, 4, 4), torch.float32)}),
        ("ce() + dice()", {"pred": ((8, 3, 4, 4), torch.float32), "target": ((8, 4, 4), torch.int64)}),
        ("ce(weight=[1, 2, 3, 4, 5])", {"pred": ((8, 5), torch.float32), "target": ((8,), torch.int64)}),
        ("focal(alpha=[0.2, 0.8])", {"pred": ((8, 2), torch.float32), "target": ((8,), torch.int64)}),
    ],
)
def test_synthetic_inputs_follow_the_terms_arguments(spec, shapes):
    inputs = synthetic_inputs(plan_for(spec))
    assert {name: (tuple(t.shape), t.dtype) for name, t in inputs.items()} == shapes


def test_synthetic_class_indices_stay_below_the_class_count():
    inputs = synthetic_inputs(plan_for("ce(weight=[1, 2, 3, 4, 5])"), batch=400)
    assert set(inputs["target"].tolist()) == {0, 1, 2, 3, 4}
    inputs = synthetic_inputs(plan_for("ce() + dice()"), batch=100)
    assert set(inputs["target"].unique().tolist()) == {0, 1, 2}  # dice's C = 3 classes
    masks = synthetic_inputs(plan_for("dice() + bce()"), batch=50)["target"]
    assert set(masks.unique().tolist()) == {0.0, 1.0}


def test_gradient_balance_lists_the_terms_only(tmp_path):
    """A constraint's value, violation and multiplier, and a let that adds terms up, are no terms;
    each term's norm is its gradient's with respect to the learned inputs, as torch computes it."""
    plan = plan_for("let fit = mse() + huber()\nsubject to mae() <= 0.1\nloss = fit + 0.5 * log_cosh()\n")
    balance = {c.name: c for c in verify(plan, steps=5)}["gradient balance"]
    inputs = synthetic_inputs(plan)
    pred, target = (inputs[n].clone().requires_grad_() for n in ("pred", "target"))
    residual = pred - target
    references = {
        "mse": F.mse_loss(pred, target),
        "huber": F.huber_loss(pred, target),
        "mae": F.l1_loss(pred, target),
        "log_cosh": torch.log(torch.cosh(residual)).mean(),
    }
    norms = {}
    for label, value in references.items():
        grads = torch.autograd.grad(value, (pred, target))
        norms[label] = float(torch.sqrt(sum(g.square().sum() for g in grads)))
    assert balance.passed
    assert balance.detail == ", ".join(f"{label} {norm:.3g}" for label, norm in norms.items())


def test_explain_shows_tree_terms_inputs_params_module_and_graph(capsys):
    assert cli.main(["explain", str(ROOT / "specs" / "credit.loss")]) == 0
    out = capsys.readouterr().out
    for section in ("== spec ==", "== typed tree ==", "== terms ==", "== inputs ==", "== params ==", "== module ==",
                    "== forward, traced with torch.fx on synthetic inputs =="):
        assert section in out
    assert "    param lam: Number" in out
    assert "    weight = balanced" in out and "    groups = 2" in out
    assert "sex: group[N]  read by fairness() at" in out
    assert "lam = 0.1 in [0, 10]" in out
    assert "torch.ops.aten.binary_cross_entropy_with_logits" in out or "torch.ops.aten" in out


def test_explain_traces_undeclared_specs_with_inferred_inputs(capsys, tmp_path):
    path = tmp_path / "a.loss"
    path.write_text("loss = mse() + 0.5 * mae()\n")
    assert cli.main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert "# arg0_1 = pred (8,), arg1_1 = target (8,)" in out and "torch.ops.aten.mse_loss" in out
    assert "pred: (not declared)  read by mse()" in out


@pytest.mark.parametrize("steps", ["0", "-3", "many"])
def test_verify_steps_must_be_positive(steps, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["verify", str(ROOT / "specs" / "credit.loss"), "--steps", steps])
    assert info.value.code == 2
    assert "expected a positive whole number" in capsys.readouterr().err


def test_inferred_group_codes_stay_below_the_terms_groups(capsys, tmp_path):
    """fairness(groups=K) reads codes in [0, K): the synthetic codes respect it."""
    plan = plan_for("fairness(dp_gap, group=sex, groups=2)")
    assert int(synthetic_inputs(plan)["sex"].max()) < 2
    path = tmp_path / "fair.loss"
    path.write_text("fairness(dp_gap, group=sex, groups=2)\n")
    assert cli.main(["verify", str(path), "--steps", "5"]) == 0
    assert cli.main(["explain", str(path)]) == 0


def test_declared_inputs_too_large_to_synthesise_fail_without_a_traceback(capsys, tmp_path):
    path = tmp_path / "huge.loss"
    path.write_text("inputs:\n  pred: logits[N, 100000, 100000]\n  target: labels[N]\nloss = ce()\n")
    assert cli.main(["verify", str(path), "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert "input 'pred' of shape (8, 100000, 100000) is too large for synthetic inputs" in out
    assert "declare the inputs" not in out  # they are declared
    assert cli.main(["explain", str(path)]) == 0
    assert "(not traced: input 'pred' of shape (8, 100000, 100000) is too large" in capsys.readouterr().out


def test_verify_checks_a_per_sample_loss_through_its_sum(capsys, tmp_path):
    """reduction=none gives one loss per sample: verify took its truth value (a traceback)."""
    path = tmp_path / "per_sample.loss"
    path.write_text("mse(reduction=none)\n")
    assert cli.main(["verify", str(path), "--steps", "5"]) == 0
    assert "all 6 checks passed" in capsys.readouterr().out
    plan = plan_for(path.read_text())
    inputs = synthetic_inputs(plan)
    expected = F.mse_loss(inputs["pred"], inputs["target"], reduction="none").sum()
    finite = {c.name: c for c in verify(plan, steps=5)}["finite at ordinary inputs"]
    assert finite.detail == f"loss {expected.item():.4g}"


def test_verify_says_whether_a_constraints_rates_run_over_a_window():
    from lossdsl.driver import plan_for
    from lossdsl.verify import verify

    unknown = verify(plan_for("loss = ce()\nsubject to fairness(eo_gap, group=sex) <= 0.02"), steps=5)
    known = verify(plan_for("loss = ce()\nsubject to fairness(eo_gap, group=sex, groups=2) <= 0.02"), steps=5)
    penalty = verify(plan_for("loss = ce() + fairness(eo_gap, group=sex)"), steps=5)
    assert "loss_fn.fit(sex=codes)" in unknown[-1].detail and unknown[-1].passed
    assert "a window over the known group count" in known[-1].detail
    assert penalty[-1].detail == "no fairness rate in a constraint"


# -- synthetic inputs of sequence terms: lengths, a class dimension other than 1, scalar inputs --------


RENAMED_CTC = "ctc(log_probs=lp, targets=y, input_lengths=frames, target_lengths=n)"


@pytest.mark.parametrize(("spec", "names"), [
    ("ctc()", ("log_probs", "targets", "input_lengths", "target_lengths")),
    (RENAMED_CTC, ("lp", "y", "frames", "n")),
    # declared inputs keep their shapes (T 9, S 4, C 5) and take lengths along them as well
    ("inputs:\n  lp: logits[9, N, 5]\n  y: labels[N, 4]\n  frames: labels[N]\n  n: labels[N]\nloss = " + RENAMED_CTC,
     ("lp", "y", "frames", "n")),
])
def test_ctc_gets_valid_synthetic_lengths(spec, names, tmp_path, capsys):
    inputs = synthetic_inputs(plan_for(spec))
    log_probs, targets, frames, lengths = (inputs[name] for name in names)
    steps, n, classes = log_probs.shape
    width = targets.shape[1]
    assert n == 8 and targets.shape == (n, width) and frames.shape == lengths.shape == (n,)
    # every sequence has all T frames, every target 1 to S labels, and T >= 2 S + 1: an alignment exists
    assert (frames == steps).all() and ((lengths >= 1) & (lengths <= width)).all() and steps >= 2 * width + 1
    assert int(targets.min()) >= 0 and int(targets.max()) < classes  # classes along log_probs' dim 2
    expected = F.ctc_loss(log_probs, targets, frames, lengths)
    assert torch.isfinite(expected)
    torch.testing.assert_close(lossdsl.compile(spec)(**inputs), expected, rtol=1e-5, atol=1e-5)
    path = tmp_path / "ctc.loss"
    path.write_text(spec if "\n" in spec else f"loss = {spec}\n")
    assert cli.main(["verify", str(path), "--steps", "20"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("seed", range(5))
def test_token_ce_labels_index_the_vocabulary_not_the_time_steps(seed):
    inputs = synthetic_inputs(plan_for("token_ce()"), seed=seed)
    pred, target = inputs["pred"], inputs["target"]
    batch, steps, vocabulary = pred.shape
    assert steps != vocabulary and target.shape == (batch, steps)  # T 4, V 3: a swapped dimension shows
    assert int(target.min()) >= 0 and int(target.max()) < vocabulary
    expected = F.cross_entropy(pred.reshape(-1, vocabulary), target.reshape(-1))
    torch.testing.assert_close(lossdsl.compile("token_ce()")(**inputs), expected)


def test_linear_ce_labels_index_every_row_of_the_head():
    inputs = synthetic_inputs(plan_for("linear_ce()"), batch=64)
    vocabulary = inputs["head"].shape[0]
    assert set(inputs["target"].tolist()) == set(range(vocabulary))  # all V classes, not 0/1 alone
    expected = F.cross_entropy(inputs["hidden"] @ inputs["head"].T, inputs["target"])
    torch.testing.assert_close(lossdsl.compile("linear_ce()")(**inputs), expected)


@pytest.mark.parametrize("spec", ["token_ce(num_items=n)",
                                  "inputs:\n  pred: logits[N, T, V]\n  target: labels[N, T]\n  n: weight[]\n"
                                  "loss = token_ce(num_items=n)"])
def test_a_scalar_input_is_synthesised_as_a_scalar(spec, tmp_path, capsys):
    inputs = synthetic_inputs(plan_for(spec))
    pred, target, count = inputs["pred"], inputs["target"], inputs["n"]
    assert count.shape == () and count > 0
    assert int(target.max()) < pred.shape[2]
    summed = F.cross_entropy(pred.reshape(-1, pred.shape[2]), target.reshape(-1), reduction="sum")
    torch.testing.assert_close(lossdsl.compile(spec)(**inputs), summed / count)
    path = tmp_path / "count.loss"
    path.write_text(spec + "\n")
    assert cli.main(["verify", str(path), "--steps", "20"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("spec", ["ctc()", "token_ce()", "token_ce(shift=true, normalize=sequences)",
                                  "linear_ce()", "linear_ce(bias=b, reduction=sum)"])
def test_sequence_terms_pass_verify_without_an_inputs_block(spec, tmp_path, capsys):
    path = tmp_path / "spec.loss"
    path.write_text(f"loss = {spec}\n")
    assert cli.main(["verify", str(path), "--steps", "20"]) == 0, capsys.readouterr().out
    assert "all 6 checks passed" in capsys.readouterr().out
