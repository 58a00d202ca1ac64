"""``ctc()`` against ``F.ctc_loss``: values and gradients (through a log_softmax, where torch's
backward is the true gradient, and on log-probabilities directly, against torch's value with the
exp(log_probs) share its backward adds taken out), options, lengths, errors and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl.library.ctc import ctc_reference

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec(reduction="mean", blank=0, zero_infinity=False, weighted=False):
    weight = ", sample_weight=w" if weighted else ""
    return f"ctc(reduction={reduction}, blank={blank}, zero_infinity={str(zero_infinity).lower()}{weight})"


def call(loss_fn, log_probs, targets, input_lengths, target_lengths, **extra):
    return loss_fn(log_probs=log_probs, targets=targets, input_lengths=input_lengths, target_lengths=target_lengths,
                   **extra)


@st.composite
def batches(draw, feasible=True):
    """Frames, targets (with repeats), lengths from 0; every target fits its frames when ``feasible``."""
    frames, n, classes, width = draw(st.integers(1, 12)), draw(st.integers(1, 5)), draw(st.integers(2, 6)), draw(st.integers(0, 5))
    blank = draw(st.sampled_from([0, classes - 1]))
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)
    others = torch.tensor([c for c in range(classes) if c != blank])
    targets = others[torch.randint(0, len(others), (n, width), generator=g)]
    if width > 1 and draw(st.booleans()):
        targets[:, 1] = targets[:, 0]  # a repeat needs a blank between
    target_lengths = torch.randint(0, width + 1, (n,), generator=g)
    input_lengths = torch.randint(0, frames + 1, (n,), generator=g)
    if feasible:
        needed = torch.tensor([int(l) + int((t[1:int(l)] == t[:int(l) - 1]).sum()) if l > 1 else int(l)
                               for t, l in zip(targets, target_lengths)], dtype=torch.long)
        target_lengths = torch.where(needed <= frames, target_lengths, torch.zeros_like(target_lengths))
        needed = torch.where(needed <= frames, needed, torch.zeros_like(needed))
        input_lengths = torch.maximum(input_lengths, needed)
    logits = torch.randn(frames, n, classes, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 5.0]))
    return logits, targets, input_lengths, target_lengths, blank


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@SETTINGS
@given(data=batches(), dtype=st.sampled_from([torch.float32, torch.float64]), concatenated=st.booleans())
def test_matches_torch_values_and_gradients(reduction, data, dtype, concatenated):
    logits, targets, input_lengths, target_lengths, blank = data
    logits = logits.to(dtype)
    given_targets = torch.cat([t[:l] for t, l in zip(targets, target_lengths)]) if concatenated else targets
    loss_fn = lossdsl.compile(spec(reduction, blank))
    # Through a log_softmax (the usual model): torch's backward is the true gradient there.
    ours_logits, torch_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = call(loss_fn, ours_logits.log_softmax(2), given_targets, input_lengths, target_lengths)
    expected = F.ctc_loss(torch_logits.log_softmax(2), given_targets, input_lengths, target_lengths, blank=blank,
                          reduction=reduction)
    assert ours.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours, expected, **tolerance)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_logits.grad, torch_logits.grad, **tolerance)
    # On the log-probabilities themselves: the true partial derivatives.
    log_probs = logits.log_softmax(2).detach().requires_grad_()
    ours = call(loss_fn, log_probs, given_targets, input_lengths, target_lengths)
    reference = ctc_reference(reduction, blank)(log_probs, given_targets, input_lengths, target_lengths)
    torch.testing.assert_close(torch.autograd.grad(ours, log_probs)[0], torch.autograd.grad(reference, log_probs)[0],
                               **tolerance)


def test_mean_divides_each_sequence_by_its_target_length_then_averages():
    logits = torch.randn(10, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    log_probs = logits.log_softmax(2)
    targets = torch.tensor([[1, 2, 3], [4, 4, 1], [2, 0, 0]])
    input_lengths, target_lengths = torch.tensor([10, 9, 6]), torch.tensor([3, 3, 1])
    per_sequence = F.ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction="none")
    got = call(lossdsl.compile("ctc()"), log_probs, targets, input_lengths, target_lengths)
    torch.testing.assert_close(got, (per_sequence / target_lengths).mean())
    total = call(lossdsl.compile("ctc(reduction=sum)"), log_probs, targets, input_lengths, target_lengths)
    torch.testing.assert_close(total, per_sequence.sum())
    weight = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    weighted = call(lossdsl.compile("ctc(sample_weight=w)"), log_probs, targets, input_lengths, target_lengths, w=weight)
    torch.testing.assert_close(weighted, (weight * per_sequence / target_lengths).sum() / weight.sum())


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_a_target_longer_than_its_frames_is_inf_or_zero_as_torch(zero_infinity):
    """Sequence 1's target [2, 2] needs three frames (a blank between the repeats); it has two."""
    logits = torch.randn(4, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    targets, input_lengths, target_lengths = torch.tensor([[1, 3], [2, 2]]), torch.tensor([4, 2]), torch.tensor([2, 2])
    got = call(lossdsl.compile(spec("sum", zero_infinity=zero_infinity)), logits.log_softmax(2), targets,
               input_lengths, target_lengths)
    expected = F.ctc_loss(logits.log_softmax(2), targets, input_lengths, target_lengths, reduction="sum",
                          zero_infinity=zero_infinity)
    torch.testing.assert_close(got, expected)
    assert got.isinf().item() != zero_infinity
    gradient = torch.autograd.grad(got, logits)[0]
    assert torch.isfinite(gradient).all()  # torch's is NaN without zero_infinity
    torch.testing.assert_close(gradient[:, 1], torch.zeros(4, 4, dtype=torch.float64))
    if zero_infinity:
        torch.testing.assert_close(gradient, torch.autograd.grad(expected, logits)[0])


@SETTINGS
@given(data=batches(feasible=False))
def test_zero_infinity_matches_torch_on_any_lengths(data):
    logits, targets, input_lengths, target_lengths, blank = data
    ours_logits, torch_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = call(lossdsl.compile(spec("mean", blank, zero_infinity=True)), ours_logits.log_softmax(2), targets,
                input_lengths, target_lengths)
    expected = F.ctc_loss(torch_logits.log_softmax(2), targets, input_lengths, target_lengths, blank=blank,
                          zero_infinity=True)
    torch.testing.assert_close(ours, expected)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_logits.grad, torch_logits.grad)


def test_empty_batch_gives_zero():
    log_probs = torch.zeros(5, 0, 3, requires_grad=True)
    got = call(lossdsl.compile("ctc()"), log_probs, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
               torch.zeros(0, dtype=torch.long))
    torch.testing.assert_close(got, torch.zeros(()))
    assert torch.autograd.grad(got, log_probs)[0].shape == (5, 0, 3)


def test_traces_under_torch_compile_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    loss_fn = lossdsl.compile("ctc()")
    compiled = torch.compile(lossdsl.compile("ctc()"), fullgraph=True)
    logits = torch.randn(6, 3, 4, generator=g)
    inputs = {"targets": torch.tensor([[1, 2], [3, 3], [2, 1]]), "input_lengths": torch.tensor([6, 5, 4]),
              "target_lengths": torch.tensor([2, 2, 1])}
    leaves = [logits.clone().requires_grad_() for _ in range(2)]
    expected = loss_fn(log_probs=leaves[0].log_softmax(2), **inputs)
    got = compiled(log_probs=leaves[1].log_softmax(2), **inputs)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, leaves[1])[0], torch.autograd.grad(expected, leaves[0])[0])


LP = torch.randn(6, 2, 4).log_softmax(2)
TARGETS = torch.tensor([[1, 2], [3, 1]])
LENGTHS = torch.tensor([6, 5])


@pytest.mark.parametrize(
    ("log_probs", "targets", "input_lengths", "target_lengths", "culprit", "message"),
    [
        (LP, TARGETS, torch.tensor([7, 5]), torch.tensor([2, 2]), "input_lengths", "length 7, outside [0, 6]"),
        (LP, TARGETS, torch.tensor([6, -1]), torch.tensor([2, 2]), "input_lengths", "length -1"),
        (LP, TARGETS, torch.tensor([6.0, 5.0]), torch.tensor([2, 2]), "input_lengths", "integer lengths"),
        (LP, TARGETS, torch.tensor([6, 5, 4]), torch.tensor([2, 2]), "input_lengths", "shape (2,)"),
        (LP, TARGETS, LENGTHS, torch.tensor([3, 2]), "target_lengths", "length 3, outside [0, 2]"),
        (LP, TARGETS, LENGTHS, torch.tensor([[2], [2]]), "target_lengths", "shape (2,)"),
        (LP, torch.tensor([1, 2, 3]), LENGTHS, torch.tensor([2, 2]), "target_lengths", "add up to 4, more than the 3"),
        (LP, torch.tensor([[1, 2], [3, 4]]), LENGTHS, torch.tensor([2, 2]), "targets", "outside [0, 4)"),
        (LP, TARGETS.double(), LENGTHS, torch.tensor([2, 2]), "targets", "integer class indices"),
        (LP[0], TARGETS, LENGTHS, torch.tensor([2, 2]), "log_probs", "[T, N, C]"),
        (LP.argmax(2), TARGETS, LENGTHS, torch.tensor([2, 2]), "log_probs", "floating-point"),
    ],
    ids=["input-long", "input-negative", "input-float", "input-shape", "target-long", "target-shape", "target-sum",
         "class-outside", "targets-float", "log-probs-2d", "log-probs-int"],
)
def test_bad_inputs_are_e402_naming_the_input(log_probs, targets, input_lengths, target_lengths, culprit, message):
    with pytest.raises(lossdsl.LossSpecError) as info:
        call(lossdsl.compile("ctc()"), log_probs, targets, input_lengths, target_lengths)
    text = str(info.value)
    assert info.value.diagnostics[0].code == "E402"
    assert f"input '{culprit}'" in text and "ctc()" in text
    assert message in text


def test_padded_targets_ignore_what_lies_past_each_length():
    """Padding may hold anything, the blank included (torch reads only each target's length)."""
    log_probs = torch.randn(8, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).log_softmax(2)
    lengths, target_lengths = torch.tensor([8, 7]), torch.tensor([2, 1])
    clean = call(lossdsl.compile("ctc()"), log_probs, torch.tensor([[1, 2, 3], [4, 1, 1]]), lengths, target_lengths)
    padded = call(lossdsl.compile("ctc()"), log_probs, torch.tensor([[1, 2, 0], [4, 0, 99]]), lengths, target_lengths)
    torch.testing.assert_close(padded, clean)


def test_reduction_none_and_per_sample_give_each_sequence_its_loss():
    g = torch.Generator().manual_seed(5)
    log_probs = torch.randn(10, 6, 5, generator=g, dtype=torch.float64).log_softmax(2).requires_grad_()
    inputs = {"log_probs": log_probs, "targets": torch.randint(1, 5, (6, 3), generator=g),
              "input_lengths": torch.randint(6, 11, (6,), generator=g), "target_lengths": torch.tensor([0, 1, 2, 3, 3, 1])}
    none = F.ctc_loss(*inputs.values(), reduction="none")
    got = lossdsl.compile("ctc(reduction=none)")(**inputs)
    torch.testing.assert_close(got, none)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), log_probs)[0],
                               torch.autograd.grad(ctc_reference("sum")(*inputs.values()), log_probs)[0])
    weight = torch.rand(6, dtype=torch.float64, generator=g)
    torch.testing.assert_close(lossdsl.compile("ctc(reduction=none, sample_weight=w)")(**inputs, w=weight), none * weight)
    # per_sample: what each sequence adds to the batch's mean (its loss over its target length)
    per_sequence = none / inputs["target_lengths"].clamp(min=1)
    torch.testing.assert_close(lossdsl.compile("ctc()").per_sample(**inputs), per_sequence)
    torch.testing.assert_close(lossdsl.compile("ctc(sample_weight=w)").per_sample(**inputs, w=weight), per_sequence * weight)
    torch.testing.assert_close(lossdsl.compile("ctc(reduction=sum)").per_sample(**inputs), none)


def test_group_loss_refuses_ctc_whose_first_dimension_is_time():
    with pytest.raises(lossdsl.LossSpecError, match=r"ctc\(\) has its samples along another dimension") as info:
        lossdsl.compile("fairness(group_loss(ctc()), group=g)")
    assert info.value.diagnostics[0].code == "E204"


def test_a_blank_inside_a_target_is_read_as_a_label_as_torch_reads_it():
    log_probs = torch.randn(6, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).log_softmax(2)
    targets, lengths, target_lengths = torch.tensor([[1, 0, 2], [0, 3, 3]]), torch.tensor([6, 6]), torch.tensor([3, 3])
    got = call(lossdsl.compile("ctc(reduction=none)"), log_probs, targets, lengths, target_lengths)
    torch.testing.assert_close(got, F.ctc_loss(log_probs, targets, lengths, target_lengths, reduction="none"))
