"""No silent NaN, no raw torch error, no false alarm (issue 10).

- a weight of 0 (a schedule at 0, a param of 0) silences its term, value and gradient;
- ``kl`` with masked (-inf) teacher logits: 0 log 0 = 0, as ``F.kl_div`` on probabilities;
- values the checker accepts are computable: each is a diagnostic, or a stable computation;
- NaN in gives NaN out (never a finite value over NaN gradients); ``check_finite`` names the term;
- torch's index errors inside a term are E402 naming the input, the term and its place;
- per-group state is bounded.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import cli
from lossdsl.registry import MAX_GROUP_STATE, MAX_GROUPS, REGISTRY
from lossdsl.schedules import SCHEDULES

f64 = torch.float64


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _vae_inputs(seed: int = 0):
    """mse inputs and a posterior whose logvar of 100 makes exp(logvar) inf in float32, so kl_normal is inf
    and its gradient 0 * inf = NaN unless the term is cut off."""
    generator = _generator(seed)
    return {
        "pred": torch.randn(6, generator=generator, requires_grad=True),
        "target": torch.randn(6, generator=generator),
        "mu": torch.randn(6, 3, generator=generator, requires_grad=True),
        "logvar": torch.full((6, 3), 100.0, requires_grad=True),
    }


def _mse(inputs) -> torch.Tensor:
    return F.mse_loss(inputs["pred"].detach(), inputs["target"])


def _no_gradient(tensor: torch.Tensor) -> bool:
    return tensor.grad is None or bool((tensor.grad == 0).all())


# -- 1. a weight of 0 silences its term --------------------------------------------------------------


SILENT_AT_STEP_0 = [
    "mse() + warmup(50) * kl_normal()",
    "mse() + kl_normal() * warmup(50)",
    "let kl = kl_normal()\nloss = mse() + warmup(50) * kl",
    "let weighted = warmup(50) * kl_normal()\nloss = mse() + weighted",
    "mse() + 2 * warmup(50) * kl_normal()",
    "mse() + linear(0, 1, 10) * kl_normal()",
    "mse() + cosine(0, 1, 10) * (kl_normal() + kl_normal())",
    "param lam = 0\nloss = mse() + lam * kl_normal()",
    "param lam = 1\nloss = mse() + (lam - 1) * kl_normal()",
]


@pytest.mark.parametrize("spec", SILENT_AT_STEP_0)
def test_a_weight_of_zero_silences_an_infinite_term_value_and_gradient(spec):
    inputs = _vae_inputs()
    loss_fn = lossdsl.compile(spec)
    total = loss_fn(**inputs)
    assert not torch.isfinite(loss_fn.last_terms[next(k for k in loss_fn.last_terms if "kl" in k)])  # still reported
    torch.testing.assert_close(total.detach(), _mse(inputs))  # 0, not 0 * inf = NaN
    total.backward()
    assert _no_gradient(inputs["logvar"]) and _no_gradient(inputs["mu"])
    torch.testing.assert_close(inputs["pred"].grad, 2 * (inputs["pred"] - inputs["target"]).detach() / 6)


def test_the_term_is_live_again_once_the_schedule_moves():
    inputs = _vae_inputs()
    loss_fn = lossdsl.compile("mse() + warmup(50) * kl_normal()")
    loss_fn.step()
    assert loss_fn(**inputs) == float("inf")  # the term counts at step 1: no false silence


def test_a_schedule_that_ends_at_zero_silences_the_term_from_then_on():
    inputs = _vae_inputs()
    loss_fn = lossdsl.compile("mse() + cosine(1, 0, 10) * kl_normal()")
    loss_fn.step(10)
    total = loss_fn(**inputs)
    torch.testing.assert_close(total.detach(), _mse(inputs))
    total.backward()
    assert _no_gradient(inputs["logvar"])


def test_a_term_used_elsewhere_keeps_that_use_s_gradient():
    """At step 0, warmup(5) * k + 0.5 * k has the gradient of 0.5 * k: only the silent use is cut."""
    generator = _generator(1)
    mu, logvar = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    grads = []
    for spec in ("let k = kl_normal()\nloss = warmup(5) * k + 0.5 * k", "0.5 * kl_normal()"):
        leaf = logvar.clone().requires_grad_()
        total = lossdsl.compile(spec)(mu=mu, logvar=leaf)
        grads.append((total, torch.autograd.grad(total, leaf)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_a_term_a_constraint_reads_is_not_silenced():
    loss_fn = lossdsl.compile("loss = warmup(5) * mse()\nsubject to mse() <= 0.1 using penalty(1)")
    pred = torch.zeros(4, requires_grad=True)
    loss_fn(pred, torch.ones(4)).backward()
    torch.testing.assert_close(pred.grad, torch.full((4,), -0.5))  # d/dpred of relu(mean((p - 1)^2) - 0.1)


def test_silencing_compiles_fullgraph_and_matches_eager():
    spec = "mse() + warmup(3) * kl_normal()"
    eager_fn, compiled_source = lossdsl.compile(spec), lossdsl.compile(spec)
    compiled_fn = torch.compile(compiled_source, fullgraph=True)
    generator = _generator(2)
    for step in range(2):
        inputs = {"pred": torch.randn(4, generator=generator), "target": torch.randn(4, generator=generator),
                  "mu": torch.randn(4, 2, generator=generator), "logvar": torch.randn(4, 2, generator=generator)}
        leaves = [inputs["logvar"].clone().requires_grad_() for _ in range(2)]
        expected = eager_fn(**{**inputs, "logvar": leaves[0]})
        got = compiled_fn(**{**inputs, "logvar": leaves[1]})
        torch.testing.assert_close(got, expected)
        (grad_expected,), (grad_got,) = torch.autograd.grad(expected, leaves[0]), torch.autograd.grad(got, leaves[1])
        torch.testing.assert_close(grad_got, grad_expected)
        assert (grad_got == 0).all() == (step == 0)  # silent at step 0 only


# -- 2. kl with masked teacher logits ------------------------------------------------------------------


def test_kl_equals_torch_kl_div_where_torch_is_finite():
    generator = _generator(3)
    p, q = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    ours = lossdsl.compile("kl(p=a, q=b)")(a=p, b=q)
    reference = F.kl_div(F.log_softmax(q, 1), F.log_softmax(p, 1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(ours, reference)


def test_kl_with_masked_teacher_logits_is_finite_as_torch_on_probabilities():
    generator = _generator(4)
    p, q = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    p[:, 0] = float("-inf")  # a masked class
    p[2, 3] = float("-inf")
    q[:, 0] = float("-inf")  # masked in the student too: 0 log(0 / 0) = 0
    teacher, student = p.clone().requires_grad_(), q.clone().requires_grad_()
    ours = lossdsl.compile("kl(p=a, q=b)")(a=teacher, b=student)
    reference_student = q.clone().requires_grad_()
    target = F.softmax(p, 1)
    reference = F.kl_div(F.log_softmax(reference_student, 1).clamp_min(-1e30), target, reduction="batchmean")
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, reference)
    ours.backward()
    reference.backward()
    assert torch.isfinite(teacher.grad).all() and torch.isfinite(student.grad).all()
    torch.testing.assert_close(student.grad, reference_student.grad)
    assert (teacher.grad[p == float("-inf")] == 0).all()


def test_kl_is_inf_where_the_student_excludes_what_the_teacher_allows():
    p, q = torch.zeros(1, 2), torch.tensor([[0.0, float("-inf")]])
    assert lossdsl.compile("kl(p=a, q=b)")(a=p, b=q) == float("inf")


# -- 3. what the checker accepts, the runtime computes -------------------------------------------------


DIAGNOSED = [  # spec, line, column of the E205
    ("warmup(99999999999999999999) * mse()", 1, 1),
    ("mse() + cosine(1, 0, 10000000000000000000000) * mae()", 1, 9),
    ("contrastive(margin=1e20)", 1, 20),
    ("ce(weight=[1e38, 1e38, 1e38])", 1, 11),
    ("fairness(dp_gap, group=g, agg=smoothmax(1e-45))", 1, 31),
    ("soft_bound(y / 1e-300 <= 1)", 1, 16),
    ("mean(abs(y / -1e-39))", 1, 14),
    ("fairness(dp_gap, group=g, groups=2147483648)", 1, 34),  # (2^24 runs: a batch smaller than K ranks its codes)
]


@pytest.mark.parametrize("spec,line,column", DIAGNOSED)
def test_values_the_runtime_cannot_compute_are_diagnosed_at_compile_time(spec, line, column):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec)
    diagnostic = info.value.diagnostics[0]
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("E205", line, column)


@pytest.mark.parametrize("spec,line,column", DIAGNOSED[:6])
def test_lossdsl_check_reports_them_too(spec, line, column, tmp_path, capsys):
    path = tmp_path / "spec.loss"
    path.write_text(spec + "\n")
    assert cli.main(["check", str(path)]) == 1
    assert f"{path}:{line}:{column}: error[E205]" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_schedule_between_the_float32_extremes_stays_finite(kind):
    """linear(3e38, -3e38, 10): end - start overflowed float32, so every step's weight was inf or NaN.
    As a loss's weight it is now beyond the 1e15 limit (E205); a schedule computes start and end as a
    weighted mean, finite wherever both are, shown here at the limit and on the schedule itself."""
    with pytest.raises(lossdsl.LossSpecError, match="E205"):
        lossdsl.compile(f"{kind}(3e38, -3e38, 10) * mse()")
    for step in (0, 5, 10):
        assert math.isfinite(float(SCHEDULES[kind][2](SCHEDULES[kind][0](start=3e38, end=-3e38, steps=10))(
            torch.tensor(step))))
    loss_fn = lossdsl.compile(f"{kind}(1e15, -1e15, 10) * mse()")
    pred, target = torch.full((4,), 0.5, requires_grad=True), torch.zeros(4)
    for step in range(12):
        share = min(step, 10) / 10
        if kind == "cosine":
            share = 0.5 * (1 - math.cos(math.pi * share))
        weight = 1e15 * (1 - share) - 1e15 * share  # in float64
        total = loss_fn(pred, target)  # mse = 0.25
        assert math.isclose(float(total.detach()), weight * 0.25, rel_tol=1e-5, abs_tol=1e9)
        (grad,) = torch.autograd.grad(total, pred)
        assert torch.isfinite(grad).all()


def _log_domain_triplet(anchor, positive, negative, p, margin=1.0):
    """The triplet loss with each p-norm as exp(logsumexp(p log|d|) / p), in float64: no power is formed."""
    def distance(x, y):
        return torch.exp(torch.logsumexp(p * (x - y + 1e-6).abs().log(), dim=1) / p)
    return torch.clamp_min(margin + distance(anchor, positive) - distance(anchor, negative), 0).mean()


@pytest.mark.parametrize("p", [3, 7, 100, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triplet_of_any_norm_matches_a_log_domain_reference_and_stays_finite(p, dtype):
    """F.triplet_margin_loss's |d|^p overflows float32 from p = 100 at |d| = 2.5 (float64 holds to
    p = 100 here, and is a second reference there; at p = 1000 it underflows |d| = 0.4 to 0)."""
    generator = _generator(p)
    anchor, positive, negative = (torch.randn(6, 8, generator=generator, dtype=f64) for _ in range(3))
    reference = _log_domain_triplet(anchor, positive, negative, p)
    if p <= 100:
        torch.testing.assert_close(F.triplet_margin_loss(anchor, positive, negative, p=p), reference)
    leaves = [t.to(dtype).requires_grad_() for t in (anchor, positive, negative)]
    ours = lossdsl.compile(f"triplet(p={p})")(anchor=leaves[0], positive=leaves[1], negative=leaves[2])
    tolerance = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(ours.double(), reference, rtol=tolerance, atol=tolerance)
    ours.backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_triplet_p_beyond_float64_is_between_the_largest_coordinate_and_its_bound():
    """p = 10000 overflows even float64; the p-norm lies in [max |d|, D^(1/p) max |d|]."""
    generator = _generator(5)
    anchor, positive, negative = (3 * torch.randn(4, 8, generator=generator) for _ in range(3))
    leaves = [t.clone().requires_grad_() for t in (anchor, positive, negative)]
    ours = lossdsl.compile("triplet(p=10000, margin=1)")(anchor=leaves[0], positive=leaves[1], negative=leaves[2])
    near = (anchor - positive + 1e-6).abs().amax(1).double()
    far = (anchor - negative + 1e-6).abs().amax(1).double()
    bound = 8 ** (1 / 10000)
    low = torch.clamp_min(1 + near - far * bound, 0).mean()
    high = torch.clamp_min(1 + near * bound - far, 0).mean()
    assert low - 1e-5 <= ours.double() <= high + 1e-5
    ours.backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


@pytest.mark.parametrize("ref", ["groups", "overall"])
@pytest.mark.parametrize("stat", ["dp_gap", "dp_ratio"])
def test_smoothmax_at_the_extreme_temperatures_tends_to_max_and_mean(stat, ref):
    """T -> 0 gives agg=max; T -> inf gives the mean: for ref=groups the smooth largest and smallest
    both tend to the mean rate (a penalty of 0), for ref=overall the mean distance (agg=mean)."""
    generator = _generator(6)
    pred, g = torch.randn(30, generator=generator), torch.arange(30) % 3
    for temperature, limit in (("1.2e-38", "max"), ("1e30", "mean")):
        leaf = pred.clone().requires_grad_()
        ours = lossdsl.compile(f"fairness({stat}, group=g, ref={ref}, agg=smoothmax({temperature}))")(leaf, g=g)
        (grad,) = torch.autograd.grad(ours, leaf)
        assert torch.isfinite(ours) and torch.isfinite(grad).all()
        if limit == "max":
            expected = lossdsl.compile(f"fairness({stat}, group=g, ref={ref})")(pred, g=g)
        elif ref == "overall":
            expected = lossdsl.compile(f"fairness({stat}, group=g, ref={ref}, agg=mean)")(pred, g=g)
        else:
            expected = torch.zeros(())
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_ce_class_weights_at_the_bound_stay_finite():
    generator = _generator(7)
    pred, target = torch.randn(16, 3, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    for dtype in (torch.float32,):
        leaf = pred.to(dtype).requires_grad_()
        ours = lossdsl.compile("ce(weight=[1e15, 1e15, 1e15])")(leaf, target)
        torch.testing.assert_close(ours, F.cross_entropy(pred.to(dtype), target))  # only the ratios matter
        ours.backward()
        assert torch.isfinite(leaf.grad).all()


# -- 4. NaN in gives NaN out ---------------------------------------------------------------------------


def _nan_logits(shape, where, seed=8):
    tensor = torch.randn(*shape, generator=_generator(seed))
    tensor[where] = float("nan")
    return tensor.requires_grad_()


NAN_CASES = {  # spec -> inputs with one NaN; each gave a finite value over NaN gradients
    "dice()": lambda: {"pred": _nan_logits((2, 3, 4, 4), (0, 0, 0, 0)), "target": torch.arange(32).reshape(2, 4, 4) % 3},
    "tversky()": lambda: {"pred": _nan_logits((2, 3, 4, 4), (1, 2, 3, 3)), "target": torch.arange(32).reshape(2, 4, 4) % 3},
    "fairness(dp_ratio, group=g)": lambda: {"pred": _nan_logits((6,), 0), "g": torch.arange(6) % 2},
    "fairness(tpr_ratio, group=g, ref=overall)": lambda: {
        "pred": _nan_logits((6,), 0), "target": torch.tensor([1, 1, 0, 1, 1, 0]), "g": torch.arange(6) % 2},
    "fairness(dp_ratio, group=g, agg=mean)": lambda: {"pred": _nan_logits((9,), 4), "g": torch.arange(9) % 3},
    "fairness(dp_gap, group=g, sample_weight=w)": lambda: {
        "pred": torch.randn(6, requires_grad=True), "g": torch.arange(6) % 2,
        "w": torch.tensor([1.0, float("nan"), 1, 1, 1, 1])},
    "fairness(dp_gap, group=g, groups=2, window=ema(0.9), sample_weight=w)": lambda: {
        "pred": torch.randn(6, requires_grad=True), "g": torch.arange(6) % 2,
        "w": torch.tensor([float("nan"), 1, 1, 1, 1, 1])},
    "fairness(group_loss(mse), group=g, sample_weight=w)": lambda: {
        "pred": torch.randn(6, requires_grad=True), "target": torch.randn(6), "g": torch.arange(6) % 2,
        "w": torch.tensor([1.0, 1, 1, float("nan"), 1, 1])},
}


@pytest.mark.parametrize("spec", NAN_CASES)
def test_nan_in_gives_nan_out(spec):
    inputs = NAN_CASES[spec]()
    value = lossdsl.compile(spec)(**inputs)
    assert torch.isnan(value), f"{spec} hid a NaN input: {value}"


def test_an_ema_window_keeps_its_history_through_a_nan_batch():
    spec = "fairness(dp_gap, group=g, groups=2, window=ema(0.5))"
    generator = _generator(9)
    first, second = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    g = torch.arange(8) % 2
    poisoned, clean = lossdsl.compile(spec), lossdsl.compile(spec)
    poisoned(first, g=g)
    clean(first, g=g)
    assert torch.isnan(poisoned(torch.full((8,), float("nan")), g=g))
    torch.testing.assert_close(poisoned.terms[0].running_sums, clean.terms[0].running_sums)
    torch.testing.assert_close(poisoned(second, g=g), clean(second, g=g))


def test_check_finite_names_the_term_and_its_input():
    inputs = _vae_inputs()
    loss_fn = lossdsl.compile("mse() + kl_normal()")
    assert loss_fn(**inputs) == float("inf")  # off by default: no host sync
    loss_fn.check_finite = True
    with pytest.raises(lossdsl.LossSpecError) as info:
        loss_fn(**inputs)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "E405"
    assert diagnostic.message == "kl_normal() at <spec>:1:9 is infinite"
    pred = inputs["pred"].detach().clone()
    pred[0] = float("nan")
    with pytest.raises(lossdsl.LossSpecError, match=r"mse\(\) at <spec>:1:1 is NaN; its input 'pred' holds NaN or inf"):
        loss_fn(**{**inputs, "pred": pred})


def test_check_finite_passes_finite_values():
    loss_fn = lossdsl.compile("mse()")
    loss_fn.check_finite = True
    torch.testing.assert_close(loss_fn(torch.ones(3), torch.zeros(3)), torch.tensor(1.0))


# -- 5. torch's errors inside a term are E402 ----------------------------------------------------------


OUT_OF_RANGE = [  # spec, inputs, the input the error names
    ("ce()", lambda: {"pred": torch.randn(4, 3), "target": torch.tensor([0, 1, 2, 3])}, "target"),
    ("ce(label_smoothing=0.1)", lambda: {"pred": torch.randn(4, 3), "target": torch.tensor([0, -1, 2, 1])}, "target"),
    ("ce(weight=[1, 2])", lambda: {"pred": torch.randn(4), "target": torch.tensor([0, 1, -1, 1])}, "target"),
    ("ce(weight=[1, 2], label_smoothing=0.1)", lambda: {"pred": torch.randn(4), "target": torch.tensor([0, 1, -1, 1])}, "target"),
    ("ce(weight=[1, 2])", lambda: {"pred": torch.randn(4), "target": torch.tensor([0, 1, 2, 1])}, "target"),
    ("ce(weight=balanced)", lambda: {"pred": torch.randn(4), "target": torch.tensor([0, 1, -1, 1])}, "target"),
    ("dice()", lambda: {"pred": torch.randn(2, 3, 4, 4), "target": torch.full((2, 4, 4), 3)}, "target"),
    ("fairness(dp_gap, group=sex, groups=2)", lambda: {"pred": torch.randn(4), "sex": torch.tensor([0, 1, 2, 1])}, "sex"),
    ("fairness(dp_gap, group=sex, groups=2)", lambda: {"pred": torch.randn(4), "sex": torch.tensor([0, -1, 1, 1])}, "sex"),
    ("fairness(group_loss(mse), group=sex, groups=2)",
     lambda: {"pred": torch.randn(4), "target": torch.randn(4), "sex": torch.tensor([0, 5, 1, 1])}, "sex"),
]


@pytest.mark.parametrize("spec,make_inputs,name", OUT_OF_RANGE)
def test_an_index_out_of_range_is_e402_naming_the_input_term_and_place(spec, make_inputs, name):
    loss_fn = lossdsl.compile("0.5 * " + spec)
    with pytest.raises(lossdsl.LossSpecError) as info:
        loss_fn(**make_inputs())
    (diagnostic,) = info.value.diagnostics
    term = spec.split("(")[0]
    assert diagnostic.code == "E402"
    assert diagnostic.message.startswith(f"input '{name}' of {term}() at <spec>:1:7: torch raised ")
    assert info.value.__suppress_context__  # raised `from None`: no torch traceback behind it


def test_a_target_of_minus_one_does_not_wrap_to_the_last_class_weight():
    """weight[-1] was weight[1]: the -1 target counted as a weighted positive."""
    loss_fn = lossdsl.compile("ce(weight=[1, 2])")
    with pytest.raises(lossdsl.LossSpecError, match="E402"):
        loss_fn(torch.zeros(2), torch.tensor([1, -1]))
    ignored = lossdsl.compile("ce(weight=[1, 2], ignore_index=-1)")(torch.zeros(2), torch.tensor([1, -1]))
    torch.testing.assert_close(ignored, torch.tensor(math.log(2)))  # the -1 target ignored, as asked


def test_a_torch_error_over_float_inputs_names_them_all():
    def fails(pred, target):
        raise RuntimeError("Expected all tensors to be on the same device\n(a C++ trace)")

    lossdsl.term("fails_on_device")(fails)
    try:
        with pytest.raises(lossdsl.LossSpecError) as info:
            lossdsl.compile("fails_on_device()")(torch.ones(2), torch.ones(2))
    finally:
        del REGISTRY["fails_on_device"]
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message == ("inputs 'pred', 'target' of fails_on_device() at <spec>:1:1: torch raised "
                                  "RuntimeError: Expected all tensors to be on the same device")


# -- 6. per-group state is bounded ---------------------------------------------------------------------


def test_the_largest_group_count_keeps_k_slots_per_column():
    loss_fn = lossdsl.compile(f"fairness(eo_gap, group=g, groups={MAX_GROUPS}, window=ema(0.9))")
    state = sum(buffer.numel() for buffer in loss_fn.buffers())
    assert state == MAX_GROUPS * 4  # eo: tpr's and fpr's numerators and denominators per group
    pred = torch.randn(4, requires_grad=True)
    loss_fn(pred, torch.tensor([0, 1, 0, 1]), g=torch.tensor([0, 1, 2, MAX_GROUPS - 1])).backward()
    assert torch.isfinite(pred.grad).all()


def test_the_window_state_of_all_terms_is_bounded_by_the_checker():
    term = f"fairness(eo_gap, group=g, groups={MAX_GROUPS}, window=ema(0.9))"
    per_term = MAX_GROUPS * 4
    fitting = MAX_GROUP_STATE // per_term
    lossdsl.compile(" + ".join([term] * fitting))  # at the limit: fine
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(" + ".join([term] * (fitting + 1)))
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == "E205"
    assert diagnostic.span.column == 1 + fitting * (len(term) + 3)  # the term that crosses the limit
    assert f"keep {per_term * (fitting + 1)} running sums" in diagnostic.message


def test_a_declared_group_count_beyond_the_limit_is_diagnosed():
    spec = f"inputs:\n    pred: logits[N]\n    g: group[N] of {MAX_GROUPS + 1}\nloss = fairness(dp_gap, group=g)"
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec)
    assert (info.value.diagnostics[0].code, info.value.diagnostics[0].span.line) == ("E205", 3)


# -- properties ----------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_RATES = ["dp", "tpr", "fpr", "error_rate", "eo"]


@settings(max_examples=30, deadline=None)
@given(
    rate=st.sampled_from(_RATES), form=st.sampled_from(["gap", "ratio"]), ref=st.sampled_from(["groups", "overall"]),
    agg=st.sampled_from([None, "mean", "smoothmax(0.1)"]), poisoned=st.sampled_from(["pred", "w"]),
    where=st.integers(0, 11), seed=st.integers(0, 2**16),
)
def test_fairness_gives_nan_for_any_nan_input_and_finite_gradients_otherwise(rate, form, ref, agg, poisoned, where, seed):
    if rate == "eo" and agg == "smoothmax(0.1)":
        agg = "mean"  # eo's agg combines its two parts: worst_case or mean
    spec = f"fairness({rate}_{form}, group=g, ref={ref}, sample_weight=w" + (f", agg={agg})" if agg else ")")
    generator = _generator(seed)
    inputs = {"pred": torch.randn(12, generator=generator), "target": torch.arange(12) % 2,
              "g": torch.randint(0, 3, (12,), generator=generator), "w": torch.rand(12, generator=generator) + 0.1}
    loss_fn = lossdsl.compile(spec)
    inputs = {name: inputs[name] for name in loss_fn.inputs}
    leaf = inputs["pred"].clone().requires_grad_()
    value = loss_fn(**{**inputs, "pred": leaf})
    (grad,) = torch.autograd.grad(value, leaf)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    inputs[poisoned] = inputs[poisoned].clone()
    inputs[poisoned][where] = float("nan")
    assert torch.isnan(loss_fn(**inputs)), f"{spec} hid a NaN in '{poisoned}'"


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"), NotImplementedError("no Half kernel")])
def test_a_torch_error_that_is_not_the_inputs_fault_passes_unchanged(error):
    """Out of memory (a RuntimeError) is the machine's problem: no E402 blaming an input."""
    def fails(pred, target):
        raise error

    name = f"fails_with_{type(error).__name__.lower()}"  # one name each: plans are cached by text
    lossdsl.term(name)(fails)
    try:
        with pytest.raises(type(error)) as info:
            lossdsl.compile(f"{name}()")(torch.ones(2), torch.ones(2))
    finally:
        del REGISTRY[name]
    assert info.value is error


def test_a_training_call_under_inference_mode_leaves_the_step_counter_loadable():
    """The counter advanced under torch.inference_mode() must stay an ordinary buffer: load_state_dict
    and an in-place reset worked before the counter became a new tensor per step."""
    loss_fn = lossdsl.compile("mse() + warmup(10) * mae()").train()
    with torch.inference_mode():
        loss_fn(torch.randn(4), torch.randn(4))
    assert int(loss_fn.step_count) == 1 and not loss_fn.step_count.is_inference()
    loss_fn.load_state_dict(lossdsl.compile("mse() + warmup(10) * mae()").state_dict())
    assert int(loss_fn.step_count) == 0
    loss_fn.step_count.add_(3)
    pred, target = torch.ones(2), torch.zeros(2)
    torch.testing.assert_close(loss_fn.eval()(pred, target), torch.tensor(1.0 + 0.3 * 1.0))
