"""Learned multi-task weights: ``uncertainty(...)``, ``dwa(...)``, the optimiser check, ``term_losses``."""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F

import lossdsl
from lossdsl.explain import explain
from lossdsl.verify import verify
from lossdsl import LossSpecError, LossSpecWarning
from lossdsl.weightings import CHECK_AFTER_BACKWARDS

TWO_TASKS = "loss = uncertainty(mse(pred=p1, target=y1), mse(pred=p2, target=y2))"


def _inputs(seed: int = 0, n: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "p1": torch.randn(n, generator=generator, requires_grad=True),
        "y1": torch.randn(n, generator=generator),
        "p2": torch.randn(n, generator=generator, requires_grad=True),
        "y2": 3 * torch.randn(n, generator=generator),
    }


# --- uncertainty: value, gradients, module state ------------------------------------------------


def test_uncertainty_value_and_gradients_match_the_closed_form():
    loss_fn = lossdsl.compile(TWO_TASKS)
    s = torch.tensor([0.3, -0.7])
    with torch.no_grad():
        loss_fn.weightings[0].log_variances.copy_(s)
    x = _inputs()
    value = loss_fn(**x)
    # Kendall et al. 2018, regression form with s_i = log sigma_i^2: sum_i 0.5 exp(-s_i) L_i + 0.5 s_i.
    l1, l2 = F.mse_loss(x["p1"], x["y1"]), F.mse_loss(x["p2"], x["y2"])
    expected = 0.5 * math.exp(-0.3) * l1 + 0.5 * 0.3 + 0.5 * math.exp(0.7) * l2 + 0.5 * -0.7
    torch.testing.assert_close(value, expected)
    grads = torch.autograd.grad(value, [loss_fn.weightings[0].log_variances, x["p1"], x["p2"]])
    # d/ds_i = 0.5 - 0.5 exp(-s_i) L_i; d/dp_i = 0.5 exp(-s_i) dL_i/dp_i, dL/dp = 2 (p - y) / n.
    torch.testing.assert_close(grads[0], 0.5 - 0.5 * torch.exp(-s) * torch.stack([l1, l2]).detach())
    n = x["p1"].numel()
    torch.testing.assert_close(grads[1], 0.5 * math.exp(-0.3) * 2 * (x["p1"] - x["y1"]).detach() / n)
    torch.testing.assert_close(grads[2], 0.5 * math.exp(0.7) * 2 * (x["p2"] - x["y2"]).detach() / n)


def test_uncertainty_starts_at_weight_one_half_and_is_a_parameter_of_the_module():
    loss_fn = lossdsl.compile(TWO_TASKS)
    parameters = dict(loss_fn.named_parameters())
    assert list(parameters) == ["weightings.0.log_variances"]
    assert parameters["weightings.0.log_variances"].shape == (2,)
    torch.testing.assert_close(loss_fn.weightings[0].weights(), torch.tensor([0.5, 0.5]))
    x = _inputs()
    l1, l2 = F.mse_loss(x["p1"], x["y1"]), F.mse_loss(x["p2"], x["y2"])
    torch.testing.assert_close(loss_fn(**x), 0.5 * (l1 + l2))  # s = 0: half of each loss, no offset


def test_uncertainty_state_travels_with_state_dict_pickle_and_deepcopy():
    loss_fn = lossdsl.compile(TWO_TASKS)
    with torch.no_grad():
        loss_fn.weightings[0].log_variances.copy_(torch.tensor([1.5, -2.0]))
    x = _inputs()
    expected = loss_fn(**x)
    buffer = io.BytesIO()
    torch.save(loss_fn, buffer)
    buffer.seek(0)
    copies = [pickle.loads(pickle.dumps(loss_fn)), copy.deepcopy(loss_fn), torch.load(buffer, weights_only=False)]
    fresh = lossdsl.compile(TWO_TASKS)
    fresh.load_state_dict(loss_fn.state_dict())
    for other in [*copies, fresh]:
        learned = other.weightings[0].log_variances
        assert isinstance(learned, torch.nn.Parameter) and learned.requires_grad
        assert learned is not loss_fn.weightings[0].log_variances
        torch.testing.assert_close(learned.detach(), torch.tensor([1.5, -2.0]))
        torch.testing.assert_close(other(**x), expected)


def test_uncertainty_weighs_lets_and_weighted_terms_and_sits_inside_arithmetic():
    spec = "let a = mse(pred=p1, target=y1)\nloss = 2 * uncertainty(a, 0.5 * mse(pred=p2, target=y2)) + mae(pred=p1, target=y1)"
    loss_fn = lossdsl.compile(spec)
    with torch.no_grad():
        loss_fn.weightings[0].log_variances.copy_(torch.tensor([0.2, 0.4]))
    x = _inputs()
    l1, l2 = F.mse_loss(x["p1"], x["y1"]), 0.5 * F.mse_loss(x["p2"], x["y2"])
    inner = 0.5 * math.exp(-0.2) * l1 + 0.1 + 0.5 * math.exp(-0.4) * l2 + 0.2
    torch.testing.assert_close(loss_fn(**x), 2 * inner + F.l1_loss(x["p1"], x["y1"]))
    assert set(loss_fn.last_terms) == {"a", "mse", "mae", "weight/a", "weight/(0.5*mse)", "total"}


def test_uncertainty_recovers_the_ratio_of_the_noise_variances():
    """Two regression heads with noise std 1 and 3: at the optimum s_i = log E[(y_i - f_i)^2], so
    exp(s_2) / exp(s_1) approaches the noise-variance ratio 9 (Kendall et al. 2018, section 3.2)."""
    torch.manual_seed(0)
    n, d = 4000, 5
    x = torch.randn(n, d)
    w = torch.randn(d, 2)
    y = x @ w + torch.randn(n, 2) * torch.tensor([1.0, 3.0])
    model = torch.nn.Linear(d, 2)
    loss_fn = lossdsl.compile(TWO_TASKS)
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=0.05)
    for _ in range(400):
        out = model(x)
        loss = loss_fn(p1=out[:, 0], y1=y[:, 0], p2=out[:, 1], y2=y[:, 1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    s = loss_fn.weightings[0].log_variances.detach()
    ratio = float(torch.exp(s[1] - s[0]))
    assert abs(ratio - 9) / 9 < 0.10, ratio
    # And it is where the residuals put it: exp(s_i) is each head's mean squared error.
    with torch.no_grad():
        residual = ((model(x) - y) ** 2).mean(0)
    torch.testing.assert_close(torch.exp(s), residual, rtol=0.02, atol=0)


# --- the optimiser check ------------------------------------------------------------------------


def _train(loss_fn, parameters, steps: int) -> list[warnings.WarningMessage]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD([*model.parameters(), *parameters], lr=0.01)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            out = model(x)
            loss = loss_fn(p1=out[:, 0], y1=y[:, 0], p2=out[:, 1], y2=y[:, 1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return [w for w in caught if issubclass(w.category, LossSpecWarning)]


def test_learned_weights_left_out_of_the_optimiser_warn_once_naming_the_term_and_line():
    loss_fn = lossdsl.compile("# two heads\n" + TWO_TASKS)
    caught = _train(loss_fn, [], steps=3 * CHECK_AFTER_BACKWARDS)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "uncertainty() at <spec>:2:8 (weighing mse_1, mse_2)" in message
    assert "not in the optimiser" in message and "loss_fn.parameters()" in message
    assert caught[0].filename == __file__  # points at the caller of loss_fn(...)


def test_learned_weights_in_the_optimiser_stay_quiet():
    loss_fn = lossdsl.compile(TWO_TASKS)
    assert _train(loss_fn, list(loss_fn.parameters()), steps=3 * CHECK_AFTER_BACKWARDS) == []
    assert not torch.equal(loss_fn.weightings[0].log_variances.detach(), torch.zeros(2))


def test_the_check_waits_for_backward_passes_and_can_be_turned_off():
    loss_fn = lossdsl.compile(TWO_TASKS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossSpecWarning)
        for _ in range(3 * CHECK_AFTER_BACKWARDS):  # no backward: nothing is known about the optimiser
            loss_fn(**_inputs())
        loss_fn.eval()
        for _ in range(3 * CHECK_AFTER_BACKWARDS):  # eval mode: nothing watched
            loss_fn(**_inputs()).backward()
    loss_fn = lossdsl.compile(TWO_TASKS)
    loss_fn.watch_learned_weights = False
    assert _train(loss_fn, [], steps=3 * CHECK_AFTER_BACKWARDS) == []


# --- dwa ----------------------------------------------------------------------------------------


def test_dwa_follows_the_formula_over_four_steps():
    """Liu et al. 2019: w_k(t) = K softmax_k(r(t-1) / T), r_k(t-1) = L_k(t-1) / L_k(t-2); w = 1 at t = 0, 1."""
    loss_fn = lossdsl.compile("loss = dwa(mse(pred=p1, target=y1), mse(pred=p2, target=y2), mse(pred=p1, target=y2), T=2)")
    history: list[torch.Tensor] = []
    for step in range(4):
        x = _inputs(seed=step)
        losses = torch.stack([F.mse_loss(x["p1"], x["y1"]), F.mse_loss(x["p2"], x["y2"]),
                              F.mse_loss(x["p1"], x["y2"])]).detach()
        if step < 2:
            weights = torch.ones(3)
        else:
            weights = 3 * torch.softmax(history[-1] / history[-2] / 2, dim=0)
        value = loss_fn(**x)
        torch.testing.assert_close(value, (weights * losses).sum())
        # The weights are detached: the gradient is each loss's own, times its weight.
        grad = torch.autograd.grad(value, x["p2"])[0]
        torch.testing.assert_close(grad, weights[1] * 2 * (x["p2"] - x["y2"]).detach() / 8)
        history.append(losses)
    assert int(loss_fn.weightings[0].recorded) == 2
    torch.testing.assert_close(loss_fn.weightings[0].history, torch.stack([history[3], history[2]]))


def test_dwa_state_is_in_buffers_and_eval_mode_records_no_step():
    loss_fn = lossdsl.compile("loss = dwa(mse(pred=p1, target=y1), mse(pred=p2, target=y2), T=0.5)")
    assert list(loss_fn.parameters()) == []
    for step in range(3):
        loss_fn(**_inputs(seed=step))
    state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    assert set(state) == {"weightings.0.history", "weightings.0.recorded"}
    copied = copy.deepcopy(loss_fn)
    torch.testing.assert_close(copied.weightings[0].weights(), loss_fn.weightings[0].weights())
    loss_fn.eval()
    loss_fn(**_inputs(seed=9))
    loss_fn.per_sample(**_inputs(seed=10))
    for key, value in loss_fn.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_weightings_compile_fullgraph():
    loss_fn = lossdsl.compile("loss = uncertainty(mse(pred=p1, target=y1), dwa(mse(pred=p2, target=y2), mae(pred=p2, target=y2)))")
    reference = copy.deepcopy(loss_fn)
    compiled = torch.compile(loss_fn, fullgraph=True)
    for step in range(3):
        x = _inputs(seed=step)
        torch.testing.assert_close(compiled(**x), reference(**x))
    torch.testing.assert_close(loss_fn.weightings[1].history, reference.weightings[1].history)


# --- term_losses --------------------------------------------------------------------------------


def test_term_losses_are_each_terms_own_value_with_its_own_gradient():
    loss_fn = lossdsl.compile("loss = 0.3 * mse(pred=p1, target=y1) + uncertainty(mae(pred=p1, target=y2), mse(pred=p2, target=y2))")
    x = _inputs()
    losses = loss_fn.term_losses(**x)
    assert list(losses) == ["mse_1", "mae", "mse_2"]
    alone = {
        "mse_1": lambda: F.mse_loss(x["p1"], x["y1"]),
        "mae": lambda: F.l1_loss(x["p1"], x["y2"]),
        "mse_2": lambda: F.mse_loss(x["p2"], x["y2"]),
    }
    for label, value in losses.items():
        reference = alone[label]()
        torch.testing.assert_close(value, reference)  # unweighed
        ours = torch.autograd.grad(value, [x["p1"], x["p2"]], retain_graph=True, allow_unused=True)
        theirs = torch.autograd.grad(reference, [x["p1"], x["p2"]], allow_unused=True)
        for a, b in zip(ours, theirs):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a, b)


# --- checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, code, message", [
    ("loss = uncertainty(mse())", "E207", "uncertainty() weighs two losses or more"),
    ("loss = uncertainty(mse(), 2)", "E302", "uncertainty() weighs losses, but 2 is a number"),
    ("loss = uncertainty(mse(), ce(reduction=none))", "E302", "ce() has reduction=none"),
    ("loss = dwa(mse(), ce(), temperature=2)", "E203", "unknown argument 'temperature' for dwa()"),
    ("loss = dwa(mse(), ce(), T=0)", "E205", "'T' of dwa() must be greater than 0"),
    ("loss = dwa(mse(), ce(), T=mse())", "E204", "'T' of dwa() takes a number"),
    ("loss = uncertainty(mse(), ce(), T=2)", "E203", "unknown argument 'T' for uncertainty()"),
    ("loss = ce()\nsubject to uncertainty(mse(), l1()) <= 1", "E302", "a constraint bounds a loss, not one uncertainty()"),
])
def test_spec_errors(spec, code, message):
    with pytest.raises(LossSpecError) as raised:
        lossdsl.compile(spec)
    diagnostic = raised.value.diagnostics[0]
    assert diagnostic.code == code
    assert message in diagnostic.message


def test_explain_and_verify_know_the_weightings():
    plan = lossdsl.driver.plan_for(TWO_TASKS)
    text = explain(plan, trace=False)
    assert "uncertainty(...): Loss" in text
    checks = verify(plan, steps=20)
    assert all(check.passed for check in checks), checks


@pytest.mark.parametrize("weighting", ["uncertainty", "dwa"])
def test_losses_on_another_device_than_the_weights_are_E402_naming_the_weighting(weighting):
    """A loss module left on the CPU while the model is on a GPU (meta tensors stand in for one)."""
    loss_fn = lossdsl.compile(TWO_TASKS.replace("uncertainty", weighting))
    x = {name: torch.zeros(4, device="meta") for name in ("p1", "y1", "p2", "y2")}
    with pytest.raises(LossSpecError) as raised:
        loss_fn(**x)
    diagnostic = raised.value.diagnostics[0]
    assert diagnostic.code == "E402"
    assert f"{weighting}() at <spec>:1:8 (weighing mse_1, mse_2): the losses are on meta" in diagnostic.message
    assert "loss_fn.to(device)" in diagnostic.message


def test_the_training_guide_section_runs():
    """docs/training.md's "Learned multi-task weights": its specs check and its Python runs as shown."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("## Learned multi-task weights\n", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"^```loss\n(.*?)^```", section, re.M | re.S):
        lossdsl.compile(block)
    namespace: dict = {}
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert len(blocks) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossSpecWarning)  # the loop gives the optimiser the learned weights
        exec(compile(blocks[0], "docs/training.md", "exec"), namespace)  # the guide's own code, not a spec
    learned = namespace["loss_fn"].weightings[0].log_variances.detach()
    assert not torch.equal(learned, torch.zeros(2))
    exec(compile(blocks[1], "docs/training.md", "exec"), namespace)
    assert list(namespace["losses"]) == ["mse_1", "mse_2"]


def test_the_python_builders_write_weightings():
    from lossdsl import T

    spec = T.uncertainty(T.mse(pred="p1", target="y1"), 0.5 * T.mse(pred="p2", target="y2"))
    assert str(spec) == "uncertainty(mse(pred=p1, target=y1), 0.5 * mse(pred=p2, target=y2))"
    assert str(T.dwa(T.mse(), T.mae(), T=3)) == "dwa(mse(), mae(), T=3)"
    assert {"uncertainty", "dwa"} <= set(dir(T))
    loss_fn = spec.compile()
    x = _inputs()
    expected = 0.5 * F.mse_loss(x["p1"], x["y1"]) + 0.5 * 0.5 * F.mse_loss(x["p2"], x["y2"])  # s = 0
    torch.testing.assert_close(loss_fn(**x), expected)


# --- dwa under torch.distributed: every rank keeps the same history, so weighs alike ------------

DWA = "loss = dwa(mse(pred=p1, target=y1), mse(pred=p2, target=y2))"


def _dwa_history(rank: int, world: int, steps: int = 3) -> torch.Tensor:
    loss_fn = lossdsl.compile(DWA)
    for step in range(steps):
        x = _inputs(seed=step, n=8 * world)
        part = slice(rank * 8, (rank + 1) * 8)
        loss_fn(**{name: tensor[part] for name, tensor in x.items()})
    return loss_fn.weightings[0].history


def _dwa_worker(rank: int, init_file: str, out_dir: str) -> None:
    import datetime
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        torch.save(_dwa_history(rank, 2), os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while another still talks to it (a rare SIGABRT in CI)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed with gloo")
def test_dwa_history_is_the_mean_over_ranks():
    import os
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_dwa_worker, args=(os.path.join(out_dir, "init"), out_dir), nprocs=2, join=True,
                           start_method="spawn")
        histories = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]
    alone = [_dwa_history(rank, 2) for rank in range(2)]  # each half alone, no process group
    assert not torch.allclose(alone[0], alone[1])  # the halves differ, so local weights would too
    for history in histories:
        torch.testing.assert_close(history, (alone[0] + alone[1]) / 2)


# --- properties ---------------------------------------------------------------------------------

_s = st.floats(-8, 8, allow_nan=False, width=32)
_loss = st.floats(0, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_s, _loss), min_size=2, max_size=5))
def test_uncertainty_is_the_closed_form_for_any_log_variances_and_losses(pairs):
    s = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    losses = [torch.tensor(p[1], dtype=torch.float64, requires_grad=True) for p in pairs]
    spec = "loss = uncertainty(" + ", ".join(f"mse(pred=p{i})" for i in range(len(pairs))) + ")"
    weighting = lossdsl.compile(spec).double().weightings[0]
    with torch.no_grad():
        weighting.log_variances.copy_(s)
    value = weighting(losses)
    expected = sum(0.5 * math.exp(-si) * li + 0.5 * si for si, li in zip(s.tolist(), (p[1] for p in pairs)))
    assert math.isfinite(float(value.detach()))
    torch.testing.assert_close(float(value.detach()), expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(value, [weighting.log_variances, *losses])
    loss_values = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    torch.testing.assert_close(grads[0], 0.5 - 0.5 * torch.exp(-s) * loss_values)
    torch.testing.assert_close(torch.stack(grads[1:]), 0.5 * torch.exp(-s))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3)), min_size=2, max_size=5),
       st.floats(0.05, 20))
def test_dwa_weights_are_positive_sum_to_k_and_follow_the_slower_loss(pairs, temperature):
    count = len(pairs)
    spec = f"loss = dwa({', '.join(f'mse(pred=p{i})' for i in range(count))}, T={temperature!r})"
    weighting = lossdsl.compile(spec).double().weightings[0]
    for column in (1, 0):  # L(t-2), then L(t-1)
        weighting([torch.tensor(p[column], dtype=torch.float64) for p in pairs])
    weights = weighting.weights()
    ratios = torch.tensor([p[0] / p[1] for p in pairs], dtype=torch.float64)
    torch.testing.assert_close(weights, count * torch.softmax(ratios / temperature, 0))
    assert bool((weights >= 0).all())
    if float(ratios.max() - ratios.min()) / temperature < 700:  # beyond, exp underflows a weight to 0, as the formula's
        assert bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(), torch.tensor(float(count), dtype=torch.float64))
    slowest, fastest = int(ratios.argmax()), int(ratios.argmin())
    assert weights[slowest] >= weights[fastest]


def test_per_sample_with_uncertainty_averages_to_the_loss():
    loss_fn = lossdsl.compile(TWO_TASKS)
    with torch.no_grad():
        loss_fn.weightings[0].log_variances.copy_(torch.tensor([0.4, -1.0]))
    x = _inputs()
    per_sample = loss_fn.per_sample(**x)
    assert per_sample.shape == (8,)
    torch.testing.assert_close(per_sample.mean(), loss_fn(**x))


def test_last_terms_report_the_learned_weights_under_stable_keys():
    """uncertainty's weight on each loss, 0.5 * exp(-s_i), and dwa's, as weight/<loss> (logged by Lightning)."""
    a, b, y1, y2 = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    loss_fn = lossdsl.compile("loss = uncertainty(mse(pred=a, target=y1), mse(pred=b, target=y2))")
    loss_fn(a=a, b=b, y1=y1, y2=y2)
    assert list(loss_fn.last_terms) == ["mse_1", "mse_2", "weight/mse_1", "weight/mse_2", "total"]
    with torch.no_grad():
        loss_fn.weightings[0].log_variances.copy_(torch.tensor([1.0, -0.5]))
    expected = 0.5 * torch.exp(-torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(loss_fn.last_terms["weight/mse_1"], expected[0])
    torch.testing.assert_close(loss_fn.last_terms["weight/mse_2"], expected[1])

    dwa = lossdsl.compile("loss = dwa(mse(pred=a, target=y1), mse(pred=b, target=y2), T=2)")
    for _ in range(3):
        dwa(a=a, b=b, y1=y1, y2=y2)
    reported = torch.stack([dwa.last_terms["weight/mse_1"], dwa.last_terms["weight/mse_2"]])
    torch.testing.assert_close(reported, dwa.weightings[0].weights())
