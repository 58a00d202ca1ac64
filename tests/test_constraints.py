"""subject to: learned Lagrange multipliers, fixed penalties and the augmented Lagrangian."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.plan import MULTIPLIER_CAP


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
        "a", "a.surrogate", "a.violation", "a.multiplier", "b", "b.surrogate", "b.violation", "b.multiplier"]


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


# -- float32's range (issue 10): a bound too large is E205; a learned multiplier saturates --------


def _f32_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, generator=generator), torch.randn(8, generator=generator)


@pytest.mark.parametrize(
    ("src", "worst"),
    [
        # lam * g with lam at the cap and g at twice the bound
        ("subject to mse() >= 1e33\nloss = mae()", MULTIPLIER_CAP * 2e33),
        ("subject to mse() <= -1e33\nloss = mae()", MULTIPLIER_CAP * 2e33),
        # lam * g + rho / 2 * g^2: the square of a violation of 2e20 overflows whatever lam is
        ("subject to sum(y * y) == 1e20 using augmented(1.0)\nloss = mae()", MULTIPLIER_CAP * 2e20 + 0.5 * 4e40),
        ("subject to mse() <= 0.1 using augmented(2e38)\nloss = mae()", MULTIPLIER_CAP * 2 + 1e38 * 4),
        ("subject to mse() <= 1e37 using penalty(100)\nloss = mae()", 100 * 2e37),
    ],
)
def test_a_bound_whose_contribution_overflows_float32_is_e205(src, worst):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == "E205"
    assert f"{worst:.3g}" in diagnostic.message
    assert diagnostic.span is not None and diagnostic.span.line == 1  # points at the bound


def test_a_param_bound_is_checked_when_the_module_is_built():
    spec = "param cap = 0.5\nloss = mae()\nsubject to mse() >= cap"
    assert lossdsl.compile(spec, params={"cap": 1e30}) is not None  # 2e36 with the cap: fits
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec, params={"cap": 1e33})
    assert info.value.diagnostics[0].code == "E205"
    assert "cap = 1e+33" in info.value.diagnostics[0].message


@pytest.mark.parametrize("op", [">=", "=="])
def test_a_huge_bound_saturates_the_multiplier_instead_of_overflowing(op):
    """``mse() >= 1e30`` was 1.6, then inf: lam = 0.01 * 1e30 = 1e28 after one call, lam * g = 1e58."""
    loss_fn = lossdsl.compile(f"subject to mse() {op} 1e30 using lagrangian(0.01)\nloss = mae()")
    pred, target = _f32_inputs()
    mse, mae = F.mse_loss(pred, target).double(), F.l1_loss(pred, target).double()
    excess = 1e30 - mse if op == ">=" else mse - 1e30
    for call in range(3):
        got = loss_fn(pred, target)
        lam = 0.0 if call == 0 else (MULTIPLIER_CAP if op == ">=" else -MULTIPLIER_CAP)
        assert torch.isfinite(got)
        torch.testing.assert_close(got.double(), mae + lam * excess)
        assert float(loss_fn.multipliers[0]) == (MULTIPLIER_CAP if op == ">=" else -MULTIPLIER_CAP)


def test_a_long_run_on_an_infeasible_constraint_saturates_the_multiplier():
    """``mse() <= -1`` never holds: dual ascent raises lam on every call. Unbounded, lam reached
    3.4e38 after ~100 calls at lr=1e36 and the loss turned inf; now lam stops at the cap, and the
    model's gradients stay finite all along (lam * d mse)."""
    torch.manual_seed(0)
    loss_fn = lossdsl.compile("loss = mae()\nsubject to mse() <= -1 as never using lagrangian(lr=1e36)")
    pred = torch.nn.Parameter(torch.randn(8))
    target = torch.randn(8)
    optimizer = torch.optim.SGD([pred], lr=1e-9)
    for _ in range(300):
        optimizer.zero_grad()
        got = loss_fn(pred, target)
        got.backward()
        assert torch.isfinite(got) and torch.isfinite(pred.grad).all()
    assert float(loss_fn.multipliers[0]) == MULTIPLIER_CAP
    with torch.no_grad():
        mse, mae = F.mse_loss(pred, target).double(), F.l1_loss(pred, target).double()
    torch.testing.assert_close(loss_fn(pred, target).double(), mae + MULTIPLIER_CAP * (mse + 1))
    grad = torch.autograd.grad(loss_fn(pred, target), pred)[0]
    expected = torch.autograd.grad(F.l1_loss(pred, target) + MULTIPLIER_CAP * F.mse_loss(pred, target), pred)[0]
    torch.testing.assert_close(grad, expected)


def test_a_multiplier_set_beyond_the_cap_is_used_at_the_cap():
    loss_fn = lossdsl.compile("loss = mae()\nsubject to mse() <= 0.1 using lagrangian(lr=0.5)")
    loss_fn.multipliers[0] = 1e38  # a state_dict from elsewhere
    pred, target = _f32_inputs()
    excess = F.mse_loss(pred, target).double() - 0.1
    torch.testing.assert_close(loss_fn(pred, target).double(), F.l1_loss(pred, target).double() + MULTIPLIER_CAP * excess)
    assert loss_fn.last_terms["constraint_1.multiplier"] == MULTIPLIER_CAP


def test_augmented_with_a_small_rho_squares_no_huge_ratio():
    """rho = 1e-30, lam = 1: lam / rho = 1e30, whose float32 square is inf, and inf - inf was NaN.
    Expanded: lam * g + rho / 2 * g^2 where g >= -lam / rho, else the constant -lam^2 / (2 rho)."""
    pred, target = _f32_inputs()
    mse, mae = F.mse_loss(pred, target).double(), F.l1_loss(pred, target).double()
    rho = 1e-30
    for op, lam in (("<=", 1.0), (">=", 1e-31)):
        loss_fn = lossdsl.compile(f"loss = mae()\nsubject to mse() {op} 0.1 using augmented({rho})")
        loss_fn.multipliers[0] = lam
        lam = float(loss_fn.multipliers[0])  # as float32 holds it
        g = mse - 0.1 if op == "<=" else 0.1 - mse
        # The textbook form in exact rationals: float64 loses g against lam / rho = 1e30.
        exact_g, exact_lam, exact_rho = Fraction(float(g)), Fraction(lam), Fraction(rho)
        shifted = max(Fraction(0), exact_g + exact_lam / exact_rho)
        reference = exact_rho / 2 * (shifted**2 - (exact_lam / exact_rho) ** 2)
        assert (shifted > 0) == (op == "<=")  # one case per branch
        got = loss_fn(pred, target)
        assert torch.isfinite(got)
        torch.testing.assert_close(got.double(), mae + float(reference))


def test_a_float16_loss_under_a_saturated_multiplier_is_finite():
    """float16's largest number is 65504: the multiplier and lam * g are computed in float32."""
    loss_fn = lossdsl.compile("loss = mae()\nsubject to mse() <= 0.01 using lagrangian(lr=1e9)")
    pred, target = (t.half() for t in _f32_inputs())
    loss_fn(pred, target)
    got = loss_fn(pred, target)
    assert float(loss_fn.multipliers[0]) == MULTIPLIER_CAP
    excess = F.mse_loss(pred.float(), target.float()) - 0.01
    torch.testing.assert_close(got.float(), F.l1_loss(pred.float(), target.float()) + MULTIPLIER_CAP * excess,
                               rtol=2e-3, atol=0)


@pytest.mark.parametrize("method", ["lagrangian(lr=1e9)", "augmented(0.5)", "adaptive(0.5)"])
def test_saturating_multipliers_compile_fullgraph(method):
    """The clamps and the expanded augmented form add no graph break and match eager mode. Dynamo's
    caches are cleared after: each compiled module counts towards LossModule.forward's recompile
    limit (8), which the suite's later torch.compile tests need."""
    spec = f"loss = mae()\nsubject to mse() <= 0.05 using {method}\nsubject to mae() >= 0.1 using {method}"
    eager_fn, source = lossdsl.compile(spec), lossdsl.compile(spec)
    compiled_fn = torch.compile(source, fullgraph=True)
    try:
        for seed in range(3):
            pred, target = _f32_inputs(seed)
            torch.testing.assert_close(compiled_fn(pred, target), eager_fn(pred, target))
            torch.testing.assert_close(source.multipliers, eager_fn.multipliers)
    finally:
        torch.compiler.reset()
    assert float(eager_fn.multipliers.max()) <= MULTIPLIER_CAP
