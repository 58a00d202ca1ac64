"""Fairness terms over the same inputs fused into one call (issue 16): ``fusion_key`` and ``fuse``
give what each term's own ``forward`` gives, values, gradients and window state, with one
``index_add`` over the columns they need between them."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

import lossdsl
import lossdsl.library.group_fairness as group_fairness
from lossdsl.library.group_fairness import Fairness

SPECS = {
    "three statistics": "fairness(fpr_gap, group=sex) + fairness(tpr_gap, group=sex, ref=overall)"
                        " + fairness(error_rate_gap, group=sex, agg=smoothmax(0.1))",
    "windowed and not": "fairness(fpr_gap, group=sex, groups=3, window=ema(0.8))"
                        " + fairness(eo_gap, group=sex, groups=3) + fairness(tnr_ratio, group=sex, groups=3, window=ema(0.5))",
    "sample weights": "fairness(fpr_gap, group=sex, sample_weight=w) + fairness(balanced_accuracy_gap, group=sex, sample_weight=w)"
                      " + fairness(ppv_ratio, group=sex, sample_weight=w, agg=mean)",
    # One max/min over [groups, terms] for the adjacent single-rate gaps (and ratios, ppv apart: its floor).
    "batched gaps": "fairness(fpr_gap, group=sex) + fairness(tpr_gap, group=sex) + fairness(error_rate_gap, group=sex)"
                    " + fairness(fnr_ratio, group=sex)",
    "batched ratios": "fairness(fpr_ratio, group=sex, groups=3) + fairness(accuracy_ratio, group=sex, groups=3)"
                      " + fairness(tnr_ratio, group=sex, groups=3) + fairness(ppv_ratio, group=sex, groups=3)"
                      " + fairness(tpr_ratio, group=sex, groups=3)",
    "objective and constraint": "ce() + fairness(fpr_gap, group=sex, groups=3)\n"
                                "subject to fairness(tpr_gap, group=sex, groups=3) <= 0.1",
}


def batch(seed: int, n: int = 40, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pred": torch.randn(n, generator=g, dtype=dtype),
        "target": torch.randint(0, 2, (n,), generator=g),
        "sex": torch.randint(0, 3, (n,), generator=g),
        "w": torch.rand(n, generator=g, dtype=dtype),
    }


def fairness_terms(loss_fn) -> list[Fairness]:
    return [term for term in loss_fn.terms if isinstance(term, Fairness)]


def flat(values) -> list[torch.Tensor]:
    """A term's value, or an audited one's (value, surrogate), as a list of tensors."""
    out = []
    for value in values:
        out += list(value) if isinstance(value, tuple) else [value]
    return out


def run(terms, fused: bool, inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each term's values and each value's gradient on pred, from the fused call or each forward."""
    names = terms[0].input_names
    pred = inputs["pred"].clone().requires_grad_()
    arguments = [pred if name == "pred" else inputs[name] for name in names]
    values = type(terms[0]).fuse(terms)(*arguments) if fused else tuple(term(*arguments) for term in terms)
    values = flat(values)
    # (An audited term's surrogate is detached: no gradient, in both.)
    grads = [torch.autograd.grad(v, pred, retain_graph=True)[0] if v.requires_grad else None for v in values]
    return [v.detach() for v in values], [torch.zeros_like(pred) if g is None else g for g in grads]


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
@pytest.mark.parametrize("reads", [True, False], ids=["cpu count", "ranked"])
def test_fused_terms_give_each_forward_values_gradients_and_state(spec, reads):
    loss_fn = lossdsl.compile(spec)
    loss_fn.train()
    twin = copy.deepcopy(loss_fn)
    terms, twin_terms = fairness_terms(loss_fn), fairness_terms(twin)
    keys = {term.fusion_key() for term in terms}
    assert len(terms) >= 2 and len(keys) == 1 and None not in keys
    with mock.patch.object(group_fairness, "host_reads_are_free", lambda codes: reads):
        for call in range(3):  # the windows' history after each training call too
            inputs = batch(call)
            fused_values, fused_grads = run(terms, True, inputs)
            own_values, own_grads = run(twin_terms, False, inputs)
            assert len(fused_values) == len(own_values)
            for ours, theirs in zip(fused_values + fused_grads, own_values + own_grads):
                assert torch.equal(ours, theirs)
            assert any(v.abs().sum() > 0 for v in fused_values)  # real gaps, not 0 = 0
            assert any(g.abs().sum() > 0 for g in fused_grads)
            for term, twin_term in zip(terms, twin_terms):
                if term.running_sums is not None:
                    assert term.running_sums.abs().sum() > 0
                    assert torch.equal(term.running_sums, twin_term.running_sums)


def test_fused_terms_in_eval_mode_leave_the_window_as_it_was():
    loss_fn = lossdsl.compile(SPECS["windowed and not"]).eval()
    terms = fairness_terms(loss_fn)
    before = [term.running_sums.clone() for term in terms if term.running_sums is not None]
    run(terms, True, batch(0))
    assert all(torch.equal(a, t.running_sums) for a, t in zip(before, [t for t in terms if t.running_sums is not None]))


def test_the_fused_call_sums_once():
    """Three statistics share one scatter over their six distinct columns ([columns, N] on the CPU),
    where their forwards take three."""
    terms = fairness_terms(lossdsl.compile(SPECS["three statistics"]))
    inputs = batch(5)
    arguments = [inputs[name] for name in terms[0].input_names]
    calls = []
    original = torch.Tensor.scatter_add_

    def counting(self, dim, index, source, **kwargs):
        calls.append(tuple(source.shape))
        return original(self, dim, index, source, **kwargs)

    with mock.patch.object(torch.Tensor, "scatter_add_", counting):
        Fairness.fuse(terms)(*arguments)
        fused_calls = list(calls)
        calls.clear()
        for term in terms:
            term(*arguments)
    assert fused_calls == [(6, 40)]  # p(1-y), 1-y; py, y; p(1-y) + (1-p)y, 1: each once
    assert calls == [(2, 40), (2, 40), (2, 40)]


def test_terms_that_read_other_inputs_or_an_inner_loss_have_other_keys():
    loss_fn = lossdsl.compile("fairness(fpr_gap, group=sex) + fairness(dp_gap, group=sex)"
                              " + fairness(fpr_gap, group=sex, hard=true) + fairness(group_loss(mse), group=sex)")
    keys = [term.fusion_key() for term in loss_fn.terms]
    assert keys[3] is None  # group_loss: its inner term's columns
    assert len({keys[0], keys[1], keys[2]}) == 3  # dp reads no target; hard=true another prediction


def test_an_empty_batch_gives_each_term_its_empty_value():
    terms = fairness_terms(lossdsl.compile(SPECS["three statistics"]))
    empty = [torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)]
    fused = Fairness.fuse(terms)(*empty)
    assert [v.item() for v in fused] == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------
# specialise: the common signature without the forward's layers of checks
# --------------------------------------------------------------------------------------------

STRAIGHT = ["fpr_gap", "dp_gap", "eo_gap", "ppv_ratio", "balanced_accuracy_gap", "tpr_gap, ref=overall",
            "error_rate_ratio, agg=mean", "fnr_gap, agg=smoothmax(0.2)", "fpr_gap, groups=3", "accuracy_gap, groups=100"]


@pytest.mark.parametrize("stat", STRAIGHT)
@pytest.mark.parametrize("reads", [True, False], ids=["cpu count", "ranked"])
def test_the_specialised_forward_gives_the_forward_bit_for_bit(stat, reads):
    loss_fn = lossdsl.compile(f"fairness({stat}, group=sex)")
    term = loss_fn.terms[0]
    for seed, n in ((0, 40), (1, 3), (2, 1)):
        inputs = batch(seed, n)
        arguments = [inputs[name] for name in term.input_names]
        fast = term.specialise(*arguments)
        assert fast != term.forward
        with mock.patch.object(group_fairness, "host_reads_are_free", lambda codes: reads):
            for function in (fast, term.forward):
                pred = arguments[0].clone().requires_grad_()
                value = function(pred, *arguments[1:])
                (grad,) = torch.autograd.grad(value, pred)
                if function is fast:
                    expected = (value, grad)
                else:
                    assert torch.equal(value, expected[0]) and torch.equal(grad, expected[1])


@pytest.mark.parametrize("spec,inputs", [
    ("fairness(fpr_gap, group=sex)", lambda b: (torch.stack([-b["pred"], b["pred"]], 1), b["sex"], b["target"])),
    ("fairness(fpr_gap, group=sex, sample_weight=w)", lambda b: (b["pred"], b["sex"], b["target"], b["w"])),
    ("fairness(fpr_gap, group=sex, groups=3, window=ema(0.5))", lambda b: (b["pred"], b["sex"], b["target"])),
    ("fairness(fpr_gap, group=sex, hard=true)", lambda b: (b["pred"], b["sex"], b["target"])),
    ("fairness(mean_pred_gap, group=sex)", lambda b: (b["pred"], b["sex"])),
    ("fairness(dp_gap, group=(sex, race))", lambda b: (b["pred"], b["sex"], b["sex"] % 2)),
    ("fairness(fpr_gap, group=sex)", lambda b: (b["pred"].half(), b["sex"], b["target"])),
    ("fairness(group_loss(mse), group=sex)", lambda b: (b["pred"], b["pred"], b["sex"])),
])
def test_other_signatures_keep_the_forward(spec, inputs):
    term = lossdsl.compile(spec).terms[0]
    assert term.specialise(*inputs(batch(0))) == term.forward


def test_the_specialised_forward_still_checks_sizes():
    term = lossdsl.compile("fairness(fpr_gap, group=sex)").terms[0]
    b = batch(0)
    fast = term.specialise(b["pred"], b["sex"], b["target"])
    with pytest.raises(lossdsl.LossSpecError, match=r"E402.*'sex'.*expected group codes of shape \(40,\), got \(39,\)"):
        fast(b["pred"], b["sex"][:39], b["target"])
    with pytest.raises(lossdsl.LossSpecError, match=r"E402.*'target'.*expected 0/1 labels of shape \(40,\), got \(4,\)"):
        fast(b["pred"], b["sex"], b["target"][:4])
    assert fast(b["pred"][:0], b["sex"][:0], b["target"][:0]).item() == 0.0  # an empty batch, as forward gives


def test_the_fused_call_compiles_fullgraph():
    """torch.compile(fullgraph=True) of the fused call (no read: the ranked slots): each term's
    eager value and gradient."""
    terms = fairness_terms(lossdsl.compile(SPECS["batched gaps"]))
    inputs = batch(7)
    eager_values, eager_grads = run(terms, True, inputs)
    fused = torch.compile(Fairness.fuse(terms), fullgraph=True)
    pred = inputs["pred"].clone().requires_grad_()
    values = fused(pred, inputs["sex"], inputs["target"])
    grads = [torch.autograd.grad(v, pred, retain_graph=True)[0] for v in values]
    torch.testing.assert_close([v.detach() for v in values], eager_values)
    torch.testing.assert_close(grads, eager_grads)


@pytest.mark.parametrize("spec", ["batched gaps", "batched ratios"])
def test_batched_statistics_keep_each_terms_nan_and_its_empty_groups(spec):
    """A NaN prediction makes every term NaN, as alone; a batch where one group has no positives
    (tpr undefined there) and one where a single group is present give each term its own value."""
    terms = fairness_terms(lossdsl.compile(SPECS[spec]))
    inputs = batch(3, n=12)
    cases = [dict(inputs, pred=inputs["pred"].clone().index_fill_(0, torch.tensor([4]), float("nan"))),
             dict(inputs, target=torch.where(inputs["sex"] == 1, 0, inputs["target"])),
             dict(inputs, sex=torch.zeros_like(inputs["sex"]))]
    for case in cases:
        fused, own = run(terms, True, case), run(terms, False, case)
        torch.testing.assert_close(fused, own, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(("spec", "batches"), [("batched gaps", [3]), ("batched ratios", [2]), ("three statistics", [])])
def test_which_terms_share_one_statistic(spec, batches):
    """Adjacent single-rate statistics of one form share the max/min; a term whose columns are
    shared with an earlier one (tnr's 1 - y after fpr), another floor (ppv) or form is alone."""
    terms = fairness_terms(lossdsl.compile(SPECS[spec]))
    inputs = batch(0)
    seen = []
    original = group_fairness._batched_gaps

    def counting(term, sums, start, count, dtype):
        seen.append(count)
        return original(term, sums, start, count, dtype)

    with mock.patch.object(group_fairness, "_batched_gaps", counting):
        Fairness.fuse(terms)(*[inputs[name] for name in terms[0].input_names])
    assert seen == batches
