"""The fairness term's lean gaps on the CPU (issue 16): where the group count is known or read
(``groups=K``, or codes counted on the CPU) the specialised forward and the fused call read the
few group sums back (free there) and, when every group's rate is defined and every sum finite,
leave out the guards that change nothing then (empty groups, NaN, fewer than two groups).

Each path must give what the term's own ``forward`` gives, which takes the general ops on the
same float64 sums, value and gradient to the bit; and fairlearn's metric on hard predictions.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossdsl
import lossdsl.library.group_fairness as group_fairness
from lossdsl.library.group_fairness import Fairness

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_specialise import CountOps  # noqa: E402  (the ATen op counter of the specialised paths' tests)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HARD = 40.0  # sigmoid(+-40) is 0 or 1 to float64's last place below 0.5: soft rates are the hard ones
#: Single-rate statistics, ref=groups, agg=max: the ones the lean gaps cover (ppv: a floor, p's mass).
LEAN = ["fpr_gap", "tpr_gap", "dp_gap", "tnr_gap", "fnr_ratio", "error_rate_gap", "accuracy_ratio",
        "ppv_gap", "ppv_ratio", "fpr_ratio"]


@st.composite
def batches(draw):
    """(codes, labels, logits, groups=): K from 1 to 5 groups, some absent (codes 0 and 2 only),
    some of one class, float32 or float64 logits, sometimes a NaN or saturated logits."""
    n = draw(st.integers(1, 80))
    k = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (n,), generator=g)
    if draw(st.booleans()):
        codes = codes * 2  # slot 1 (and 3, ...) left empty: undefined rates, the general ops
    labels = torch.randint(0, 2, (n,), generator=g)
    if draw(st.booleans()):
        labels = torch.where(codes == 0, 1, labels)  # group 0 without negatives: fpr, tnr undefined
    logits = torch.randn(n, generator=g, dtype=dtype) * draw(st.sampled_from([1.0, 30.0, 200.0]))
    if draw(st.integers(0, 9)) == 0:
        logits[draw(st.integers(0, n - 1))] = float("nan")
    known = draw(st.sampled_from([None, int(codes.max()) + 1, int(codes.max()) + 3]))
    return codes, labels, logits, known


def spec_of(stat: str, known: int | None) -> str:
    return f"fairness({stat}, group=sex{'' if known is None else f', groups={known}'})"


def value_and_grad(function, logits, codes, labels):
    pred = logits.detach().clone().requires_grad_()
    value = function(pred, codes, labels)
    (grad,) = torch.autograd.grad(value, pred, allow_unused=True)
    return value.detach(), torch.zeros_like(pred) if grad is None else grad


def assert_equal(ours, theirs):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("stat", LEAN)
@SETTINGS
@given(batch=batches())
def test_the_specialised_lean_gap_equals_the_forward_to_the_bit(stat, batch):
    codes, labels, logits, known = batch
    term = lossdsl.compile(spec_of(stat, known)).terms[0]
    function = term.specialise(logits, codes, labels)
    assert function is not term.forward  # the straight line, whose batchable case is the lean gap
    assert_equal(value_and_grad(function, logits, codes, labels), value_and_grad(term.forward, logits, codes, labels))


FUSED = {
    "fpr, tpr, error rate": ["fpr_gap", "tpr_gap", "error_rate_gap"],
    "fpr, tpr": ["fpr_gap", "tpr_gap"],
    "ratios": ["fpr_ratio", "tnr_ratio", "accuracy_ratio"],
    "ppv's floor": ["ppv_gap", "fpr_gap"],  # another floor: not one batch, the general ops
}


@pytest.mark.parametrize("stats", FUSED.values(), ids=FUSED.keys())
@SETTINGS
@given(batch=batches())
def test_fused_lean_gaps_equal_each_terms_forward_to_the_bit(stats, batch):
    codes, labels, logits, known = batch
    loss_fn = lossdsl.compile(" + ".join(spec_of(stat, known) for stat in stats))
    terms = [term for term in loss_fn.terms if isinstance(term, Fairness)]
    twins = copy.deepcopy(terms)
    fused = Fairness.fuse(terms)
    pred = logits.detach().clone().requires_grad_()
    values = fused(pred, codes, labels)
    assert len(values) == len(terms)
    for value, twin in zip(values, twins):
        (grad,) = torch.autograd.grad(value, pred, retain_graph=True, allow_unused=True)
        grad = torch.zeros_like(pred) if grad is None else grad
        own = value_and_grad(twin.forward, logits, codes, labels)
        if value.isnan():  # NaN in, NaN out; the fused general ops' NaN gradient reaches more rows than one term's
            assert own[0].isnan() and grad.isnan().any()
            continue
        assert_equal((value.detach(), grad), own)


def _taken(spec: str, *inputs: torch.Tensor) -> list[int]:
    """How many statistics each call of ``_lean_gaps`` computed, and None where it declined."""
    seen = []
    original = group_fairness._lean_gaps

    def counting(rows, *args):
        value = original(rows, *args)
        seen.append(None if value is None else rows.shape[0] // 2)
        return value

    loss_fn = lossdsl.compile(spec)
    given = {"pred": inputs[0], "sex": inputs[1], "target": inputs[2]}
    with mock.patch.object(group_fairness, "_lean_gaps", counting):
        loss_fn(**{name: given[name] for name in loss_fn.plan.inputs})
    return seen


def test_the_lean_gaps_are_taken_where_the_count_is_known_or_read_and_declined_for_an_empty_group():
    g = torch.Generator().manual_seed(0)
    pred, labels, codes = torch.randn(64, generator=g), torch.randint(0, 2, (64,), generator=g), torch.arange(64) % 3
    assert _taken("fairness(fpr_gap, group=sex)", pred, codes, labels) == [1]
    assert _taken("fairness(fpr_gap, group=sex, groups=3)", pred, codes, labels) == [1]
    assert _taken("fairness(fpr_gap, group=sex) + fairness(tpr_gap, group=sex)", pred, codes, labels) == [2]
    assert _taken("fairness(fpr_gap, group=sex, groups=4)", pred, codes, labels) == [None]  # slot 3 empty
    assert _taken("fairness(fpr_gap, group=sex)", pred, codes * 40, labels) == []  # sparse codes: ranked
    with mock.patch.object(group_fairness, "host_reads_are_free", lambda tensor: False):  # CUDA, torch.compile
        assert _taken("fairness(fpr_gap, group=sex, groups=3)", pred, codes, labels) == []
    # ref=overall, agg=mean, eo (two rates): the general ops
    assert _taken("fairness(fpr_gap, group=sex, ref=overall) + fairness(eo_gap, group=sex, agg=mean)",
                  pred, codes, labels) == []


def test_the_one_liners_gap_dispatches_no_more_ops_than_the_hand_written_two_mask_gap():
    """fpr_gap over two groups on the CPU, no groups=: the codes' aminmax and its two reads, then
    no more ATen ops forward and backward than the hand-written gap with two 0/1 masks (36 at
    torch 2.13), where the general ops took 81 (the empty-group guards, the NaN check)."""
    g = torch.Generator().manual_seed(1)
    logits, labels, codes = torch.randn(256, generator=g), torch.randint(0, 2, (256,), generator=g), \
        torch.randint(0, 2, (256,), generator=g)
    term = lossdsl.compile("fairness(fpr_gap, group=sex)").terms[0]
    pred = logits.clone().requires_grad_()
    function = term.specialise(pred, codes, labels)
    with CountOps() as ours:
        function(pred, codes, labels).backward()
    fresh = logits.clone().requires_grad_()

    def two_masks():
        prob, y = torch.sigmoid(fresh), labels.to(fresh.dtype)
        negative = 1 - y
        in_one = (codes == 1).to(fresh.dtype)
        in_zero = 1 - in_one
        return ((prob * negative * in_one).sum() / (negative * in_one).sum()
                - (prob * negative * in_zero).sum() / (negative * in_zero).sum()).abs()

    with CountOps() as theirs:
        two_masks().backward()
    assert ours.ops.count("aminmax") == 1 and ours.ops.count("_local_scalar_dense") == 2
    assert len(ours.ops) <= len(theirs.ops), (ours.ops, theirs.ops)
    with CountOps() as general:
        term.forward(logits.clone().requires_grad_(), codes, labels).backward()
    assert len(ours.ops) < len(general.ops) - 30


def test_the_lean_gaps_backward_stacks_no_zeros_for_the_detached_denominators():
    """The lean gap takes each statistic's numerator and denominator row by select, not unbind:
    unbind's backward stacked the numerators' gradient with zeros for the detached denominators
    (zeros, expand, stack); the numerators' select_backward is one op. For one statistic and for
    three fused (a view of [3, 2, K]), the same values and gradients as the forward's ops."""
    g = torch.Generator().manual_seed(2)
    logits, labels, codes = torch.randn(256, generator=g), torch.randint(0, 2, (256,), generator=g), \
        torch.randint(0, 2, (256,), generator=g)
    for spec in ("fairness(fpr_gap, group=sex)",
                 "fairness(fpr_gap, group=sex) + fairness(tpr_gap, group=sex) + fairness(dp_gap, group=sex)"):
        loss_fn = lossdsl.compile(spec)
        pred = logits.clone().requires_grad_()
        loss_fn(pred, labels, sex=codes)  # specialised at the first call
        pred.grad = None
        with CountOps() as forward_ops:
            value = loss_fn(pred, labels, sex=codes)
        with CountOps() as backward_ops:
            value.backward()
        fused = len(loss_fn.terms) > 1  # (its [3] of values is unbound into the terms' values: one unbind, one stack back)
        assert forward_ops.ops.count("unbind") == fused and forward_ops.ops.count("select") >= 2, forward_ops.ops
        assert "zeros" not in backward_ops.ops and backward_ops.ops.count("stack") == fused, backward_ops.ops
        reference = pred.detach().clone().requires_grad_()
        expected = sum(term.forward(reference, codes, labels) for term in loss_fn.terms)
        expected.backward()
        assert torch.equal(value, expected) and torch.equal(pred.grad, reference.grad)


def test_one_statistic_over_two_groups_declines_the_lean_ops_as_the_general_loop_does():
    """The unrolled check of one statistic over two slots: taken where both groups have a finite,
    positive denominator; declined (the general ops, the forward's value) for an empty group, a NaN
    prediction, and a ratio whose largest rate is 0, as the loop over slots declines them."""
    g = torch.Generator().manual_seed(4)
    logits, labels = torch.randn(64, generator=g), torch.randint(0, 2, (64,), generator=g)
    codes = torch.arange(64) % 2
    assert _taken("fairness(fpr_gap, group=sex, groups=2)", logits, codes, labels) == [1]
    assert _taken("fairness(fpr_gap, group=sex, groups=2)", logits, torch.zeros(64, dtype=torch.long), labels) == [None]
    with_nan = logits.clone()
    with_nan[3] = float("nan")
    assert _taken("fairness(fpr_gap, group=sex)", with_nan, codes, labels) == [None]
    assert _taken("fairness(dp_ratio, group=sex)", torch.full((64,), -200.0), codes, labels) == [None]  # rates 0
    for spec, pred, group in (("fairness(fpr_gap, group=sex, groups=2)", logits, torch.zeros(64, dtype=torch.long)),
                              ("fairness(fpr_gap, group=sex)", with_nan, codes),
                              ("fairness(dp_ratio, group=sex)", torch.full((64,), -200.0), codes),
                              ("fairness(fpr_ratio, group=sex)", logits, codes)):
        term = lossdsl.compile(spec).terms[0]
        arguments = (pred, group) if spec.startswith("fairness(dp_") else (pred, group, labels)  # dp reads no labels
        value, expected = term.specialise(*arguments)(*arguments), term.forward(*arguments)
        assert torch.allclose(value, expected, rtol=0, atol=0, equal_nan=True), (spec, value, expected)  # bits, NaN too


def _fairlearn(metric, labels, hard, codes):
    return MetricFrame(metrics=metric, y_true=labels.numpy(), y_pred=hard.numpy(),
                       sensitive_features=codes.numpy())


@pytest.mark.parametrize("form", ["gap", "ratio"])
@pytest.mark.parametrize(("stat", "metric"), [("fpr", false_positive_rate), ("tpr", true_positive_rate),
                                              ("dp", selection_rate)])
@pytest.mark.parametrize("groups", [2, 3])
def test_lean_gaps_on_hard_predictions_are_fairlearns(stat, metric, form, groups):
    g = torch.Generator().manual_seed(groups)
    n = 300
    codes, labels = torch.randint(0, groups, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    logits = torch.where(torch.rand(n, generator=g) < 0.3 + 0.15 * codes, HARD, -HARD).double()  # groups differ
    frame = _fairlearn(metric, labels, (logits > 0).long(), codes)
    expected = frame.difference() if form == "gap" else 1 - frame.ratio()
    specs = [f"fairness({stat}_{form}, group=sex)", f"fairness({stat}_{form}, group=sex, groups={groups})"]
    if stat != "dp":  # fused with a statistic of the same inputs and form
        specs.append(f"fairness({stat}_{form}, group=sex) + fairness(error_rate_{form}, group=sex)")
    for spec in specs:
        assert _taken(spec, logits, codes, labels)[0] is not None  # the lean path, not the guards
        loss_fn = lossdsl.compile(spec)
        terms = [term for term in loss_fn.terms if isinstance(term, Fairness)]
        value = (Fairness.fuse(terms)(logits, codes, labels)[0] if len(terms) > 1
                 else terms[0].specialise(logits, codes, labels)(logits, codes, labels))
        assert value.dtype == torch.float64
        np.testing.assert_allclose(value.item(), expected, rtol=1e-12, atol=1e-15)
        assert value.item() > 0.01  # a real disparity, not 0 = 0


def test_a_tie_of_two_groups_gives_a_zero_gradient_as_the_general_ops():
    """Equal rates: |r0 - r1| has the sign 0's gradient, and amax - amin their halves cancel."""
    logits = torch.tensor([0.3, -1.0, 0.3, -1.0], dtype=torch.float64)
    codes, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0])
    term = lossdsl.compile("fairness(fpr_gap, group=sex)").terms[0]
    value, grad = value_and_grad(term.specialise(logits, codes, labels), logits, codes, labels)
    assert value.item() == 0.0 and torch.equal(grad, torch.zeros(4, dtype=torch.float64))
    assert_equal((value, grad), value_and_grad(term.forward, logits, codes, labels))


def test_a_ratio_of_rates_all_zero_and_a_nan_sum_take_the_general_ops():
    """Every rate 0: the ratio's largest is not positive, and the general ops give 0 (not 0 / 0);
    a NaN logit makes a sum NaN, and the general ops give NaN, as the forward."""
    codes, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 0])
    term = lossdsl.compile("fairness(dp_ratio, group=sex)").terms[0]
    logits = torch.full((4,), -HARD * 30, dtype=torch.float64)  # sigmoid exactly 0
    function = term.specialise(logits, codes, labels)
    assert_equal(value_and_grad(function, logits, codes, labels), value_and_grad(term.forward, logits, codes, labels))
    assert function(logits, codes, labels).item() == 0.0
    logits = torch.tensor([0.1, float("nan"), 0.2, 0.3], dtype=torch.float64)
    assert torch.isnan(function(logits, codes, labels))


# --------------------------------------------------------------------------------------------
# Beyond _SUM_CHUNK rows: float64 sums a chunk at a time
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 200), chunk=st.integers(1, 64), k=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_chunked_row_sums_are_one_scatters_sums_and_gradients_to_the_bit(n, chunk, k, seed, dtype):
    """Each slot's values are added in row order either way, so the sums agree exactly; the gradient
    is gathered from the sums' gradient cast first, the same values as a float64 gather cast after;
    a column of the labels alone (``1 - y``) takes no gradient."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)
    slots, labels = torch.randint(0, k, (n,), generator=g), torch.randint(0, 2, (n,), generator=g).to(dtype)
    prob = torch.sigmoid(pred)
    columns = [prob * (1 - labels), 1 - labels, prob]
    weights = torch.randn(3, k, generator=g, dtype=torch.float64)
    with mock.patch.object(group_fairness, "_SUM_CHUNK", chunk), mock.patch.object(group_fairness, "_CHUNKED_FROM", 0):
        ours = group_fairness._row_sums(columns, slots, k)
    assert ours.grad_fn is not None and "ChunkedRowSums" in type(ours.grad_fn).__name__
    theirs = group_fairness._summed(torch.stack(columns), slots, k).T
    assert torch.equal(ours, theirs) and ours.dtype == torch.float64
    (grad,) = torch.autograd.grad((ours * weights).sum(), pred, retain_graph=True)
    (expected,) = torch.autograd.grad((theirs * weights).sum(), pred)
    assert torch.equal(grad, expected) and grad.abs().sum() > 0


def _peak_bytes(fn) -> int:
    """The peak of the bytes ``fn`` holds above what it started with, as the benchmarks measure it
    (``benchmarks/harness.py``'s ``peak_memory_bytes``: torch.profiler's allocation events in time order)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "harness.py"
    spec = importlib.util.spec_from_file_location("benchmark_harness_for_tests", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return harness.peak_memory_bytes(fn, torch.device("cpu"))


@pytest.mark.parametrize("spec", ["fairness(fpr_gap, group=sex)",
                                  "fairness(fpr_gap, group=sex) + fairness(tpr_gap, group=sex)"])
def test_a_large_batch_makes_no_float64_copy_of_its_columns(spec):
    """N = 2^20 rows, forward and backward: the general ops hold a float64 [k, N] copy of the
    columns (8 k N bytes) and gather a float64 [k, N] gradient; the chunked sums hold a chunk's
    (8 k 2^16 bytes), so their peak is lower by at least a float64 column, and no higher than the
    float32 hand-written gap's that knows two groups (benchmarks/overhead.py's two bins). The value
    is the general ops' to the bit."""
    n = 1 << 20
    g = torch.Generator().manual_seed(7)
    logits, labels = torch.randn(n, generator=g), torch.randint(0, 2, (n,), generator=g)
    codes = torch.randint(0, 2, (n,), generator=g)
    loss_fn = lossdsl.compile(spec)
    terms = [term for term in loss_fn.terms if isinstance(term, Fairness)]
    pred = logits.clone().requires_grad_()
    lean = Fairness.fuse(terms) if len(terms) > 1 else terms[0].specialise(pred, codes, labels)

    def ours():
        values = lean(pred, codes, labels)
        sum(values if isinstance(values, tuple) else (values,)).backward()

    def general():
        sum(term.forward(pred, codes, labels) for term in terms).backward()

    def two_bins():
        prob, negative = torch.sigmoid(pred), 1 - labels.float()
        numerators = [prob * negative, prob * labels.float()][: len(terms)]
        denominators = [negative, labels.float()][: len(terms)]
        total = 0
        for numerator, denominator in zip(numerators, denominators):
            sums = numerator.new_zeros(2, 2).index_add_(0, codes, torch.stack([numerator, denominator], dim=1))
            rate = sums[:, 0] / sums[:, 1]
            total = total + (rate[0] - rate[1]).abs()
        total.backward()

    for fn in (ours, general, two_bins):
        fn()  # one-off allocations made
    pred.grad = None
    peaks = {}
    for name, fn in (("ours", ours), ("general", general), ("two bins", two_bins)):
        peaks[name] = _peak_bytes(fn)
        pred.grad = None
    assert peaks["ours"] <= peaks["general"] - 8 * n, peaks  # at least a float64 column less
    assert peaks["ours"] <= peaks["two bins"], peaks
    with torch.no_grad():
        values = lean(logits, codes, labels)
        values = values if isinstance(values, tuple) else (values,)
        assert all(torch.equal(value, term.forward(logits, codes, labels)) for value, term in zip(values, terms))


@pytest.mark.parametrize("stats", [("fpr_gap",), ("tpr_gap",), ("fpr_gap", "tpr_gap")])
def test_a_target_that_takes_a_gradient_gets_the_general_paths_gradient(stats):
    """Soft labels that require grad make the label-only denominators differentiable: the lean
    gaps (specialised and fused) must not detach them (review finding)."""
    generator = torch.Generator().manual_seed(0)
    n = 64
    logits = torch.randn(n, generator=generator, dtype=torch.float64)
    codes = torch.arange(n) % 3
    soft = torch.rand(n, generator=generator, dtype=torch.float64)
    spec = " + ".join(f"fairness({stat}, group=sex)" for stat in stats)
    loss_fn = lossdsl.compile(spec)
    grads = []
    for path in ("reference", "generated"):
        pred, target = logits.clone().requires_grad_(), soft.clone().requires_grad_()
        forward = (lambda *a, **k: type(loss_fn).forward(loss_fn, *a, **k)) if path == "reference" else loss_fn
        value = forward(pred, target, sex=codes)
        grads.append((value.detach(), *torch.autograd.grad(value, (pred, target))))
    for reference, generated in zip(grads[0], grads[1]):
        torch.testing.assert_close(generated, reference, rtol=1e-12, atol=1e-15)


def test_forward_mode_ad_through_a_large_batch_takes_the_ops_with_a_jvp():
    """Beyond _CHUNKED_FROM rows the sums come from a custom Function without a jvp: under
    forward-mode AD the module takes the ops, and its tangent equals the term's own forward's."""
    import torch.autograd.forward_ad as forward_ad

    generator = torch.Generator().manual_seed(1)
    n = 2 * group_fairness._CHUNKED_FROM
    codes = torch.randint(0, 3, (n,), generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    logits = torch.randn(n, generator=generator, dtype=torch.float64)
    tangent = torch.randn(n, generator=generator, dtype=torch.float64)
    loss_fn = lossdsl.compile("fairness(fpr_gap, group=sex)")
    tangents = []
    for call in (lambda p: loss_fn(p, labels, sex=codes), lambda p: loss_fn.terms[0].forward(p, codes, labels)):
        with forward_ad.dual_level():
            tangents.append(forward_ad.unpack_dual(call(forward_ad.make_dual(logits, tangent))).tangent)
    torch.testing.assert_close(tangents[0], tangents[1], rtol=1e-12, atol=1e-15)
