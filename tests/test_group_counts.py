"""How fairness() maps group codes to slots (issue 16): on the CPU without ``groups=`` the count is
read from the data and the codes index that many slots; on CUDA and under torch.compile they are
ranked in the batch as before; ``groups=K`` far above the batch ranks its codes instead of working
over K slots. Every path gives the ranked path's value and gradient, and fairlearn's metric."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossdsl
import lossdsl.library.group_fairness as group_fairness
from lossdsl.library.group_fairness import fpr_gap_ranked

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HARD = 40.0  # sigmoid(+-40): 0/1 far below the tolerance, so soft rates are fairlearn's hard ones

# Forms whose value is a largest and a smallest rate: the slot layout changes no rounding, so the
# counted and the ranked paths agree to the bit. The others sum over the slots (the overall rate, a
# mean over pairs, smoothmax), where the empty slots sit elsewhere in the two layouts: a few ulps.
EXACT = ["fpr_gap", "tpr_gap", "dp_gap", "eo_gap", "ppv_gap", "fnr_ratio", "accuracy_ratio",
         "balanced_accuracy_gap", "mean_pred_gap"]
ROUNDED = ["fpr_gap, ref=overall", "dp_ratio, agg=mean", "tpr_gap, agg=smoothmax(0.1)",
           "error_rate_gap, ref=overall, agg=smoothmax(0.5)"]


def ranked_only():
    """The path CUDA and torch.compile take (no value read), forced on the CPU."""
    return mock.patch.object(group_fairness, "host_reads_are_free", lambda codes: False)


def value_and_grad(loss_fn, pred, **inputs):
    pred = pred.detach().clone().requires_grad_()
    value = loss_fn(pred=pred, **inputs)
    (grad,) = torch.autograd.grad(value, pred)
    return value.detach(), grad


@st.composite
def batches(draw):
    """(codes, labels, logits): codes dense, sparse ({0, 7}), negative, or bool; some groups one class."""
    n = draw(st.integers(1, 48))
    kind = draw(st.sampled_from(["dense", "sparse", "negative", "bool"]))
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)
    k = draw(st.integers(1, 6))
    codes = torch.randint(0, k, (n,), generator=g)
    if kind == "sparse":
        codes = codes * 7
    elif kind == "negative":
        codes = codes - 2
    elif kind == "bool":
        codes = codes % 2 == 1
    labels = torch.randint(0, 2, (n,), generator=g)
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    return codes, labels, logits


@pytest.mark.parametrize("stat", EXACT)
@SETTINGS
@given(batch=batches())
def test_counted_slots_equal_ranked_slots_exactly(stat, batch):
    codes, labels, logits = batch
    loss_fn = lossdsl.compile(f"fairness({stat}, group=sex)")
    inputs = {"sex": codes} | ({"target": labels} if "target" in loss_fn.inputs else {})
    counted = value_and_grad(loss_fn, logits, **inputs)
    with ranked_only():
        ranked = value_and_grad(loss_fn, logits, **inputs)
    assert torch.equal(counted[0], ranked[0]) and torch.equal(counted[1], ranked[1])
    assert counted[0].isfinite() and counted[1].isfinite().all()


@pytest.mark.parametrize("stat", ROUNDED)
@SETTINGS
@given(batch=batches())
def test_counted_slots_equal_ranked_slots_to_rounding_where_the_form_sums_over_groups(stat, batch):
    codes, labels, logits = batch
    loss_fn = lossdsl.compile(f"fairness({stat}, group=sex)")
    counted = value_and_grad(loss_fn, logits, sex=codes, target=labels)
    with ranked_only():
        ranked = value_and_grad(loss_fn, logits, sex=codes, target=labels)
    eps = torch.finfo(torch.float64).eps
    torch.testing.assert_close(counted, ranked, rtol=8 * eps, atol=8 * eps)


def test_the_cpu_reads_the_count_and_the_other_paths_rank():
    """Slots: the data's count (largest code + 1) when it is at most N; N ranked slots for negative
    codes, codes sparser than the batch, or without a read."""
    term = lossdsl.compile("fairness(fpr_gap, group=sex)").terms[0]
    codes = torch.tensor([0, 7, 7, 0, 3, 1, 0, 7])
    slots, count = term._slots([codes])
    assert count == 8 and torch.equal(slots, codes)  # 7 + 1 slots needed, 8 rows: counted
    slots, count = term._slots([torch.tensor([0, 9, 9, 0])])
    assert count == 4 and slots.tolist() == [0, 1, 1, 0]  # 10 slots for 4 rows: ranked
    slots, count = term._slots([torch.tensor([-1, 2, 2, -1])])
    assert count == 4 and slots.tolist() == [0, 1, 1, 0]  # negative: ranked
    with ranked_only():
        slots, count = term._slots([codes])
    assert count == 8 and slots.tolist() == [0, 3, 3, 0, 2, 1, 0, 3]


def test_an_intersection_counts_its_combinations_in_the_ranked_order():
    """group=(sex, race): slots sex * (races) + race, ordered as the lexicographic ranking orders them."""
    term = lossdsl.compile("fairness(dp_gap, group=(sex, race))").terms[0]
    sex, race = torch.tensor([1, 0, 1, 0, 1, 0]), torch.tensor([2, 0, 0, 2, 2, 1])
    slots, count = term._slots([sex, race])
    assert count == 6 and slots.tolist() == [5, 0, 3, 2, 5, 1]
    with ranked_only():
        ranked, _ = term._slots([sex, race])
    assert ranked.tolist() == [4, 0, 3, 2, 4, 1]  # the same order, without the empty slot (1, 1)
    loss_fn = lossdsl.compile("fairness(dp_gap, group=(sex, race))")
    logits = torch.randn(6, dtype=torch.float64)
    counted = value_and_grad(loss_fn, logits, sex=sex, race=race)
    with ranked_only():
        assert all(map(torch.equal, counted, value_and_grad(loss_fn, logits, sex=sex, race=race)))


def _fairlearn(metric, labels, hard, codes):
    return MetricFrame(metrics=metric, y_true=labels.numpy(), y_pred=hard.numpy(),
                       sensitive_features=codes.numpy()).difference()


@pytest.mark.parametrize(("stat", "metric"), [("fpr_gap", false_positive_rate), ("tpr_gap", true_positive_rate),
                                              ("dp_gap", selection_rate)])
def test_counted_sparse_codes_match_fairlearn(stat, metric):
    """Codes {0, 7}: slots 1 to 6 are empty and left out; the gap is fairlearn's over the two groups."""
    g = torch.Generator().manual_seed(3)
    n = 64
    codes = 7 * torch.randint(0, 2, (n,), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    # Group 7 predicted positive more often: a real gap.
    logits = HARD * (torch.randn(n, generator=g, dtype=torch.float64) + (codes == 7).double()).sign()
    loss_fn = lossdsl.compile(f"fairness({stat}, group=sex)")
    assert loss_fn.terms[0]._slots([codes])[1] == 8  # the counted path
    inputs = {"sex": codes} | ({"target": labels} if "target" in loss_fn.inputs else {})
    value = loss_fn(pred=logits, **inputs)
    expected = _fairlearn(metric, labels, (logits > 0).long(), codes)
    assert expected > 0.05  # a real gap, not 0 = 0
    np.testing.assert_allclose(value.item(), expected, rtol=1e-9)


def test_counted_path_empty_groups_one_class_and_one_row_give_zero_not_nan():
    loss_fn = lossdsl.compile("fairness(fpr_gap, group=sex)")
    # Group 1 has no negatives (undefined fpr), group 2 is absent: one group left, so 0.
    pred = torch.tensor([0.3, -1.0, 2.0, 0.5], requires_grad=True)
    value = loss_fn(pred=pred, target=torch.tensor([0, 0, 1, 1]), sex=torch.tensor([0, 0, 1, 3]))
    value.backward()
    assert value.item() == 0.0 and torch.equal(pred.grad, torch.zeros(4))
    one = torch.tensor([0.7], requires_grad=True)
    value = loss_fn(pred=one, target=torch.tensor([0]), sex=torch.tensor([0]))
    value.backward()
    assert value.item() == 0.0 and one.grad.item() == 0.0


def test_the_one_liner_without_groups_equals_the_hand_written_gap_that_knows_two_groups():
    g = torch.Generator().manual_seed(0)
    n = 4096
    pred = torch.randn(n, generator=g, requires_grad=True)
    target, sex = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    value = lossdsl.compile("fairness(fpr_gap, group=sex)")(pred=pred, target=target, sex=sex)
    (grad,) = torch.autograd.grad(value, pred)
    prob, negative = torch.sigmoid(pred).double(), 1 - target.double()  # summed in float64, as the term sums
    sums = torch.zeros(2, 2, dtype=torch.float64).index_add_(0, sex, torch.stack([prob * negative, negative], dim=1))
    rates = sums[:, 0] / sums[:, 1]
    expected = (rates.max() - rates.min()).float()
    (expected_grad,) = torch.autograd.grad(expected, pred)
    assert torch.equal(value, expected) and torch.equal(grad, expected_grad)


# --------------------------------------------------------------------------------------------
# groups=K far above the batch
# --------------------------------------------------------------------------------------------


def _allocated_bytes(fn) -> int:
    """The largest allocation ``fn`` makes on the CPU (torch.profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((event.cpu_memory_usage for event in prof.events()), default=0)


@pytest.mark.parametrize("reads", [True, False], ids=["cpu read", "no read (CUDA, compile)"])
def test_a_count_far_above_the_batch_allocates_nothing_of_its_size(reads):
    """groups=2^24 at N=4096: the codes are ranked (or counted), no 2^24-slot tensor is made
    (it took 1.56 s and 591 MiB a call); the value is the ranked hand-written gap's."""
    k, n = 2**24, 4096
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(n, generator=g, requires_grad=True)
    target, sex = torch.randint(0, 2, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    loss_fn = lossdsl.compile(f"fairness(fpr_gap, group=sex, groups={k})")
    with mock.patch.object(group_fairness, "host_reads_are_free", lambda codes: reads):
        largest = _allocated_bytes(lambda: loss_fn(pred=pred, target=target, sex=sex).backward())
        value = loss_fn(pred=pred, target=target, sex=sex)
    assert largest < 64 * n * 8  # a few [N, 2] columns; K slots of 2 floats would be 128 MiB
    assert torch.equal(value, fpr_gap_ranked(pred, target, sex))


def test_a_count_far_above_the_batch_still_refuses_codes_outside_it_on_the_cpu():
    loss_fn = lossdsl.compile("fairness(fpr_gap, group=sex, groups=1000)")
    pred, target = torch.randn(4), torch.tensor([0, 1, 0, 1])
    for bad in (1000, -1):
        with pytest.raises(lossdsl.LossSpecError, match=rf"E402.*'sex'.*group code {bad} lies outside \[0, 1000\)"):
            loss_fn(pred=pred, target=target, sex=torch.tensor([0, 1, bad, 2]))


def test_a_large_count_is_refused_only_where_the_term_keeps_a_window_of_it():
    """groups=2^24 in the objective keeps no state; with window=, or read only by a constraint (whose
    audited rates keep a window by default), its running sums pass the state limit: E205."""
    lossdsl.compile("fairness(fpr_gap, group=sex, groups=16777216)")
    for spec in ("fairness(fpr_gap, group=sex, groups=16777216, window=ema(0.9))",
                 "ce()\nsubject to fairness(fpr_gap, group=sex, groups=16777216) <= 0.1"):
        with pytest.raises(lossdsl.LossSpecError, match="E205"):
            lossdsl.compile(spec)


def test_a_window_keeps_its_k_slots_and_matches_the_unwindowed_rates_on_the_first_call():
    """window=ema(m) mixes the batch into K rows of history, so it indexes K slots whatever the batch;
    on the first call (zero history) the rates are (1 - m) times the batch's in numerator and
    denominator alike: the gap equals the unwindowed one."""
    k, n = 5000, 64
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(n, generator=g, dtype=torch.float64)
    target, sex = torch.randint(0, 2, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    windowed = lossdsl.compile(f"fairness(fpr_gap, group=sex, groups={k}, window=ema(0.9))")
    assert windowed.terms[0]._slots([sex])[1] == k
    value = windowed(pred=pred, target=target, sex=sex)
    plain = lossdsl.compile(f"fairness(fpr_gap, group=sex, groups={k})")(pred=pred, target=target, sex=sex)
    torch.testing.assert_close(value, plain, rtol=1e-12, atol=0)


def test_without_groups_compiles_fullgraph_on_the_ranked_path():
    """Under torch.compile the count is not read (the graph may not depend on data): the ranked
    path, the eager counted path's value and gradient."""
    loss_fn = lossdsl.compile("fairness(fpr_gap, group=sex)")
    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(64, generator=g), torch.randint(0, 2, (64,), generator=g)
    sex = 7 * torch.randint(0, 2, (64,), generator=g)
    eager = value_and_grad(loss_fn, logits, target=target, sex=sex)
    compiled = value_and_grad(torch.compile(loss_fn, fullgraph=True), logits, target=target, sex=sex)
    torch.testing.assert_close(compiled, eager)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def test_the_term_keeps_no_more_for_backward_than_the_hand_written_gap():
    """What the one-liner's fpr_gap saves for backward at N = 2^16: the probabilities, the labels'
    complement and the codes (16 bytes a row), no more than the hand-written gap that knows there
    are two groups (index_add_ of [N, 2] rows also keeps its own copy of the index: 24 bytes a row)."""
    n = 2**16
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(n, generator=g, requires_grad=True)
    target, sex = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    term = lossdsl.compile("fairness(fpr_gap, group=sex)").terms[0]
    ours = _saved_bytes(lambda: term(pred, sex, target))

    def hand_written():
        prob, negative = torch.sigmoid(pred), 1 - target.float()
        sums = torch.zeros(2, 2).index_add_(0, sex, torch.stack([prob * negative, negative], dim=1))
        rates = sums[:, 0] / sums[:, 1]
        return rates.max() - rates.min()

    theirs = _saved_bytes(hand_written)
    row = 4 + 4 + 8  # sigmoid's output and 1 - y (float32), the int64 codes
    assert ours <= n * row + 4096 and ours <= theirs
