"""lossdsl.watch: per-term gradient shares, and the warnings on runs that go wrong."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.monitor import Check


def _fairness_data(n: int = 256):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=gen)
    g = torch.randint(0, 2, (n,), generator=gen)
    y = ((x[:, 0] + 1.5 * g + 0.3 * torch.randn(n, generator=gen)) > 0.7).long()
    return torch.cat([x, g[:, None].float()], dim=1), y, g


def _train(spec: str, steps: int, every: int = 1):
    torch.manual_seed(0)
    x, y, g = _fairness_data()
    model = torch.nn.Linear(6, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = lossdsl.compile(spec)
    monitor = lossdsl.watch(loss_fn, every=every)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            loss = loss_fn(model(x)[:, 0], y, g=g)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return monitor, [w for w in caught if issubclass(w.category, lossdsl.LossSpecWarning)]


def test_the_norms_are_each_weighted_terms_gradient_wrt_pred() -> None:
    x, y, g = _fairness_data()
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    loss_fn = lossdsl.compile("ce() + 0.1*fairness(dp_gap, group=g)")
    monitor = lossdsl.watch(loss_fn, every=1)
    pred = model(x)[:, 0]
    loss_fn(pred, y, g=g)
    check = monitor.history[0]
    # By hand: F.binary_cross_entropy_with_logits, and the soft selection-rate gap times 0.1.
    ce_grad, = torch.autograd.grad(F.binary_cross_entropy_with_logits(pred, y.float()), pred, retain_graph=True)
    p = torch.sigmoid(pred)
    gap = p[g == 1].mean() - p[g == 0].mean()
    fair_grad, = torch.autograd.grad(0.1 * gap.abs(), pred)
    assert check.coefficients == {"ce": 1.0, "fairness": pytest.approx(0.1)}
    assert check.norms["ce"] == pytest.approx(ce_grad.norm().item(), rel=1e-5)
    assert check.norms["fairness"] == pytest.approx(fair_grad.norm().item(), rel=1e-5)
    whole = ce_grad.norm().item() + fair_grad.norm().item()
    assert check.shares["fairness"] == pytest.approx(fair_grad.norm().item() / whole, rel=1e-5)
    assert check.total == pytest.approx(loss_fn.last_terms["total"].item())


def test_several_outputs_count_together() -> None:
    """A VAE's loss reads three model outputs: each term's norm is over all of them."""
    gen = torch.Generator().manual_seed(1)
    recon, x = torch.rand(8, 6, generator=gen, requires_grad=True), torch.rand(8, 6, generator=gen)
    mu, logvar = torch.randn(8, 2, generator=gen, requires_grad=True), torch.randn(8, 2, generator=gen, requires_grad=True)
    loss_fn = lossdsl.compile("mse(pred=recon, target=x) + 0.5*kl_normal(mu=mu, logvar=logvar)")
    monitor = lossdsl.watch(loss_fn)
    loss_fn(recon=recon, x=x, mu=mu, logvar=logvar)
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(1).mean()
    grads = torch.autograd.grad(0.5 * kl, (mu, logvar))
    expected = math.sqrt(sum(g.square().sum().item() for g in grads))
    assert monitor.history[0].norms["kl_normal"] == pytest.approx(expected, rel=1e-5)
    mse_grad, = torch.autograd.grad(F.mse_loss(recon, x), recon)
    assert monitor.history[0].norms["mse"] == pytest.approx(mse_grad.norm().item(), rel=1e-5)


def test_a_fairness_weight_far_too_strong_is_flagged() -> None:
    monitor, caught = _train("ce() + 1000*fairness(dp_gap, group=g)", steps=6)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("fairness() at <spec>:1:13 (`ce() + 1000*fairness(dp_gap, group=g)`): this auxiliary term")
    assert "drowns the task" in message
    assert all(check.shares["fairness"] > 0.9 for check in monitor.history)
    assert "1 warning (dominates: fairness)" in monitor.summary()


def test_a_good_fairness_weight_stays_quiet() -> None:
    monitor, caught = _train("ce() + 0.1*fairness(dp_gap, group=g)", steps=6)
    assert caught == []
    assert monitor.warnings == []
    assert all(check.shares["fairness"] < 0.5 for check in monitor.history)
    assert monitor.summary().startswith("lossdsl.watch: 6 checks over 6 training calls; mean gradient share ce ")
    assert monitor.summary().endswith("; no warnings")


def test_every_k_and_eval_mode() -> None:
    monitor, _ = _train("ce() + 0.1*fairness(dp_gap, group=g)", steps=7, every=3)
    assert [check.step for check in monitor.history] == [0, 3, 6]
    loss_fn = monitor.loss_fn.eval()
    x, y, g = _fairness_data()
    loss_fn(torch.zeros(len(y), requires_grad=True), y, g=g)
    assert len(monitor.history) == 3 and monitor.calls == 7  # eval calls are not training steps
    monitor.close()
    loss_fn.train()(torch.zeros(len(y), requires_grad=True), y, g=g)
    assert monitor.calls == 7


def _moving(i: int, *labels: str) -> dict[str, float]:
    """Values that change from check to check (a constant one would be a stuck term)."""
    return {label: 1.0 / (i + 1 + k) for k, label in enumerate(labels)}


def _monitor(spec: str, **options) -> lossdsl.monitor.Monitor:
    return lossdsl.watch(lossdsl.compile(spec), **options)


def _feed(monitor, checks) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for check in checks:
            monitor.observe(check)
    return [str(w.message) for w in caught]


def test_dominance_needs_patience_checks_in_a_row() -> None:
    monitor = _monitor("ce() + 3*mse(pred=aux, target=aux_target)")
    checks = [Check(i, _moving(i, "ce", "mse"), {"ce": 1.0, "mse": n}) for i, n in enumerate([20, 20, 5, 20, 20])]
    assert _feed(monitor, checks) == []  # 95%, 95%, 83%, 95%, 95%: never three in a row
    said = _feed(monitor, [Check(5, _moving(5, "ce", "mse"), {"ce": 1.0, "mse": 20})])
    assert len(said) == 1 and said[0].startswith("mse() at <spec>:1:10 (`ce() + 3*mse(pred=aux, target=aux_target)`)")
    assert "carries 95% of the loss's gradient" in said[0] and "the main term ce 5%" in said[0]
    # The main term may carry it all: it is the task.
    main = _monitor("ce() + 3*mse(pred=aux, target=aux_target)")
    assert _feed(main, [Check(i, _moving(i, "ce", "mse"), {"ce": 100.0, "mse": 1.0}) for i in range(4)]) == []


def test_the_total_falling_while_the_metric_rises_is_flagged() -> None:
    monitor = _monitor("ce() + 0.5*mse(pred=aux, target=t)", window=4)
    checks = [Check(i, {"ce": 1.0 + 0.01 * i, "mse": 2.0 - 0.4 * i}, {"ce": 1.0, "mse": 1.0}, {"ce": 1.0, "mse": 0.5},
                    total=2.0 - 0.2 * i, metric=0.30 + 0.02 * i) for i in range(4)]
    said = _feed(monitor, checks)
    assert len(said) == 1
    assert said[0].startswith("the total fell by 0.6 over the last 4 checks while the metric rose by 0.06")
    assert "mse() at <spec>:1:12" in said[0] and "fell most" in said[0]
    # Both falling, or the metric flat within the tolerance: quiet.
    quiet = _monitor("ce() + 0.5*mse(pred=aux, target=t)", window=4)
    assert _feed(quiet, [Check(i, _moving(i, "ce", "mse"), {"ce": 1.0, "mse": 1.0}, total=2.0 - 0.2 * i,
                               metric=0.30 - 0.02 * i) for i in range(4)]) == []
    flat = _monitor("ce() + 0.5*mse(pred=aux, target=t)", window=4)
    assert _feed(flat, [Check(i, _moving(i, "ce", "mse"), {"ce": 1.0, "mse": 1.0}, total=2.0 - 0.2 * i,
                              metric=0.30 + 0.0005 * i) for i in range(4)]) == []


def test_a_metric_handed_in_by_step_pairs_with_the_mean_total_since() -> None:
    monitor = _monitor("ce() + 0.5*mse(pred=aux, target=t)", window=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            for i in range(2):
                total = 3.0 - epoch - 0.1 * i
                monitor.observe(Check(2 * epoch + i, {"ce": 1.0 + 0.01 * (2 * epoch + i), "mse": total}, {"ce": 1.0, "mse": 1.0}, total=total))
            monitor.step(metric=0.1 + 0.05 * epoch)
    assert [p[0] for p in monitor._metric_points] == pytest.approx([2.95, 1.95, 0.95])
    assert len(caught) == 1 and "the total fell by 2 over the last 3 checks while the metric rose by 0.1" in str(caught[0].message)


def test_a_multiplier_that_keeps_growing_is_flagged() -> None:
    spec = "loss = ce()\nsubject to fairness(dp_gap, group=g) <= 0.01 as dp"
    norms = {"ce": 1.0, "fairness": 0.1}

    def checks(multipliers, violations, start=0):
        return [Check(start + i, _moving(start + i, "ce", "fairness"), norms, multipliers={"dp": m},
                      violations={"dp": v}) for i, (m, v) in enumerate(zip(multipliers, violations))]

    growing = [0.1 * 1.5**i for i in range(8)]
    # Rising at each of 2 x window checks, but the bound met at one of them: a multiplier on its way up.
    met_once = _monitor(spec, window=4)
    assert _feed(met_once, checks(growing, [0.05, 0.04, 0.0, 0.03, 0.02, 0.03, 0.01, 0.02])) == []
    # Violated throughout, but the multiplier fell once: quiet too.
    wobbling = _monitor(spec, window=4)
    assert _feed(wobbling, checks([*growing[:4], 0.2, *growing[5:]], [0.05] * 8)) == []
    # Violated throughout, but less and less: the multiplier is doing its work.
    shrinking = _monitor(spec, window=4)
    assert _feed(shrinking, checks(growing, [0.05, 0.06, 0.04, 0.05, 0.03, 0.04, 0.02, 0.03])) == []
    monitor = _monitor(spec, window=4)
    said = _feed(monitor, checks(growing, [0.05, 0.04, 0.06, 0.05, 0.05, 0.06, 0.04, 0.05]))
    assert said == ["constraint 'dp' at <spec>:2:1 (`subject to fairness(dp_gap, group=g) <= 0.01 as dp`): its "
                    "multiplier grew at each of the last 8 checks (0.1 -> 1.71) and the bound was violated at every "
                    "one, no less at the end: it is not being met; loosen it, give the model a way to meet it, or "
                    "check the term's scale"]


def test_a_term_only_a_constraint_reads_is_not_said_to_dominate() -> None:
    """Its multiplier weighs it: the multiplier's rule speaks for it, not the dominance rule."""
    monitor = _monitor("loss = ce()\nsubject to fairness(dp_gap, group=g) <= 0.01 as dp")
    assert _feed(monitor, [Check(i, _moving(i, "ce", "fairness"), {"ce": 1.0, "fairness": 50.0},
                                 multipliers={"dp": 1.0}, violations={"dp": 0.0}) for i in range(4)]) == []


def test_a_real_constraint_reports_its_multiplier() -> None:
    monitor, _ = _train("loss = ce()\nsubject to fairness(dp_gap, group=g, groups=2) <= 0.0 as dp", steps=3)
    multipliers = [check.multipliers["dp"] for check in monitor.history]
    assert len(multipliers) == 3
    assert multipliers[0] == 0.0  # the multiplier the first call used (its step comes after)
    assert multipliers[0] < multipliers[1] < multipliers[2]  # a bound of 0 is never met
    assert multipliers[-1] == pytest.approx(monitor.loss_fn.last_terms["dp.multiplier"].item())


def test_a_kl_collapse_is_flagged() -> None:
    spec = "let recon_loss = mse(pred=recon, target=x)\nlet kl = kl_normal(mu=mu, logvar=logvar)\nloss = recon_loss + 0.02*kl"
    monitor = _monitor(spec)
    values = [3.0, 0.5, 0.008, 0.004, 0.003]
    checks = [Check(i, {"recon_loss": 0.05 / (i + 1), "kl": v}, {"recon_loss": 1.0, "kl": 0.1}, {"recon_loss": 1.0, "kl": 0.02}) for i, v in enumerate(values)]
    said = _feed(monitor, checks)
    assert len(said) == 1
    assert said[0].startswith("kl_normal() at <spec>:2:10 (`let kl = kl_normal(mu=mu, logvar=logvar)`): the KL term "
                              "has stayed below 0.01 (0.003) over the last 3 checks: the posterior has collapsed")
    # While its weight is 0 (a warmup at its start) a small KL is no collapse.
    warming = _monitor(spec)
    assert _feed(warming, [Check(i, {"recon_loss": 0.05 / (i + 1), "kl": 0.001}, {"recon_loss": 1.0, "kl": 0.0}, {"recon_loss": 1.0, "kl": 0.0})
                           for i in range(4)]) == []


def test_a_stuck_term_is_flagged_from_a_real_run() -> None:
    """The second term reads tensors the model does not produce: its value never moves."""
    gen = torch.Generator().manual_seed(0)
    x, target = torch.randn(32, 3, generator=gen), torch.randn(32, generator=gen)
    aux, aux_target = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = lossdsl.compile("mse() + 0.1*mse(pred=aux, target=aux_target)")
    monitor = lossdsl.watch(loss_fn, every=1, window=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            loss = loss_fn(model(x)[:, 0], target, aux=aux, aux_target=aux_target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    said = [str(w.message) for w in caught]
    stuck = F.mse_loss(aux, aux_target).item()
    assert len(said) == 1
    assert said[0].startswith("mse() at <spec>:1:13 (`mse() + 0.1*mse(pred=aux, target=aux_target)`): its value has "
                              f"stayed {stuck:.6g} over the last 4 checks (gradient norm 0): the term is stuck")
    assert monitor.history[-1].norms["mse_2"] == 0.0


def test_a_term_resting_at_zero_is_not_stuck() -> None:
    monitor = _monitor("mse() + soft_bound(pred <= 100)", window=3)
    checks = [Check(i, {"mse": 1.0 / (i + 1), "soft_bound": 0.0}, {"mse": 1.0, "soft_bound": 0.0}) for i in range(4)]
    assert _feed(monitor, checks) == []


def test_bad_arguments() -> None:
    loss_fn = lossdsl.compile("ce()")
    with pytest.raises(ValueError, match="wrt names 'logits', which the loss does not read; it reads pred, target"):
        lossdsl.watch(loss_fn, wrt=("logits",))
    with pytest.raises(ValueError, match="every and patience are at least 1"):
        lossdsl.watch(loss_fn, every=0)
    with pytest.raises(TypeError, match="watches a compiled loss"):
        lossdsl.watch(torch.nn.MSELoss())
    assert lossdsl.watch(loss_fn).summary() == "lossdsl.watch: no checks yet (0 training calls, every 10)"


def test_a_total_of_unreduced_losses_is_not_checked() -> None:
    """reduction=none gives a loss per sample: no single gradient to share out, so no check (no error)."""
    loss_fn = lossdsl.compile("mse(reduction=none)")
    monitor = lossdsl.watch(loss_fn, every=1)
    losses = loss_fn(torch.randn(4, requires_grad=True), torch.zeros(4))
    assert losses.shape == (4,)
    assert monitor.calls == 1 and monitor.history == []
