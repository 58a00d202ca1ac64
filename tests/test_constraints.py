"""subject to: learned Lagrange multipliers, fixed penalties and the augmented Lagrangian."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def test_lagrangian_contribution_and_projected_dual_ascent():
    loss_fn = lossdsl.compile("mse()\nsubject to mae() <= 0.5 as err using lagrangian(lr=0.1)")
    pred, target = torch.randn(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    excess = F.l1_loss(pred, target) - 0.5
    lam = 0.0
    for _ in range(3):
        got = loss_fn(pred, target)
        torch.testing.assert_close(got, F.mse_loss(pred, target) + lam * excess)
        terms = loss_fn.last_terms
        torch.testing.assert_close(terms["err.multiplier"], torch.tensor(lam, dtype=torch.float64))
        torch.testing.assert_close(terms["err.violation"], torch.relu(excess))
        lam = max(0.0, lam + 0.1 * float(excess))
        assert float(loss_fn.multipliers[0]) == pytest.approx(lam, rel=1e-6)


def test_equality_multiplier_is_signed_and_eval_mode_changes_nothing():
    loss_fn = lossdsl.compile("mse()\nsubject to mae() == 10 using lagrangian(lr=1)")
    pred, target = torch.randn(5), torch.zeros(5)
    loss_fn(pred, target)
    assert float(loss_fn.multipliers[0]) == pytest.approx(float(F.l1_loss(pred, target)) - 10, rel=1e-5)
    loss_fn.eval()
    before = loss_fn.multipliers.clone()
    loss_fn(pred, target)
    torch.testing.assert_close(loss_fn.multipliers, before)


@pytest.mark.parametrize("op", ["<=", ">="])
def test_fixed_penalty(op):
    loss_fn = lossdsl.compile(f"mse()\nsubject to mae() {op} 0.3 using penalty(7)")
    pred, target = torch.randn(6), torch.zeros(6)
    excess = F.l1_loss(pred, target) - 0.3 if op == "<=" else 0.3 - F.l1_loss(pred, target)
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target) + 7 * torch.relu(excess))
    assert float(loss_fn.multipliers[0]) == 0.0  # a penalty learns nothing


def test_augmented_lagrangian():
    loss_fn = lossdsl.compile("mse()\nsubject to mae() <= 0.2 using augmented(2.0)")
    pred, target = torch.randn(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    loss_fn.multipliers[0] = 0.5
    excess = F.l1_loss(pred, target) - 0.2
    lam, rho = 0.5, 2.0
    expected = F.mse_loss(pred, target) + rho / 2 * (torch.relu(excess + lam / rho) ** 2 - (lam / rho) ** 2)
    torch.testing.assert_close(loss_fn(pred, target), expected)
    assert float(loss_fn.multipliers[0]) == pytest.approx(max(0.0, lam + rho * float(excess)), rel=1e-6)


def test_a_binding_constraint_is_met_with_no_weight_tuned():
    """Pull x towards 2 subject to mean(x) <= 1: x settles at 1 and the multiplier at the price, 2."""
    torch.manual_seed(0)
    loss_fn = lossdsl.compile("mse(pred=x, target=goal)\nsubject to mean(x) <= 1 as budget using lagrangian(lr=0.05)")
    x = torch.nn.Parameter(torch.zeros(10))
    goal = torch.full((10,), 2.0)
    optimizer = torch.optim.SGD([x], lr=0.1)
    for _ in range(3000):
        optimizer.zero_grad()
        loss_fn(x=x, goal=goal).backward()
        optimizer.step()
    assert float(x.detach().mean()) == pytest.approx(1.0, abs=0.02)
    assert float(loss_fn.multipliers[0]) == pytest.approx(2.0, abs=0.1)


def test_multipliers_survive_state_dict_and_constraints_use_params_and_lets():
    spec = "param cap = 0.4\nlet err = mae()\nloss = mse()\nsubject to err <= cap as a\nsubject to mse() >= 0 as b"
    trained = lossdsl.compile(spec)
    trained.multipliers.copy_(torch.tensor([0.7, 0.1]))
    restored = lossdsl.compile(spec, params={"cap": 0.4})
    restored.load_state_dict(trained.state_dict())
    torch.testing.assert_close(restored.multipliers, torch.tensor([0.7, 0.1]))
    restored(torch.randn(4), torch.zeros(4))
    assert [k for k in restored.last_terms if k.startswith(("a", "b"))] == [
        "a", "a.violation", "a.multiplier", "b", "b.violation", "b.multiplier"]


@pytest.mark.parametrize(
    ("src", "code"),
    [
        ("mse()\nsubject to mae() < 1", "E303"),
        ("mse()\nsubject to 0 <= mae() <= 1", "E303"),
        ("mse()\nsubject to 1 <= mae()", "E302"),
        ("mse()\nsubject to mae() <= warmup(3)", "E302"),
        ("mse()\nsubject to mae() <= 1 using lagrange(1)", "E201"),
        ("mse()\nsubject to mae() <= 1 using penalty(-1)", "E204"),
        ("mse()\nsubject to mae() <= 1 using penalty(w=1)", "E204"),
        ("mse()\nsubject to maee() <= 1", "E202"),
    ],
)
def test_constraint_mistakes(src, code):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    assert info.value.diagnostics[0].code == code
