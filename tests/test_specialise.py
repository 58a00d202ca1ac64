"""The terms' specialised forwards (``Term.specialise``) against their own ``forward``.

For each layout a term has a straight path for, ``specialise(inputs)`` is called once with the
first call's tensors (as ``LossModule`` does) and its function then takes calls of other sizes of
that signature; a twin module runs ``forward`` on the same calls. Values, gradients and buffers
(class counts) must be equal bit for bit, in training and in eval mode. Calls the straight path
does not cover (an empty batch, other sizes) go back to ``forward``, which these tests exercise too.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lossdsl

IGNORE = -100


class CountOps(TorchDispatchMode):
    """Counts the ATen ops dispatched (forward and backward) while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def twins(spec: str, index: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two equal term modules of a compiled spec: one runs forward, the other its specialisation."""
    loss_fn = lossdsl.compile(spec)
    return loss_fn.terms[index], copy.deepcopy(loss_fn).terms[index]


def run(function, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    leaves = tuple(t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs)
    value = function(*leaves)
    if value.requires_grad:
        value.sum().backward()  # reduction=none: the losses' sum
    return value.detach(), [leaf.grad for leaf in leaves]


def assert_same_calls(reference: torch.nn.Module, special: torch.nn.Module, calls: list[tuple[torch.Tensor, ...]],
                      train: bool = True, straight: bool = True) -> None:
    """``special.specialise(calls[0])`` then every call, against ``reference.forward``, bit for bit;
    then the same in eval mode (specialised again: the training flag is part of the signature)."""
    for mode in (True, False) if train else (False,):
        reference.train(mode)
        special.train(mode)
        function = special.specialise(*calls[0])
        if straight:
            assert function != special.forward, f"no straight path for {[(t.dtype, t.dim()) for t in calls[0]]}"
        for inputs in calls:
            expected, expected_grads = run(reference.forward, inputs)
            got, grads = run(function, inputs)
            assert torch.equal(got, expected), (got, expected)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            for grad, expected_grad in zip(grads, expected_grads):
                assert (grad is None) == (expected_grad is None)
                if grad is not None:
                    assert torch.equal(grad, expected_grad)
            for (name, buffer), (_, expected_buffer) in zip(special.named_buffers(), reference.named_buffers()):
                assert torch.equal(buffer, expected_buffer), name


def labels(n: int, classes: int, ignored: float, generator: torch.Generator, *spatial: int,
           dtype: torch.dtype = torch.long, ignore_index: int = IGNORE) -> torch.Tensor:
    values = torch.randint(0, classes, (n, *spatial), generator=generator)
    if ignored:
        values = torch.where(torch.rand(values.shape, generator=generator) < ignored, ignore_index, values)
    return values.to(dtype)


sizes = st.lists(st.integers(0, 24), min_size=2, max_size=4)
ignored_share = st.sampled_from([0.0, 0.3, 1.0])


# --- ce ------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(batches=sizes, classes=st.integers(2, 5), ignored=ignored_share, seed=st.integers(0, 2**16),
       spatial=st.sampled_from([(), (3, 2)]), reduction=st.sampled_from(["mean", "sum"]),
       weight=st.sampled_from([None, "list", "balanced", "class_balanced(0.9)"]),
       target_dtype=st.sampled_from([torch.long, torch.int32]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_ce_class_indices_specialised_equals_forward(batches, classes, ignored, seed, spatial, reduction, weight,
                                                    target_dtype, dtype):
    options = [f"reduction={reduction}"]
    if weight == "list":
        options.append("weight=[" + ", ".join(str(0.5 + i) for i in range(classes)) + "]")
    elif weight:
        options.append(f"weight={weight}")
    reference, special = twins(f"ce({', '.join(options)})")
    g = torch.Generator().manual_seed(seed)
    calls = [(torch.randn(n, classes, *spatial, generator=g, dtype=dtype),
              labels(n, classes, ignored, g, *spatial, dtype=target_dtype)) for n in batches]
    counted = weight in ("balanced", "class_balanced(0.9)")
    if counted:  # the straight path needs the counts sized: a first call sizes them (forward's padding)
        for module in (reference, special):
            module(*calls[0])
    straight = not (counted and target_dtype != torch.long)
    assert_same_calls(reference, special, calls, straight=straight)


@settings(max_examples=40, deadline=None)
@given(batches=sizes, ignored=ignored_share, seed=st.integers(0, 2**16),
       reduction=st.sampled_from(["mean", "sum"]), smoothing=st.sampled_from([0.0, 0.1]),
       target=st.sampled_from(["long", "int32", "bool", "uint8", "float"]),
       weight=st.sampled_from([None, "balanced", "class_balanced(0.5)"]), ignore_index=st.sampled_from([-100, 1]))
def test_ce_binary_specialised_equals_forward(batches, ignored, seed, reduction, smoothing, target, weight,
                                              ignore_index):
    options = [f"reduction={reduction}", f"label_smoothing={smoothing}", f"ignore_index={ignore_index}"]
    if weight:
        options.append(f"weight={weight}")
    reference, special = twins(f"ce({', '.join(options)})")
    g = torch.Generator().manual_seed(seed)

    def target_of(n: int) -> torch.Tensor:
        if target == "float":
            return torch.rand(n, generator=g)
        if target in ("long", "int32"):
            return labels(n, 2, ignored, g, dtype=getattr(torch, target), ignore_index=ignore_index)
        return labels(n, 2, 0.0, g, dtype=getattr(torch, target))

    if weight and target == "float":
        return  # forward's diagnostic (balanced counts classes): covered by test_ce_balanced_probabilities_*
    calls = [(torch.randn(n, generator=g), target_of(n)) for n in batches]
    if weight:
        for module in (reference, special):
            module(*calls[0])
    straight = not (weight and (smoothing or target != "long"))
    assert_same_calls(reference, special, calls, straight=straight)


def test_ce_specialised_falls_back_to_forwards_diagnostics():
    """Another layout of the same dimensions (binary [N, 1] logits beside [N, C]), a target of the
    wrong size and an empty batch go to forward: its E402 and its 0."""
    loss_fn = lossdsl.compile("ce()")
    term = loss_fn.terms[0]
    function = term.specialise(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))
    assert function != term.forward
    empty = function(torch.randn(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0
    binary = function(torch.zeros(2, 1), torch.tensor([0, 1]))  # [N, 1]: binary logits, log 2 each
    torch.testing.assert_close(binary, torch.tensor(2.0).log())
    try:
        function(torch.randn(4, 3), torch.tensor([0, 1]))
    except lossdsl.LossSpecError as error:
        assert "E402" in str(error) and "class indices of shape (4,)" in str(error)
    else:
        raise AssertionError("no diagnostic for targets of the wrong size")


def test_ce_binary_probabilities_are_the_binary_cross_entropy():
    """Probability targets beside binary logits: torch's binary cross-entropy (one kernel), which
    equals F.cross_entropy's two-class form of [0, z] against [1 - p, p]."""
    term = lossdsl.compile("ce(label_smoothing=0.2)").terms[0]
    pred, target = torch.randn(50, dtype=torch.float64), torch.rand(50, dtype=torch.float64)
    two_class = F.cross_entropy(torch.stack([torch.zeros_like(pred), pred], 1), torch.stack([1 - target, target], 1),
                                label_smoothing=0.2)
    torch.testing.assert_close(term.specialise(pred, target)(pred, target), two_class)
    torch.testing.assert_close(term(pred, target), two_class)


def test_ce_all_ignored_specialised_is_zero_with_zero_gradients():
    """Every target ignored: 0, and zero gradients (the count's clamp at 1 divides 0 by 1; the
    balanced weights' 0/0 guard divides by 1 too: a clamp at the smallest float would scale the
    ignored targets' (sigmoid(z) + 100) gradient to inf before their zero weight, NaN)."""
    for spec, pred in (("ce()", torch.randn(6, 3)), ("ce()", torch.randn(6)), ("ce(weight=balanced)", torch.randn(6)),
                       ("ce(weight=balanced)", torch.randn(6, 3))):
        term = lossdsl.compile(spec).terms[0]
        target = torch.full((6,), IGNORE)
        leaf = pred.requires_grad_()
        value = term.specialise(leaf, target)(leaf, target)
        value.backward()
        assert value.item() == 0.0 and torch.equal(leaf.grad, torch.zeros_like(leaf))


def test_ce_straight_paths_dispatch_no_more_ops_than_torchs_own_function():
    """ce() on [N, C] with int64 targets, on the CPU: one max over the targets read on the host
    (free there) shows a kept target, and then F.cross_entropy's own ops follow; with every target
    ignored (F.cross_entropy's mean would be NaN) the division by the kept count clamped at 1
    instead: three ops more. Binary bool targets: exactly F.binary_cross_entropy_with_logits's
    ops, no ignore_index mask."""
    pred, target = torch.randn(64, 10, requires_grad=True), torch.randint(0, 10, (64,))
    term = lossdsl.compile("ce()").terms[0]
    function = term.specialise(pred, target)
    with CountOps() as ours:
        function(pred, target).backward()
    fresh = pred.detach().requires_grad_()  # a fresh leaf: no gradient to accumulate into
    with CountOps() as torchs:
        F.cross_entropy(fresh, target).backward()
    assert ours.ops == ["max", "_local_scalar_dense", *torchs.ops], (ours.ops, torchs.ops)
    ignored, leaf = torch.full((64,), IGNORE), pred.detach().requires_grad_()
    with CountOps() as ours:
        value = function(leaf, ignored)
        value.backward()
    extra = list(ours.ops)
    for op in ["max", "_local_scalar_dense", *torchs.ops]:
        extra.remove(op)
    assert sorted(extra) == ["clamp_min", "div", "div"], ours.ops  # the division, forward and back
    assert value.item() == 0.0

    logits, flags = torch.randn(64, requires_grad=True), torch.rand(64) < 0.5
    function = term.specialise(logits, flags)
    with CountOps() as ours:
        function(logits, flags).backward()
    logits = logits.detach().requires_grad_()
    with CountOps() as torchs:
        F.binary_cross_entropy_with_logits(logits, flags.to(logits.dtype)).backward()
    assert ours.ops == torchs.ops


# --- focal ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(batches=sizes, classes=st.integers(1, 5), seed=st.integers(0, 2**16), spatial=st.sampled_from([(), (3, 2)]),
       reduction=st.sampled_from(["mean", "sum"]), gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
       alpha=st.sampled_from([None, 0.25]), target=st.sampled_from(["float", "bool", "long"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_focal_sigmoid_specialised_equals_forward(batches, classes, seed, spatial, reduction, gamma, alpha, target,
                                                  dtype):
    options = [f"reduction={reduction}", f"gamma={gamma}"] + ([f"alpha={alpha}"] if alpha is not None else [])
    reference, special = twins(f"focal({', '.join(options)})")
    g = torch.Generator().manual_seed(seed)

    def flags(n: int) -> torch.Tensor:
        values = torch.rand(n, classes, *spatial, generator=g, dtype=dtype)
        return values if target == "float" else (values < 0.5).to(getattr(torch, target))

    calls = [(8 * torch.randn(n, classes, *spatial, generator=g, dtype=dtype), flags(n)) for n in batches]
    assert_same_calls(reference, special, calls)


@settings(max_examples=40, deadline=None)
@given(batches=sizes, classes=st.integers(2, 5), seed=st.integers(0, 2**16), spatial=st.sampled_from([(), (3, 2)]),
       reduction=st.sampled_from(["mean", "sum"]), gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
       class_reduction=st.sampled_from(["sum", "mean"]), target_dtype=st.sampled_from([torch.long, torch.int32]))
def test_focal_softmax_specialised_equals_forward(batches, classes, seed, spatial, reduction, gamma, class_reduction,
                                                  target_dtype):
    reference, special = twins(f"focal(reduction={reduction}, gamma={gamma}, class_reduction={class_reduction})")
    g = torch.Generator().manual_seed(seed)
    calls = [(8 * torch.randn(n, classes, *spatial, generator=g), labels(n, classes, 0.0, g, *spatial, dtype=target_dtype))
             for n in batches]
    assert_same_calls(reference, special, calls)


def test_focal_gamma_at_least_one_needs_no_clamp_and_stays_finite():
    """At saturated logits (1 - p_t = 0) the power's gradient is finite for gamma >= 1, so the
    straight path leaves out the clamp at the smallest float; gamma = 0.5 keeps it (finite too)."""
    pred = torch.tensor([[60.0, -60.0], [-60.0, 60.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for gamma in (0.5, 1.0, 2.0):
        term = lossdsl.compile(f"focal(gamma={gamma})").terms[0]
        function = term.specialise(pred, target)
        with CountOps() as counted:
            value = function(pred, target)
        assert ("clamp_min" in counted.ops) == (gamma < 1)
        (grad,) = torch.autograd.grad(value, pred)
        assert torch.isfinite(grad).all() and torch.isfinite(value)
        # torchvision's formula, computed in float64
        p = torch.sigmoid(pred.double())
        bce = F.binary_cross_entropy_with_logits(pred.double(), target.double(), reduction="none")
        expected = (bce * (1 - (p * target + (1 - p) * (1 - target))) ** gamma).mean()
        torch.testing.assert_close(value.double(), expected)


# --- dice and its family -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(batches=sizes, classes=st.integers(2, 4), seed=st.integers(0, 2**16),
       term=st.sampled_from(["dice", "dice(squared=true", "jaccard", "tversky(alpha=0.3, beta=0.7",
                             "generalized_dice"]),
       activation=st.sampled_from(["auto", "softmax", "sigmoid"]), smooth=st.sampled_from([1e-5, 0.0]),
       batch=st.booleans(), absent=st.sampled_from(["smoothed", "skip", "zero"]), background=st.booleans(),
       reduction=st.sampled_from(["mean", "sum"]), weighted=st.booleans(), one_channel_axis=st.booleans(),
       target_dtype=st.sampled_from([torch.long, torch.int32, torch.uint8]))
def test_overlap_class_indices_specialised_equals_forward(batches, classes, seed, term, activation, smooth, batch,
                                                          absent, background, reduction, weighted, one_channel_axis,
                                                          target_dtype):
    name, _, given_options = term.partition("(")
    options = [given_options] if given_options else []
    options += [f"activation={activation}", f"smooth={smooth}", f"batch={str(batch).lower()}",
                f"include_background={str(background).lower()}", f"reduction={reduction}"]
    if name != "generalized_dice":
        options.append(f"absent={absent}")
        if weighted:
            scored = classes - (not background)
            options.append("weight=[" + ", ".join(str(1.0 + i) for i in range(scored)) + "]")
    reference, special = twins(f"{name}({', '.join(options)})")
    g = torch.Generator().manual_seed(seed)
    calls = []
    for n in batches:
        target = labels(n, classes, 0.0, g, 3, 2, dtype=target_dtype)
        calls.append((4 * torch.randn(n, classes, 3, 2, generator=g), target.unsqueeze(1) if one_channel_axis else target))
    assert_same_calls(reference, special, calls)


def test_dice_straight_path_has_no_zero_over_zero_guard():
    """With smooth > 0 the smoothed denominator of softmax probabilities and one-hot masks is
    positive: dice() dispatches no comparison or where for a guard, and equals MONAI's formula
    1 - (2 I + s) / (|P| + |G| + s) per sample and class, averaged."""
    pred, target = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randint(0, 3, (2, 4, 4))
    term = lossdsl.compile("dice()").terms[0]
    function = term.specialise(pred, target)
    with CountOps() as counted:
        value = function(pred, target)
    assert not {"le", "lt", "gt", "where", "logical_not", "bitwise_not"} & set(counted.ops), counted.ops
    prob, mask = torch.softmax(pred, 1), F.one_hot(target, 3).permute(0, 3, 1, 2).double()
    intersection, total = (prob * mask).sum((2, 3)), prob.sum((2, 3)) + mask.sum((2, 3))
    torch.testing.assert_close(value, (1 - (2 * intersection + 1e-5) / (total + 1e-5)).mean())


def test_dice_straight_path_dispatches_the_hand_written_dices_ops_and_two_views():
    """dice() on class indices, on the CPU: the ops of the dice a user writes (softmax, a scattered
    one-hot, the three pixel sums, the smoothed ratio, torch's mean: one op, which on the CPU is the
    sum over the count, so the value is forward's to the bit), plus the two views to [N, C, pixels]."""
    g = torch.Generator().manual_seed(5)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 4, (2, 8, 8), generator=g)
    term = lossdsl.compile("dice()").terms[0]
    function = term.specialise(pred, target)
    ours_leaf, hand_leaf, reference_leaf = (pred.clone().requires_grad_() for _ in range(3))
    with CountOps() as ours:
        value = function(ours_leaf, target)
        value.backward()
    with CountOps() as hand:
        prob = torch.softmax(hand_leaf, 1)
        mask = torch.zeros_like(hand_leaf).scatter_(1, target.unsqueeze(1), 1.0)
        intersection, total = (prob * mask).sum((2, 3)), prob.sum((2, 3)) + mask.sum((2, 3))
        expected = (1 - (2 * intersection + 1e-5) / (total + 1e-5)).mean()
        expected.backward()
    # the two views forward and one back; the sums over one flattened pixel axis unsqueeze once each in
    # the backward where the hand-written sums over (2, 3) unsqueeze twice
    assert sorted(ours.ops + ["unsqueeze", "unsqueeze"]) == sorted(hand.ops + ["view"] * 3), (ours.ops, hand.ops)
    reference = term.forward(reference_leaf, target)
    reference.backward()
    assert torch.equal(value, reference) and torch.equal(ours_leaf.grad, reference_leaf.grad)
    torch.testing.assert_close(value, expected)


# --- soft_bound and tensor expressions -----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(batches=sizes, seed=st.integers(0, 2**16),
       condition=st.sampled_from(["y <= 1", "0 <= y <= 1", "y >= 0.5", "abs(y - z) <= 0.2", "y == z",
                                  "y <= 0 or z >= 1", "not y > 2 * z", "y - z >= 0 implies z <= 1",
                                  "1 * y + 0 <= 2 - 1"]),
       penalty=st.sampled_from(["squared", "hinge", "softplus(2.0)", "log_barrier"]),
       margin=st.sampled_from([0.0, 0.1]), reduction=st.sampled_from(["mean", "sum", "none"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_soft_bound_specialised_equals_forward(batches, seed, condition, penalty, margin, reduction, dtype):
    simple = penalty in ("squared", "hinge")
    if not simple and ("==" in condition or " or " in condition or "implies" in condition):
        return  # refused by the checks (E2xx): products need a penalty that is 0 where a side holds
    reference, special = twins(f"soft_bound({condition}, penalty={penalty}, margin={margin}, reduction={reduction})")
    g = torch.Generator().manual_seed(seed)
    names = reference.input_names
    calls = [tuple((2 * torch.rand(n, 3, generator=g) - 0.5).to(dtype) for _ in names) for n in batches]
    assert_same_calls(reference, special, calls, train=False)


def test_soft_bound_dispatches_the_ops_of_the_hand_written_penalty():
    """soft_bound(y <= 100) is relu(y - 100)^2 averaged: sub, relu, mul, mean (no `1.0 *`, no
    `+ 0.0`); 0 <= y <= 1 with margin 0.1 adds relu(0.1 - y)^2 and relu(y - 0.9)^2, the margin folded
    into the bounds."""
    y = torch.linspace(-1, 2, 31)
    for spec, ops, expected in [
        ("soft_bound(y <= 100)", ["sub", "relu", "mul", "mean"], torch.relu(100 * y - 100).square().mean()),
        ("soft_bound(0 <= y <= 1, margin=0.1)", ["rsub", "relu", "mul", "sub", "relu", "mul", "add", "mean"],
         (torch.relu(0.1 - y).square() + torch.relu(y - 0.9).square()).mean()),
    ]:
        term = lossdsl.compile(spec).terms[0]
        inputs = (100 * y,) if "100" in spec else (y,)
        function = term.specialise(*inputs)
        with CountOps() as counted:
            value = function(*inputs)
        assert counted.ops == ops
        torch.testing.assert_close(value, expected)


def test_simplified_folds_numbers_and_identities():
    """Constant subexpressions become numbers and x*1, 1*x, x/1, x+0, 0+x, x-0, 0-x, x*-1, -(-x) and
    -(a - b) leave no op; the folded expression computes what the written one does."""
    from lossdsl.tensor_eval import simplified
    from lossdsl.tensor_expr import Arith, Const, Function, Input, Negative

    y, z = Input("y"), Input("z")
    assert simplified(Arith("*", Arith("*", Const(2.0), Const(3.0)), y)) == Arith("*", Const(6.0), y)
    for written in (Arith("*", y, Const(1.0)), Arith("*", Const(1.0), y), Arith("/", y, Const(1.0)),
                    Arith("+", y, Const(0.0)), Arith("+", Const(0.0), y), Arith("-", y, Const(0.0)),
                    Negative(Negative(y))):
        assert simplified(written) == y
    assert simplified(Arith("-", Const(0.0), y)) == Negative(y)
    assert simplified(Arith("*", y, Const(-1.0))) == Negative(y)
    assert simplified(Negative(Arith("-", y, z))) == Arith("-", z, y)
    assert simplified(Arith("+", Function("abs", Const(-3.0)), y)) == Arith("+", Const(3.0), y)
    assert simplified(Function("clamp", Const(5.0), (0.0, 1.0))) == Const(1.0)
    assert simplified(Arith("/", Const(1.0), Const(0.0))) == Arith("/", Const(1.0), Const(0.0))  # no value: kept
    # values: the folded and the written expression agree on inputs
    term = lossdsl.compile("mean(abs(2 * 3 * y - 0) + 1 * exp(0) * z)").terms[0]
    a, b = torch.randn(20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    torch.testing.assert_close(term(a, b), ((6 * a).abs() + b).mean())


# --- buffers at their final size -----------------------------------------------------------------


def test_compile_of_balanced_ce_compiles_one_frame_for_several_calls():
    """ce(weight=balanced)'s class_counts is a lazy buffer that dynamo sizes before it traces: one
    frame for three calls (it was two: the counts started at size 0 and were reassigned), and the
    counts are every call's targets, as eager counts them."""
    from torch._dynamo.testing import CompileCounter

    for logits in ((32, 4), (32,)):
        torch._dynamo.reset()
        counter = CompileCounter()
        loss_fn, eager = lossdsl.compile("ce(weight=balanced)"), lossdsl.compile("ce(weight=balanced)")
        compiled = torch.compile(loss_fn, backend=counter, fullgraph=True)
        classes = logits[1] if len(logits) > 1 else 2
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            pred, target = torch.randn(*logits, generator=g), torch.randint(0, classes, (32,), generator=g)
            torch.testing.assert_close(compiled(pred, target), eager(pred, target))
        assert counter.frame_count == 1
        assert torch.equal(loss_fn.terms[0].class_counts, eager.terms[0].class_counts)
        assert int(loss_fn.terms[0].class_counts.sum()) == 3 * 32


def test_unsized_class_counts_copy_pickle_and_load_as_before():
    """Before any call the counts are unsized: state_dict() holds the empty int64 tensor it always
    did, deepcopy and pickle keep them unsized int64 (torch's own lazy buffer pickles as float32), a
    copy sizes them on its first call, and loading a sized checkpoint into an unsized module (or an
    empty one into a sized module) takes the checkpoint's counts."""
    import io
    import pickle

    from torch.nn.parameter import UninitializedBuffer

    fresh = lossdsl.compile("ce(weight=balanced)")
    saved = fresh.state_dict()["terms.0.class_counts"]
    assert saved.dtype == torch.long and saved.shape == (0,) and not isinstance(saved, UninitializedBuffer)
    buffer = io.BytesIO()
    torch.save(fresh.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["terms.0.class_counts"].shape == (0,)
    for copied in (copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        counts = copied.terms[0].class_counts
        assert isinstance(counts, UninitializedBuffer) and counts.dtype == torch.long
        copied(torch.randn(6, 3), torch.tensor([0, 0, 1, 2, 2, 2]))
        assert copied.terms[0].class_counts.tolist() == [2, 1, 3]
    trained = copy.deepcopy(fresh)
    trained(torch.randn(4), torch.tensor([1, 1, 0, 1]))  # binary: 2 classes
    assert trained.terms[0].class_counts.tolist() == [1, 3]
    into_unsized = lossdsl.compile("ce(weight=balanced)")
    into_unsized.load_state_dict(trained.state_dict())
    assert into_unsized.terms[0].class_counts.tolist() == [1, 3]
    trained.load_state_dict(fresh.state_dict())  # an unsized checkpoint: unsized again
    assert isinstance(trained.terms[0].class_counts, UninitializedBuffer)
    trained.eval()(torch.randn(3, 5), torch.tensor([0, 4, 4]))  # eval sizes them too, and counts nothing
    assert trained.terms[0].class_counts.tolist() == [0, 0, 0, 0, 0]


def test_unsized_counts_follow_the_module_and_fit():
    """.to() before the first call moves the unsized buffer (its dtype stays int64); fit() before
    any call sets the counts, which the first call then adds to."""
    loss_fn = lossdsl.compile("ce(weight=balanced)").to(torch.float64)
    assert loss_fn.terms[0].class_counts.dtype == torch.long
    loss_fn.fit(target=torch.tensor([0, 1, 1, 2]))
    assert loss_fn.terms[0].class_counts.tolist() == [1, 2, 1]
    pred = torch.zeros(2, 3, dtype=torch.float64)
    value = loss_fn(pred, torch.tensor([0, 0]))
    assert loss_fn.terms[0].class_counts.tolist() == [3, 2, 1]
    # balanced weight of class 0: n / (C * count) = 6 / (3 * 3); every target is class 0, so the
    # weighted mean is the plain log 3 of uniform logits
    torch.testing.assert_close(value, torch.tensor(3.0, dtype=torch.float64).log())


def test_balanced_ce_and_soft_bound_keep_for_backward_what_hand_written_code_keeps():
    """Saved-tensor hooks count the bytes autograd keeps: ce(weight=balanced) on binary logits keeps
    the logits, the float targets and the per-target weights, as F.binary_cross_entropy_with_logits
    with those weights does; soft_bound(y <= 100) keeps relu's output, as relu(y - 100).square() does."""
    n = 4096
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(n, generator=g, requires_grad=True)
    target = (torch.rand(n, generator=g) < 0.3).long()
    y = (90 + 20 * torch.rand(n, generator=g)).requires_grad_()

    def saved_bytes(function) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            function()
        return sum(storages.values())

    loss_fn = lossdsl.compile("ce(weight=balanced) + soft_bound(y <= 100)")
    ce, bound = loss_fn.terms
    ce_function, bound_function = ce.specialise(pred, target), bound.specialise(y)
    counts = torch.zeros(2, dtype=torch.long)

    def hand_written_ce() -> torch.Tensor:
        counts.index_add_(0, target, torch.ones_like(target))
        weight = counts.sum() / (2 * counts.clamp_min(1).to(pred.dtype))
        weights = weight[target]
        return F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), weight=weights, reduction="sum") / weights.sum()

    # logits, float targets, weights [N] (float32) and the divisor, a scalar
    assert saved_bytes(lambda: ce_function(pred, target)) == saved_bytes(hand_written_ce) == 3 * 4 * n + 4
    assert saved_bytes(lambda: bound_function(y)) == saved_bytes(lambda: F.relu(y - 100).square().mean()) == 4 * n


def test_compile_of_ce_on_int64_binary_targets_still_masks_and_eager_skips_the_mask_on_cpu():
    """Eager on the CPU, int64 binary targets with none ignored take torch's unweighted kernel
    (a read of the targets, free there); under torch.compile(fullgraph=True) the mask stays (no
    value can be read), and both give F.binary_cross_entropy_with_logits's value."""
    pred, target = torch.randn(64), torch.randint(0, 2, (64,))
    term = lossdsl.compile("ce()").terms[0]
    function = term.specialise(pred, target)
    with CountOps() as counted:
        value = function(pred, target)
    assert "ne" not in counted.ops and "clamp_min" not in counted.ops
    expected = F.binary_cross_entropy_with_logits(pred, target.float())
    assert torch.equal(value, expected)
    loss_fn = lossdsl.compile("ce()")
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(pred, target), expected)
    ignored = torch.where(torch.arange(64) < 8, -100, target)
    torch.testing.assert_close(compiled(pred, ignored), F.binary_cross_entropy_with_logits(pred[8:], target[8:].float()))
    torch.testing.assert_close(function(pred, ignored), F.binary_cross_entropy_with_logits(pred[8:], target[8:].float()))


def test_compile_of_balanced_ce_masks_and_eager_cpu_skips_the_mask_with_equal_bits():
    """ce(weight=balanced) on a CPU batch with no ignored target skips the mask eagerly (no `ne`
    dispatched); under torch.compile the mask stays; values, gradients and counts are equal bit
    for bit (each weight times 1 is itself, and the positive divisor needs no guard)."""
    # The second module shares LossModule.forward's compiled code with other shapes: dynamo makes
    # them dynamic, and the lazy sizing must still read a concrete class count (it raised).
    for logits in ((40,), (40, 3)):
        classes = logits[1] if len(logits) > 1 else 2
        g = torch.Generator().manual_seed(1)
        pred, target = torch.randn(*logits, generator=g), torch.randint(0, classes, (40,), generator=g)
        eager, compiled_source = lossdsl.compile("ce(weight=balanced)"), lossdsl.compile("ce(weight=balanced)")
        compiled = torch.compile(compiled_source, fullgraph=True, backend="eager")
        function = eager.terms[0].specialise(pred, target)
        for _ in range(2):
            leaf, other = pred.clone().requires_grad_(), pred.clone().requires_grad_()
            with CountOps() as counted:
                value = function(leaf, target)
            assert "ne" not in counted.ops
            expected = compiled(other, target)
            value.backward()
            expected.backward()
            assert torch.equal(value, expected) and torch.equal(leaf.grad, other.grad)
            assert torch.equal(eager.terms[0].class_counts, compiled_source.terms[0].class_counts)


def test_balanced_ce_counts_a_batch_read_in_range_in_place_with_the_hand_written_ops():
    """ce(weight=balanced) in training on the CPU: a batch read (one aminmax) to hold only class
    indices in [0, C) adds its ones straight into the counts, no copy counted apart, no mask and no
    reshape: the hand-written balanced ce's ops plus the read, its value and counts to the bit. A
    batch with an ignored target takes the masked form (forward's value); an index out of range is
    forward's E402 and leaves the counts as they were."""
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(64, generator=g), (torch.rand(64, generator=g) < 0.3).long()
    loss_fn = lossdsl.compile("ce(weight=balanced)")
    loss_fn(pred, target)  # counts sized and holding one batch
    term = loss_fn.terms[0]
    function = term.specialise(pred, target)
    counts = term.class_counts.clone()

    def hand_written(pred: torch.Tensor) -> torch.Tensor:
        counts.index_add_(0, target, torch.ones_like(target))
        weight = counts.to(pred.dtype)
        weight = weight.sum() / (2 * weight.clamp_min(1))
        share = weight[target]
        return F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), weight=share, reduction="sum") / share.sum()

    ours_leaf, hand_leaf = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    with CountOps() as ours:
        value = function(ours_leaf, target)
        value.backward()
    with CountOps() as hand:
        expected = hand_written(hand_leaf)
        expected.backward()
    assert ours.ops == ["aminmax", "_local_scalar_dense", "_local_scalar_dense",
                        *[op if op != "index" else "index_select" for op in hand.ops]], (ours.ops, hand.ops)
    assert torch.equal(value, expected) and torch.equal(ours_leaf.grad, hand_leaf.grad)
    assert torch.equal(term.class_counts, counts) and counts.tolist() == [2 * int((target == 0).sum()),
                                                                          2 * int((target == 1).sum())]
    # sklearn's n / (C * count_c) over the two batches counted
    n0, n1 = counts.tolist()
    weights = torch.tensor([(n0 + n1) / (2 * n0), (n0 + n1) / (2 * n1)])[target]
    torch.testing.assert_close(value, (F.binary_cross_entropy_with_logits(pred, target.float(), reduction="none")
                                       * weights).sum() / weights.sum())

    reference = copy.deepcopy(term)
    ignored = torch.where(torch.arange(64) < 5, IGNORE, target)
    assert torch.equal(function(pred, ignored), reference.forward(pred, ignored))
    assert torch.equal(term.class_counts, reference.class_counts)
    before = term.class_counts.clone()
    out_of_range = torch.where(torch.arange(64) == 60, 2, target)
    with pytest.raises((IndexError, RuntimeError)):
        function(pred, out_of_range)
    assert torch.equal(term.class_counts, before)
    loss_fn.terms[0].class_counts.copy_(before)
    with pytest.raises(lossdsl.LossSpecError, match="E402"):
        loss_fn(pred, out_of_range)
    assert torch.equal(loss_fn.terms[0].class_counts, before)


def test_balanced_ce_fast_path_follows_the_terms_own_mode():
    """The specialised forward is kept per the module's signature (its training flag among them); the
    term put in eval mode alone freezes its counts, as its forward does."""
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(32, generator=g), (torch.rand(32, generator=g) < 0.4).long()
    ours, reference = lossdsl.compile("ce(weight=balanced)"), lossdsl.compile("ce(weight=balanced)")
    for step in range(4):
        if step == 2:
            ours.terms[0].eval(), reference.terms[0].eval()
        value = ours(pred, target)
        expected = reference.terms[0](pred, target)
        assert torch.equal(value, expected)
        assert torch.equal(ours.terms[0].class_counts, reference.terms[0].class_counts)
    n1 = int(target.sum())
    assert ours.terms[0].class_counts.tolist() == [2 * (32 - n1), 2 * n1]  # two training calls counted

def test_host_reads_are_free_only_for_plain_cpu_tensors_outside_tracing():
    """True for a CPU tensor in eager mode, under a plain dispatch mode too (an op counter sees the
    ops of a call without it); False for a meta tensor, under FakeTensorMode, make_fx and vmap."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from lossdsl.registry import host_reads_are_free

    tensor = torch.zeros(3, dtype=torch.long)
    assert host_reads_are_free(tensor)
    with CountOps():
        assert host_reads_are_free(tensor)
    assert not host_reads_are_free(torch.zeros(3, device="meta"))
    with FakeTensorMode():
        assert not host_reads_are_free(torch.zeros(3))
    seen = []
    make_fx(lambda x: seen.append(host_reads_are_free(x)) or x + 1)(tensor)
    torch.func.vmap(lambda x: seen.append(host_reads_are_free(x)) or x + 1)(torch.zeros(2, 3))
    assert seen == [False, False]
