"""subject to with the defaults: the adaptive multiplier, audited fairness rates, and lossdsl.audit.

The dual update is checked against problems whose optimum and multipliers are known in closed
form (the KKT conditions), with and without noise; the audited values against fairlearn.
"""

import io
import warnings

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import mean_squared_error

import lossdsl
from lossdsl import duals
from lossdsl.plan import MULTIPLIER_CAP


def _descend(loss_fn, parameters, inputs_of, steps, lr=0.1, averaged=None):
    """Plain SGD on ``parameters``; the multipliers of the last quarter of the steps, averaged (and
    into ``averaged``, the parameters' means over those steps)."""
    optimizer = torch.optim.SGD(parameters, lr=lr)
    history, iterates = [], []
    for step in range(steps):
        optimizer.zero_grad()
        loss_fn(**inputs_of(step)).backward()
        optimizer.step()
        history.append(loss_fn.multipliers.clone())
        iterates.append(torch.cat([p.detach().flatten() for p in parameters]))
    if averaged is not None:
        averaged.append(torch.stack(iterates[-steps // 4:]).mean(0))
    return torch.stack(history[-steps // 4:]).mean(0)


def test_the_default_method_is_adaptive_and_adds_lam_times_the_excess():
    loss_fn = lossdsl.compile("mse()\nsubject to mae() <= 0.5 as err")
    assert loss_fn.plan.constraints[0].method == "adaptive"
    pred, target = torch.randn(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    loss_fn.multipliers[0] = 0.3
    excess = torch.nn.functional.l1_loss(pred, target) - 0.5
    got = loss_fn(pred, target)
    torch.testing.assert_close(got, torch.nn.functional.mse_loss(pred, target) + 0.3 * excess)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_the_multiplier_converges_to_the_price_of_the_bound(noise):
    """min (x - 2)^2 s.t. mean(x) <= 1: x = 1 and lam = -d/dx (x - 2)^2 = 2, also when each step
    sees the goal and the constrained value through noise."""
    torch.manual_seed(0)
    loss_fn = lossdsl.compile("mse(pred=x, target=goal)\nsubject to mean(x + eps) <= 1 as budget")
    x = torch.nn.Parameter(torch.zeros(64))

    def inputs(step):
        return {"x": x, "goal": 2 + noise * torch.randn(64), "eps": noise * torch.randn(64)}

    lam = _descend(loss_fn, [x], inputs, steps=3000, lr=0.05)
    assert float(x.detach().mean()) == pytest.approx(1.0, abs=0.03 + 0.03 * noise)
    assert float(lam[0]) == pytest.approx(2.0, rel=0.05 + 0.05 * noise)


def test_the_step_needs_no_scale_the_multiplier_grows_relative_to_its_size():
    """The same problem in units a thousand times larger: lam* = 2000, found in as many steps."""
    torch.manual_seed(0)
    loss_fn = lossdsl.compile("mse(pred=x, target=goal)\nsubject to mean(x) <= 1000")
    x = torch.nn.Parameter(torch.zeros(8))
    lam = _descend(loss_fn, [x], lambda step: {"x": x, "goal": torch.full((8,), 2000.0)}, steps=3000, lr=0.05)
    assert float(x.detach().mean()) == pytest.approx(1000.0, rel=0.01)
    assert float(lam[0]) == pytest.approx(2000.0, rel=0.05)


def test_two_constraints_that_interact_reach_the_kkt_point():
    """min (a - 1)^2 + (b - 1)^2 s.t. a + b <= 1, a - b >= 0.5: a = 0.75, b = 0.25, and
    2(a - 1) + l1 - l2 = 0, 2(b - 1) + l1 + l2 = 0 give l1 = 1, l2 = 0.5."""
    torch.manual_seed(0)
    loss_fn = lossdsl.compile(
        "mse(pred=a, target=one) + mse(pred=b, target=one)\n"
        "subject to mean(a + b) <= 1 as total_cap\nsubject to mean(a - b) >= 0.5 as spread"
    )
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    averaged = []
    lam = _descend(loss_fn, [a, b], lambda step: {"a": a, "b": b, "one": torch.ones(1)}, steps=4000, lr=0.05,
                   averaged=averaged)
    # The averaged iterate and multipliers are the KKT point; the last iterate chatters around it
    # (the damping reacts to a violation the size of its running scale: docs/constraints.md).
    torch.testing.assert_close(averaged[0], torch.tensor([0.75, 0.25]), atol=0.01, rtol=0)
    torch.testing.assert_close(lam, torch.tensor([1.0, 0.5]), atol=0.06, rtol=0)
    assert float(a.detach()) == pytest.approx(0.75, abs=0.05) and float(b.detach()) == pytest.approx(0.25, abs=0.05)


def test_a_soft_bound_as_a_constraint():
    """min (y - 3)^2 s.t. mean(max(0, y - 1)^2) <= 0.25: y = 1.5, lam = 2 (3 - 1.5) / (2 (1.5 - 1)) = 3."""
    torch.manual_seed(0)
    loss_fn = lossdsl.compile("mse(pred=y, target=goal)\nsubject to soft_bound(y <= 1) <= 0.25")
    y = torch.nn.Parameter(torch.zeros(4))
    lam = _descend(loss_fn, [y], lambda step: {"y": y, "goal": torch.full((4,), 3.0)}, steps=3000, lr=0.05)
    assert float(y.detach().mean()) == pytest.approx(1.5, abs=0.02)
    assert float(lam[0]) == pytest.approx(3.0, rel=0.05)


def test_a_constraint_that_holds_lets_its_multiplier_fall_to_zero():
    loss_fn = lossdsl.compile("mse()\nsubject to mae() <= 10")
    loss_fn.multipliers[0] = 0.5
    pred, target = torch.randn(8), torch.zeros(8)
    for _ in range(300):
        loss_fn(pred, target)
    assert float(loss_fn.multipliers[0]) == 0.0


def test_the_update_stays_finite_and_ignores_a_nan_violation():
    loss_fn = lossdsl.compile("mae()\nsubject to mse() >= 1e30 as huge")
    pred, target = torch.randn(8), torch.zeros(8)
    for _ in range(50):
        assert torch.isfinite(loss_fn(pred, target))
    assert 0 < float(loss_fn.multipliers[0]) <= MULTIPLIER_CAP
    before = (loss_fn.multipliers.clone(), loss_fn.dual_state.clone())
    loss_fn(torch.full((8,), float("nan")), target)
    torch.testing.assert_close(loss_fn.multipliers, before[0])
    torch.testing.assert_close(loss_fn.dual_state, before[1])


def test_eval_mode_moves_no_multiplier():
    loss_fn = lossdsl.compile("mse()\nsubject to mae() <= 0.1").eval()
    loss_fn(torch.randn(8), torch.zeros(8))
    assert float(loss_fn.multipliers[0]) == 0.0 and float(loss_fn.dual_state.abs().sum()) == 0.0


# Audited fairness rates.


def _batch(n=400, groups=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, (n,), generator=generator)
    group = torch.randint(0, groups, (n,), generator=generator)
    return logits, target, group


FAIRLEARN = {
    "fpr_gap": lambda y, p, g: MetricFrame(metrics=false_positive_rate, y_true=y, y_pred=p,
                                           sensitive_features=g).difference(),
    "tpr_gap": lambda y, p, g: MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=p,
                                           sensitive_features=g).difference(),
    "dp_gap": lambda y, p, g: demographic_parity_difference(y, p, sensitive_features=g),
    "eo_gap": lambda y, p, g: equalized_odds_difference(y, p, sensitive_features=g),
    "dp_ratio": lambda y, p, g: 1 - MetricFrame(metrics=selection_rate, y_true=y, y_pred=p,
                                                sensitive_features=g).ratio(),
}


@pytest.mark.parametrize("stat", sorted(FAIRLEARN))
def test_a_constraint_reads_the_hard_rates_and_differentiates_the_soft_ones(stat):
    logits, target, group = _batch(groups=3)
    constrained = lossdsl.compile(f"loss = ce()\nsubject to fairness({stat}, group=g, groups=3, window=ema(0)) <= 0.01 as c")
    soft = lossdsl.compile(f"fairness({stat}, group=g)")
    pred = logits.clone().requires_grad_()
    constrained(torch.stack([torch.zeros_like(pred), pred], 1), target, g=group)
    hard = (logits > 0).long().numpy()
    terms = constrained.last_terms
    assert float(terms["c"]) == pytest.approx(FAIRLEARN[stat](target.numpy(), hard, group.numpy()), abs=1e-12)
    torch.testing.assert_close(terms["c.surrogate"], soft(logits, target, g=group))


def test_the_gradient_is_the_batch_soft_statistics_even_where_the_hard_rates_disagree():
    """Two groups of four negatives whose soft and hard FPRs are ordered oppositely: group 0 has
    hard FPR 0.5 and soft FPR 0.5 * (sigmoid(3) + sigmoid(-0.1)) = 0.71; group 1 hard FPR 1 and soft
    FPR sigmoid(0.1 or 0.2) = 0.54. The value is the audited gap (1 - 0.5); the gradient is the
    soft gap's, which pushes group 0 down and group 1 up (the audited rates may come from a window
    that lags the model, so they do not aim the gradient)."""
    logits = torch.tensor([3.0, 3.0, -0.1, -0.1, 0.1, 0.1, 0.2, 0.2], dtype=torch.float64)
    target = torch.zeros(8, dtype=torch.long)
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pred = logits.clone().requires_grad_()
    loss_fn = lossdsl.compile("loss = ce()\nsubject to fairness(fpr_gap, group=g, groups=2, window=ema(0)) <= 0 as c")
    value, surrogate = loss_fn.terms[1](pred, group, target)
    value.backward()
    p = torch.sigmoid(logits)
    expected = p * (1 - p) / 4  # d rate_g / d logit_i for each of a group's four negatives
    expected[4:] *= -1  # d (rate_0 - rate_1)
    assert float(value.detach()) == pytest.approx(0.5)
    assert float(surrogate) == pytest.approx(float(p[:4].mean() - p[4:].mean()))
    torch.testing.assert_close(pred.grad, expected)
    soft_pred = logits.clone().requires_grad_()
    lossdsl.compile("fairness(fpr_gap, group=g)")(soft_pred, target, g=group).backward()
    torch.testing.assert_close(pred.grad, soft_pred.grad)


def test_fit_gives_the_group_count_and_a_window_of_one_epoch():
    logits, target, group = _batch(n=1000)
    loss_fn = lossdsl.compile("loss = ce()\nsubject to fairness(tpr_gap, group=sex) <= 0.05 as c")
    with pytest.warns(lossdsl.LossSpecWarning, match=r"loss_fn.fit\(sex=codes\)"):
        loss_fn(torch.stack([torch.zeros_like(logits), logits], 1), target, sex=group)
    loss_fn = lossdsl.compile("loss = ce()\nsubject to fairness(tpr_gap, group=sex) <= 0.05 as c")
    loss_fn.fit(sex=group)
    term = loss_fn.terms[1]
    assert term.num_groups == 2 and term.window_known and float(term.window_samples) == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for start in range(0, 1000, 100):  # one epoch of batches of 100
            rows = slice(start, start + 100)
            loss_fn(torch.stack([torch.zeros_like(logits[rows]), logits[rows]], 1), target[rows], sex=group[rows])
    # The window's sums weigh each batch by exp(-100 / 1000) per later batch, exactly.
    hard, positive = (logits > 0).double(), target.double()
    decay = np.exp(-100 / 1000)
    expected = torch.zeros(2, 2, dtype=torch.float64)
    for start in range(0, 1000, 100):
        rows = slice(start, start + 100)
        batch = torch.zeros(2, 2, dtype=torch.float64)
        batch.index_add_(0, group[rows], torch.stack([hard[rows] * positive[rows], positive[rows]], 1))
        expected = decay * expected + (1 - decay) * batch
    torch.testing.assert_close(term.running_sums, expected)


def test_known_groups_need_no_fit_and_give_no_warning():
    logits, target, group = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in ("loss = ce()\nsubject to fairness(fpr_gap, group=g, groups=2) <= 0.05",
                     "inputs:\n  pred: logits[N, 2]\n  target: labels[N]\n  g: group[N] of 2\nloss = ce()\nsubject to fairness(fpr_gap, group=g) <= 0.05",
                     "loss = ce() + fairness(fpr_gap, group=g)"):  # a penalty reads soft rates, no window
            lossdsl.compile(spec)(torch.stack([torch.zeros_like(logits), logits], 1), target, g=group)
    term = lossdsl.compile("loss = ce()\nsubject to fairness(fpr_gap, group=g, groups=2) <= 0.05").terms[1]
    assert term.momentum == pytest.approx(0.95)  # about 20 batches, without fit's data size


@pytest.mark.parametrize("spec", [
    "loss = ce()\nsubject to fairness(fpr_gap, group=g, hard=false) <= 0.05 as c",
    "let f = fairness(fpr_gap, group=g)\nloss = ce() + f\nsubject to f <= 0.05 as c",
])
def test_hard_false_or_a_term_the_objective_also_reads_stays_soft(spec):
    logits, target, group = _batch()
    loss_fn = lossdsl.compile(spec)
    loss_fn(torch.stack([torch.zeros_like(logits), logits], 1), target, g=group)
    soft = lossdsl.compile("fairness(fpr_gap, group=g)")(logits, target, g=group)
    torch.testing.assert_close(loss_fn.last_terms["c"], soft)
    torch.testing.assert_close(loss_fn.last_terms["c.surrogate"], soft)


def test_the_audited_state_survives_state_dict_and_eval_mode_changes_it_not():
    logits, target, group = _batch(n=512, groups=3)
    spec = "loss = ce()\nsubject to fairness(eo_gap, group=g) <= 0.02 as eo"
    pred = torch.stack([torch.zeros_like(logits), logits], 1)
    trained = lossdsl.compile(spec).fit(g=group)
    for start in range(0, 256, 64):
        trained(pred[start:start + 64], target[start:start + 64], g=group[start:start + 64])
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    resumed = lossdsl.compile(spec)  # not fitted: the checkpoint brings the count and the window
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
    for start in range(256, 512, 64):
        rows = slice(start, start + 64)
        torch.testing.assert_close(resumed(pred[rows], target[rows], g=group[rows]),
                                   trained(pred[rows], target[rows], g=group[rows]))
    torch.testing.assert_close(resumed.multipliers, trained.multipliers)
    resumed.eval()
    before = {k: v.clone() for k, v in resumed.state_dict().items()}
    resumed(pred[:64], target[:64], g=group[:64])
    for key, value in before.items():
        torch.testing.assert_close(resumed.state_dict()[key], value)


# lossdsl.audit


@pytest.mark.parametrize("stat", sorted(FAIRLEARN))
@pytest.mark.parametrize("chunk_size", [97, 65536])
def test_audit_equals_fairlearn_over_the_whole_data(stat, chunk_size):
    logits, target, group = _batch(n=3000, groups=4, seed=1)
    codes = group * 7 - 5  # sparse and negative: ranked once over all rows
    loss_fn = lossdsl.compile(f"loss = ce()\nsubject to fairness({stat}, group=g) <= 0.05 as c")
    report = lossdsl.audit(loss_fn, torch.stack([torch.zeros_like(logits), logits], 1), target, g=codes,
                           chunk_size=chunk_size)
    expected = FAIRLEARN[stat](target.numpy(), (logits > 0).long().numpy(), codes.numpy())
    assert report.constraints["c"].value == pytest.approx(expected, abs=1e-12)
    assert report.constraints["c"].holds == (expected <= 0.05)
    assert report.terms["ce"] == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target.double())), rel=1e-9)
    assert report.rows == 3000


def test_audit_with_sample_weights_group_loss_and_known_groups():
    logits, target, group = _batch(n=2000, groups=3, seed=2)
    weight = torch.rand(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.randn(2000, dtype=torch.float64)
    loss_fn = lossdsl.compile(
        "loss = mse(pred=r, target=y)\n"
        "subject to fairness(fpr_gap, group=g, groups=3, sample_weight=w) <= 0.1 as fpr\n"
        "subject to fairness(group_loss(mse(pred=r, target=y)), group=g) <= 2 as worst"
    )
    report = lossdsl.audit(loss_fn, pred=logits, target=target, g=group, w=weight, r=logits, y=y, chunk_size=333)
    hard = (logits > 0).long().numpy()
    fpr = MetricFrame(metrics=false_positive_rate, y_true=target.numpy(), y_pred=hard, sensitive_features=group.numpy(),
                      sample_params={"sample_weight": weight.numpy()}).difference()
    worst = MetricFrame(metrics=mean_squared_error, y_true=y.numpy(), y_pred=logits.numpy(),
                        sensitive_features=group.numpy()).group_max()
    assert report.constraints["fpr"].value == pytest.approx(fpr, abs=1e-12)
    assert report.constraints["worst"].value == pytest.approx(worst, rel=1e-9)
    assert report.holds == (fpr <= 0.1 and worst <= 2)
    assert "fpr" in str(report) and "worst" in str(report)


def test_audit_changes_no_state_and_refuses_what_is_not_a_loss():
    logits, target, group = _batch()
    loss_fn = lossdsl.compile("loss = ce()\nsubject to fairness(fpr_gap, group=g) <= 0.05 as c").fit(g=group)
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    lossdsl.audit(loss_fn, torch.stack([torch.zeros_like(logits), logits], 1), target, g=group)
    for key, value in before.items():
        torch.testing.assert_close(loss_fn.state_dict()[key], value)
    assert loss_fn.training
    with pytest.raises(TypeError):
        lossdsl.audit(torch.nn.MSELoss(), logits, target)
    with pytest.raises(TypeError):
        lossdsl.audit(loss_fn, logits, target, g=group, chunk_size=0)
    with pytest.raises(lossdsl.LossSpecError, match="E401|missing|'g'"):
        lossdsl.audit(loss_fn, logits, target)


def test_adaptive_settings_are_documented_numbers():
    assert duals.METHODS["adaptive"][2] == duals.ADAPTIVE.lr


def test_an_audited_constraint_compiles_fullgraph_and_matches_eager():
    """The audited rates, the fitted window and the adaptive update add no graph break. Dynamo's
    caches are cleared after (LossModule.forward's recompile limit)."""
    logits, target, group = _batch(n=256, groups=3)
    pred = torch.stack([torch.zeros_like(logits), logits], 1).float()
    spec = "loss = ce()\nsubject to fairness(eo_gap, group=g) <= 0.01 as c"
    eager_fn, source = lossdsl.compile(spec).fit(g=group), lossdsl.compile(spec).fit(g=group)
    compiled_fn = torch.compile(source, fullgraph=True)
    try:
        for start in range(0, 256, 64):
            rows = slice(start, start + 64)
            torch.testing.assert_close(compiled_fn(pred[rows], target[rows], g=group[rows]),
                                       eager_fn(pred[rows], target[rows], g=group[rows]))
            torch.testing.assert_close(source.multipliers, eager_fn.multipliers)
            torch.testing.assert_close(source.terms[1].running_sums, eager_fn.terms[1].running_sums)
    finally:
        torch.compiler.reset()


@pytest.mark.parametrize("copy", ["pickle", "deepcopy"])
def test_a_fitted_window_survives_pickle_and_deepcopy(copy):
    import copy as copying
    import pickle

    logits, target, group = _batch(n=300, groups=3)
    pred = torch.stack([torch.zeros_like(logits), logits], 1)
    original = lossdsl.compile("loss = ce()\nsubject to fairness(eo_gap, group=g) <= 0.02 as c").fit(g=group)
    original(pred[:100], target[:100], g=group[:100])
    copied = pickle.loads(pickle.dumps(original)) if copy == "pickle" else copying.deepcopy(original)
    assert copied.terms[1].num_groups == 3 and copied.terms[1].window_known
    for start in (100, 200):
        rows = slice(start, start + 100)
        torch.testing.assert_close(copied(pred[rows], target[rows], g=group[rows]),
                                   original(pred[rows], target[rows], g=group[rows]))
    torch.testing.assert_close(copied.terms[1].running_sums, original.terms[1].running_sums)


def test_window_warning_false_silences_the_warning_and_audited_terms_lists_the_term():
    logits, target, group = _batch(n=64)
    loss_fn = lossdsl.compile("loss = ce()\nsubject to fairness(tpr_gap, group=sex) <= 0.05 as c")
    assert loss_fn.audited_terms == (1,)
    loss_fn.window_warning = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(torch.stack([torch.zeros_like(logits), logits], 1), target, sex=group)


@pytest.mark.parametrize("window", [1.0, 10.0, 1000.0])
def test_the_default_rule_slows_to_the_window_of_its_measurement(window):
    """From rest, a violated constraint's first update moves the integral by rate * e * unit with
    e = 1 (the running scale is |g| itself) and rate = min(lr, per_window / W)."""
    settings = duals.ADAPTIVE
    rule = duals.rule_for("adaptive", settings.lr, equality=False)
    state = torch.zeros(duals.STATE_SIZE)
    for given in (window, torch.tensor(window)):
        _, new_state = rule.update(torch.zeros(()), torch.tensor(0.3), state, given)
        expected = min(settings.lr, settings.per_window / window) * settings.unit
        # rel 1e-4: the bias correction 1 - 0.999 ** 1 is taken in float32 (0.00099998713: 1.3e-5 off)
        assert float(new_state[2]) == pytest.approx(expected, rel=1e-4)
    # The overrides take the step they are given, whatever the window.
    plain = duals.rule_for("lagrangian", 0.5, equality=False)
    lam, _ = plain.update(torch.zeros(()), torch.tensor(0.3), state, torch.tensor(window))
    assert float(lam) == pytest.approx(0.15)


@pytest.mark.parametrize("how", ["fit", "groups", "unknown"])
def test_a_fairness_constraint_tells_the_rule_how_many_updates_its_window_spans(how):
    """fit on N rows: batches of n decay the window by exp(-n / N), about N / n updates; groups=K
    without fit: ema(0.95), 20 updates; an unknown count: each batch alone, 1. The first violated
    update's integral step is min(lr, per_window / W) * unit, in the generated forward and in the
    reference one alike."""
    rows, batch = 10_000, 250
    logits, target, group = _batch(n=rows)
    extra = ", groups=2" if how == "groups" else ""
    spec = f"loss = ce()\nsubject to fairness(tpr_gap, group=sex{extra}) <= 0 as c"
    expected_window = {"fit": 1 / (1 - np.exp(-batch / rows)), "groups": 1 / (1 - 0.95), "unknown": 1.0}[how]
    for reference in (False, True):
        loss_fn = lossdsl.compile(spec)
        if how == "fit":
            loss_fn.fit(sex=group)
        forward = (lambda *a, **k: type(loss_fn).forward(loss_fn, *a, **k)) if reference else loss_fn
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lossdsl.LossSpecWarning)
            forward(torch.stack([torch.zeros_like(logits[:batch]), logits[:batch]], 1), target[:batch], sex=group[:batch])
        assert float(loss_fn.terms[1].window_updates) == pytest.approx(expected_window, rel=1e-6)
        step = min(duals.ADAPTIVE.lr, duals.ADAPTIVE.per_window / expected_window) * duals.ADAPTIVE.unit
        if float(loss_fn.last_terms["c"]) > 0:
            assert float(loss_fn.dual_state[0, 2]) == pytest.approx(step, rel=1e-4)
        # Rewritten by every training call, not saved: checkpoints keep their keys.
        assert "terms.1.window_updates" not in loss_fn.state_dict()


def test_a_constraint_over_two_windowed_terms_takes_the_longer_window():
    logits, target, group = _batch(n=4000)
    spec = ("loss = ce()\nsubject to fairness(tpr_gap, group=sex) + fairness(fpr_gap, group=sex, groups=2, window=ema(0.5))"
            " <= 0 as c")
    pred = torch.stack([torch.zeros_like(logits[:200]), logits[:200]], 1)
    states = []
    for reference in (False, True):
        loss_fn = lossdsl.compile(spec).fit(sex=group)
        forward = (lambda *a, **k: type(loss_fn).forward(loss_fn, *a, **k)) if reference else loss_fn
        forward(pred, target[:200], sex=group[:200])
        windows = [float(loss_fn.terms[i].window_updates) for i in (1, 2)]
        assert windows == pytest.approx([1 / (1 - np.exp(-200 / 4000)), 2.0], rel=1e-6)
        states.append(loss_fn.dual_state.clone())
        step = min(duals.ADAPTIVE.lr, duals.ADAPTIVE.per_window / max(windows)) * duals.ADAPTIVE.unit
        assert float(loss_fn.dual_state[0, 2]) == pytest.approx(step, rel=1e-4)
    torch.testing.assert_close(states[0], states[1], rtol=0, atol=0)
