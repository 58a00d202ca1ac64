"""Parity of every term with its reference: values and gradients w.r.t. the inputs.

References are torch's functional losses, scikit-learn's balanced class weights,
and closed forms written out in the tests (soft_bound).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

import lossdsl

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]


def grad(value: torch.Tensor, *wrt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(value, wrt)


def leaf(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, dtype=dtype)).requires_grad_()


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, *wrt: torch.Tensor) -> None:
    """Same value, same dtype, same gradients w.r.t. ``wrt``."""
    assert ours.shape == ()
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(grad(ours, *wrt), grad(ref, *wrt)):
        torch.testing.assert_close(g_ours, g_ref)


def fmt(values) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


# --------------------------------------------------------------------------------------------
# ce, multi-class
# --------------------------------------------------------------------------------------------

# (weight, label_smoothing, ignore_index, reduction); ignore_index None: nothing ignored,
# "default": targets set to -100 with the default ignore_index.
CE_CONFIGS = {
    "plain": (False, 0.0, None, "mean"),
    "weight": (True, 0.0, None, "mean"),
    "smoothing": (False, 0.1, None, "mean"),
    "ignore_default": (False, 0.0, "default", "mean"),
    "ignore_negative": (False, 0.0, -1, "mean"),
    "ignore_class": (False, 0.0, 1, "mean"),
    "sum": (False, 0.0, None, "sum"),
    "weight_smoothing": (True, 0.1, None, "mean"),
    "weight_ignore": (True, 0.0, 2, "mean"),
    "weight_smoothing_ignore": (True, 0.1, -1, "mean"),
    "weight_smoothing_ignore_default": (True, 0.2, "default", "mean"),
    "weight_smoothing_ignore_sum": (True, 0.1, -1, "sum"),
    "smoothing_ignore_sum": (False, 0.1, "default", "sum"),
}


def ce_spec_and_reference(config, num_classes: int, dtype: torch.dtype):
    """Spec text, the F.cross_entropy keyword arguments and the value ignored targets get."""
    use_weight, smoothing, ignore, reduction = config
    args, kwargs = [], {"reduction": reduction}
    if use_weight:
        weights = [0.5 + 0.75 * i for i in range(num_classes)]
        args.append(f"weight={fmt(weights)}")
        kwargs["weight"] = torch.tensor(weights, dtype=dtype)
    if smoothing:
        args.append(f"label_smoothing={smoothing}")
        kwargs["label_smoothing"] = smoothing
    ignore_value = None
    if ignore == "default":
        ignore_value = -100
    elif ignore is not None:
        args.append(f"ignore_index={ignore}")
        kwargs["ignore_index"] = ignore
        ignore_value = ignore
    args.append(f"reduction={reduction}")
    return f"ce({', '.join(args)})", kwargs, ignore_value


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(9, 4), (1, 3), (3, 3, 2, 3)], ids=["NC", "N1C", "NCHW"])
@pytest.mark.parametrize("name", list(CE_CONFIGS))
def test_ce_multiclass_matches_cross_entropy(name, shape, dtype):
    num_classes = shape[1]
    spec, kwargs, ignore_value = ce_spec_and_reference(CE_CONFIGS[name], num_classes, dtype)
    pred = leaf(*shape, dtype=dtype, scale=2.0)
    target_shape = (shape[0], *shape[2:])
    target = torch.randint(0, num_classes, target_shape)
    flat = target.view(-1)
    if ignore_value is not None:  # some targets ignored, never all
        flat[::3] = ignore_value
        flat[-1] = 0 if ignore_value != 0 else 1
    loss_fn = lossdsl.compile(spec)
    ours = loss_fn(pred=pred, target=target)
    ref = F.cross_entropy(pred, target, **kwargs)
    assert_parity(ours, ref, pred)
    torch.testing.assert_close(loss_fn.last_terms["ce"], ref.detach())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_positional_pred_and_target(dtype):
    pred = leaf(6, 3, dtype=dtype)
    target = torch.randint(0, 3, (6,))
    assert_parity(lossdsl.compile("ce()")(pred, target), F.cross_entropy(pred, target), pred)


# --------------------------------------------------------------------------------------------
# ce, binary (sigmoid) form
# --------------------------------------------------------------------------------------------


def two_class_logits(z: torch.Tensor) -> torch.Tensor:
    z = z.reshape(-1)
    return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(10,), (10, 1), (1,)], ids=["N", "N1", "one"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ce_binary_without_weights_is_bce_with_logits(shape, dtype, reduction):
    z = leaf(*shape, dtype=dtype, scale=3.0)
    y = torch.randint(0, 2, shape)
    ours = lossdsl.compile(f"ce(reduction={reduction})")(pred=z, target=y)
    ref = F.binary_cross_entropy_with_logits(z, y.to(dtype), reduction=reduction)
    assert_parity(ours, ref, z)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_binary_accepts_n_targets_for_n1_logits(dtype):
    z = leaf(7, 1, dtype=dtype)
    y = torch.randint(0, 2, (7,))
    ours = lossdsl.compile("ce()")(pred=z, target=y)
    assert_parity(ours, F.binary_cross_entropy_with_logits(z[:, 0], y.to(dtype)), z)


BINARY_CONFIGS = {
    "weight": (True, 0.0, None, "mean"),
    "smoothing": (False, 0.1, None, "mean"),
    "weight_smoothing": (True, 0.1, None, "mean"),
    "ignore_default": (False, 0.0, "default", "mean"),
    "smoothing_ignore": (False, 0.2, -1, "mean"),
    "weight_ignore": (True, 0.0, -1, "mean"),
    "weight_smoothing_ignore": (True, 0.1, "default", "mean"),
    "weight_smoothing_sum": (True, 0.1, None, "sum"),
    "weight_smoothing_ignore_sum": (True, 0.3, -1, "sum"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(12,), (12, 1)], ids=["N", "N1"])
@pytest.mark.parametrize("name", list(BINARY_CONFIGS))
def test_ce_binary_is_cross_entropy_on_zero_and_logit(name, shape, dtype):
    spec, kwargs, ignore_value = ce_spec_and_reference(BINARY_CONFIGS[name], 2, dtype)
    z = leaf(*shape, dtype=dtype, scale=3.0)
    y = torch.randint(0, 2, (shape[0],))
    y[0], y[1] = 0, 1
    if ignore_value is not None:
        y[2::4] = ignore_value
    ours = lossdsl.compile(spec)(pred=z, target=y.reshape(shape))
    ref = F.cross_entropy(two_class_logits(z), y, **kwargs)
    assert_parity(ours, ref, z)


# --------------------------------------------------------------------------------------------
# ce: every target ignored, empty batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(5, 3), (5,), (5, 1), (2, 3, 2, 2)], ids=["NC", "N", "N1", "NCHW"])
@pytest.mark.parametrize(
    "spec",
    ["ce()", "ce(label_smoothing=0.1)", "ce(weight=WEIGHTS, label_smoothing=0.1)", "ce(weight=balanced)",
     "ce(ignore_index=-1)", "ce(weight=WEIGHTS, reduction=sum)"],
)
def test_ce_all_targets_ignored_gives_zero(spec, shape, dtype):
    binary = len(shape) == 1 or shape[1] == 1
    num_classes = 2 if binary else shape[1]
    spec = spec.replace("WEIGHTS", fmt(range(1, num_classes + 1)))
    ignore = -1 if "ignore_index=-1" in spec else -100
    pred = leaf(*shape, dtype=dtype)
    target_shape = shape if binary else (shape[0], *shape[2:])
    target = torch.full(target_shape, ignore)
    ours = lossdsl.compile(spec)(pred=pred, target=target)
    (g,) = grad(ours, pred)
    torch.testing.assert_close(ours, torch.zeros((), dtype=dtype))
    torch.testing.assert_close(g, torch.zeros_like(pred))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "spec, pred_shape, target_shape",
    [
        ("ce()", (0, 3), (0,)),
        ("ce(weight=[1, 2, 3], label_smoothing=0.1)", (0, 3), (0,)),
        ("ce(weight=balanced)", (0, 3), (0,)),
        ("ce()", (0,), (0,)),
        ("ce(weight=[1, 2])", (0, 1), (0, 1)),
        ("bce()", (0,), (0,)),
        ("bce(pos_weight=[1, 2])", (0, 2), (0, 2)),
        ("mse()", (0,), (0,)),
        ("mae()", (0, 3), (0, 3)),
        ("huber(0.5)", (0,), (0,)),
    ],
)
def test_empty_batch_gives_zero(spec, pred_shape, target_shape, dtype):
    pred = torch.zeros(pred_shape, dtype=dtype, requires_grad=True)
    target_dtype = dtype if spec.startswith(("bce", "mse", "mae", "huber")) else torch.long
    target = torch.zeros(target_shape, dtype=target_dtype)
    ours = lossdsl.compile(spec)(pred=pred, target=target)
    (g,) = grad(ours, pred)
    torch.testing.assert_close(ours, torch.zeros((), dtype=dtype))
    assert g.shape == pred.shape


# --------------------------------------------------------------------------------------------
# ce(weight=balanced)
# --------------------------------------------------------------------------------------------


def sklearn_balanced(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    y = targets.reshape(-1).numpy()
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=y)
    return torch.tensor(weights, dtype=dtype)


def unseen_rule(counts: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The documented rule: n / (C * count) for seen classes, the largest of those for a class not
    seen yet; all ones when nothing was counted."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() == 0:
        return torch.ones(len(counts), dtype=dtype)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    weights[counts == 0] = weights[counts > 0].max()
    return torch.tensor(weights, dtype=dtype)


def all_classes(n: int, num_classes: int, shape=None) -> torch.Tensor:
    """Random class indices in which every class is present."""
    t = torch.randint(0, num_classes, (n,))
    t[:num_classes] = torch.arange(num_classes)
    t = t[torch.randperm(n)]
    return t.reshape(shape) if shape else t


def counts_of(loss_fn) -> torch.Tensor:
    return loss_fn.terms[0].class_counts


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(20, 4), (3, 3, 2, 2)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_balanced_one_call_matches_sklearn_weights(shape, dtype, smoothing):
    num_classes = shape[1]
    target_shape = (shape[0], *shape[2:])
    target = all_classes(int(np.prod(target_shape)), num_classes, target_shape)
    pred = leaf(*shape, dtype=dtype)
    loss_fn = lossdsl.compile(f"ce(weight=balanced, label_smoothing={smoothing})")
    assert loss_fn.training
    ours = loss_fn(pred=pred, target=target)
    w = sklearn_balanced(target, num_classes, dtype)
    assert_parity(ours, F.cross_entropy(pred, target, weight=w, label_smoothing=smoothing), pred)
    torch.testing.assert_close(counts_of(loss_fn), torch.bincount(target.reshape(-1), minlength=num_classes))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(16,), (16, 1)], ids=["N", "N1"])
def test_ce_balanced_binary_form(shape, dtype):
    z = leaf(*shape, dtype=dtype, scale=2.0)
    y = all_classes(16, 2)
    y[:3] = 1  # imbalance
    ours = lossdsl.compile("ce(weight=balanced, label_smoothing=0.1)")(pred=z, target=y.reshape(shape))
    w = sklearn_balanced(y, 2, dtype)
    assert_parity(ours, F.cross_entropy(two_class_logits(z), y, weight=w, label_smoothing=0.1), z)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_counts_accumulate_across_calls(dtype):
    num_classes = 3
    loss_fn = lossdsl.compile("ce(weight=balanced)")
    t1 = all_classes(12, num_classes)
    t1[:6] = 0  # skewed first batch
    t2 = all_classes(9, num_classes)
    loss_fn(pred=torch.randn(12, num_classes, dtype=dtype), target=t1)
    pred2 = leaf(9, num_classes, dtype=dtype)
    ours = loss_fn(pred=pred2, target=t2)
    w = sklearn_balanced(torch.cat([t1, t2]), num_classes, dtype)
    assert_parity(ours, F.cross_entropy(pred2, t2, weight=w), pred2)
    torch.testing.assert_close(counts_of(loss_fn), torch.bincount(torch.cat([t1, t2]), minlength=num_classes))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_ignored_targets_are_not_counted(dtype):
    num_classes = 3
    t = all_classes(15, num_classes)
    t[3::4] = -100
    t[:3] = torch.arange(3)
    pred = leaf(15, num_classes, dtype=dtype)
    loss_fn = lossdsl.compile("ce(weight=balanced)")
    ours = loss_fn(pred=pred, target=t)
    kept = t[t != -100]
    w = sklearn_balanced(kept, num_classes, dtype)
    assert_parity(ours, F.cross_entropy(pred, t, weight=w), pred)
    torch.testing.assert_close(counts_of(loss_fn), torch.bincount(kept, minlength=num_classes))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_eval_mode_freezes_counts(dtype):
    num_classes = 4
    loss_fn = lossdsl.compile("ce(weight=balanced)")
    t1 = all_classes(20, num_classes)
    loss_fn(pred=torch.randn(20, num_classes, dtype=dtype), target=t1)
    before = counts_of(loss_fn).clone()
    loss_fn.eval()
    t2 = torch.zeros(8, dtype=torch.long)  # a batch that would change the counts a lot
    pred2 = leaf(8, num_classes, dtype=dtype)
    ours = loss_fn(pred=pred2, target=t2)
    torch.testing.assert_close(counts_of(loss_fn), before)
    w = sklearn_balanced(t1, num_classes, dtype)
    assert_parity(ours, F.cross_entropy(pred2, t2, weight=w), pred2)
    # Back in training mode, counting resumes.
    loss_fn.train()
    loss_fn(pred=pred2.detach(), target=t2)
    torch.testing.assert_close(counts_of(loss_fn), torch.bincount(torch.cat([t1, t2]), minlength=num_classes))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_eval_without_counts_is_unweighted(dtype):
    loss_fn = lossdsl.compile("ce(weight=balanced)").eval()
    pred = leaf(7, 3, dtype=dtype)
    t = torch.randint(0, 3, (7,))
    assert_parity(loss_fn(pred=pred, target=t), F.cross_entropy(pred, t, weight=unseen_rule([0, 0, 0], dtype)), pred)
    torch.testing.assert_close(unseen_rule([0, 0, 0], dtype), torch.ones(3, dtype=dtype))
    assert counts_of(loss_fn).sum() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_unseen_class_weighs_as_the_rarest_seen(dtype):
    num_classes = 4
    t = torch.tensor([0, 0, 0, 1, 1, 3, 0, 1, 3])  # class 2 never seen
    pred = leaf(len(t), num_classes, dtype=dtype)
    loss_fn = lossdsl.compile("ce(weight=balanced)")
    ours = loss_fn(pred=pred, target=t)
    counts = np.bincount(t.numpy(), minlength=num_classes)
    w = unseen_rule(counts, dtype)
    assert_parity(ours, F.cross_entropy(pred, t, weight=w), pred)
    # Where every class is present, the rule is scikit-learn's.
    full = all_classes(10, num_classes)
    torch.testing.assert_close(
        unseen_rule(np.bincount(full.numpy(), minlength=num_classes), dtype), sklearn_balanced(full, num_classes, dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_fit_sets_counts(dtype):
    num_classes = 3
    loss_fn = lossdsl.compile("ce(weight=balanced)")
    loss_fn(pred=torch.randn(5, num_classes, dtype=dtype), target=torch.zeros(5, dtype=torch.long))  # replaced by fit
    everything = all_classes(40, num_classes)
    everything[:10] = 2
    assert loss_fn.fit(target=everything) is loss_fn
    torch.testing.assert_close(counts_of(loss_fn), torch.bincount(everything, minlength=num_classes))
    loss_fn.eval()
    pred = leaf(6, num_classes, dtype=dtype)
    t = torch.randint(0, num_classes, (6,))
    w = sklearn_balanced(everything, num_classes, dtype)
    assert_parity(loss_fn(pred=pred, target=t), F.cross_entropy(pred, t, weight=w), pred)
    torch.testing.assert_close(counts_of(loss_fn), torch.bincount(everything, minlength=num_classes))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_fit_without_the_last_class(dtype):
    num_classes = 4
    everything = torch.tensor([0, 0, 1, 2, 2, 2, -100, 1])  # class 3 absent from the data set
    loss_fn = lossdsl.compile("ce(weight=balanced)").fit(target=everything).eval()
    pred = leaf(5, num_classes, dtype=dtype)
    t = torch.tensor([0, 3, 1, 2, 3])
    kept = everything[everything != -100].numpy()
    w = unseen_rule(np.bincount(kept, minlength=num_classes), dtype)
    assert_parity(loss_fn(pred=pred, target=t), F.cross_entropy(pred, t, weight=w), pred)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_balanced_counts_survive_state_dict(dtype):
    num_classes = 5
    spec = "let data = ce(weight=balanced, label_smoothing=0.05)\nloss = data + 0.5 * mse(pred=aux, target=y)"
    trained = lossdsl.compile(spec)
    for _ in range(3):
        trained(pred=torch.randn(10, num_classes, dtype=dtype), target=all_classes(10, num_classes),
                aux=torch.randn(10, dtype=dtype), y=torch.randn(10, dtype=dtype))
    state = trained.state_dict()
    fresh = lossdsl.compile(spec)
    assert counts_of(fresh).numel() == 0  # sized lazily
    fresh.load_state_dict(state)  # strict
    torch.testing.assert_close(counts_of(fresh), counts_of(trained))
    trained.eval()
    fresh.eval()
    pred, t = leaf(6, num_classes, dtype=dtype), torch.randint(0, num_classes, (6,))
    aux, y = torch.randn(6, dtype=dtype), torch.randn(6, dtype=dtype)
    w = unseen_rule(counts_of(trained).numpy(), dtype)
    ref = F.cross_entropy(pred, t, weight=w, label_smoothing=0.05) + 0.5 * F.mse_loss(aux, y)
    assert_parity(fresh(pred=pred, target=t, aux=aux, y=y), ref, pred)
    torch.testing.assert_close(fresh(pred=pred, target=t, aux=aux, y=y), trained(pred=pred, target=t, aux=aux, y=y))


# --------------------------------------------------------------------------------------------
# bce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "shape, pos_weight",
    [
        ((11,), None),
        ((11,), 2.0),
        ((6, 3), None),
        ((6, 3), 2.0),
        ((6, 3), (0.5, 1.0, 3.0)),
        ((2, 3, 4), (1.0, 2.0, 0.25, 4.0)),
        ((1,), (1.5,)),
    ],
    ids=["N", "N-pos", "NC", "NC-pos", "NC-per-label", "3d-per-label", "one-list"],
)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_bce_matches_bce_with_logits(shape, pos_weight, reduction, dtype, soft):
    args = [f"reduction={reduction}"]
    ref_pos_weight = None
    if pos_weight is not None:
        args.append(f"pos_weight={pos_weight if isinstance(pos_weight, float) else fmt(pos_weight)}")
        ref_pos_weight = torch.tensor(pos_weight, dtype=dtype)
    pred = leaf(*shape, dtype=dtype, scale=2.0)
    target = torch.rand(shape, dtype=dtype) if soft else torch.randint(0, 2, shape).to(dtype)
    ours = lossdsl.compile(f"bce({', '.join(args)})")(pred=pred, target=target)
    ref = F.binary_cross_entropy_with_logits(pred, target, pos_weight=ref_pos_weight, reduction=reduction)
    assert_parity(ours, ref, pred)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bce_integer_targets(dtype):
    pred = leaf(4, 2, dtype=dtype)
    target = torch.randint(0, 2, (4, 2))
    ours = lossdsl.compile("bce()")(pred=pred, target=target)
    assert_parity(ours, F.binary_cross_entropy_with_logits(pred, target.to(dtype)), pred)


# --------------------------------------------------------------------------------------------
# mse, mae, huber
# --------------------------------------------------------------------------------------------

REGRESSION = {
    "mse()": lambda p, t, r: F.mse_loss(p, t, reduction=r),
    "mae()": lambda p, t, r: F.l1_loss(p, t, reduction=r),
    "huber()": lambda p, t, r: F.huber_loss(p, t, reduction=r),
    "huber(delta=0.5)": lambda p, t, r: F.huber_loss(p, t, reduction=r, delta=0.5),
    "huber(0.5)": lambda p, t, r: F.huber_loss(p, t, reduction=r, delta=0.5),
    "huber(delta=2.5)": lambda p, t, r: F.huber_loss(p, t, reduction=r, delta=2.5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(13,), (5, 3), (2, 3, 4), (1,)], ids=["N", "NC", "3d", "one"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("spec", list(REGRESSION))
def test_regression_matches_functional(spec, reduction, shape, dtype):
    pred = leaf(*shape, dtype=dtype, scale=2.0)
    target = 2.0 * torch.randn(shape, dtype=dtype)
    text = spec[:-1] + (", " if spec[-2] != "(" else "") + f"reduction={reduction})"
    ours = lossdsl.compile(text)(pred=pred, target=target)
    assert_parity(ours, REGRESSION[spec](pred, target, reduction), pred)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_regression_gradient_wrt_target(dtype):
    pred = leaf(6, dtype=dtype)
    target = leaf(6, dtype=dtype)
    for spec, ref in [("mse()", F.mse_loss), ("mae()", F.l1_loss), ("huber(0.5)", lambda p, t: F.huber_loss(p, t, delta=0.5))]:
        assert_parity(lossdsl.compile(spec)(pred=pred, target=target), ref(pred, target), pred, target)


def test_huber_positional_equals_keyword():
    pred, target = torch.randn(20, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    a = lossdsl.compile("huber(0.5)")
    b = lossdsl.compile("huber(delta=0.5)")
    assert a.terms[0].delta == b.terms[0].delta == 0.5
    torch.testing.assert_close(a(pred=pred, target=target), b(pred=pred, target=target))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_regression_integer_target_is_cast(dtype):
    pred = leaf(5, dtype=dtype)
    target = torch.arange(5)
    assert_parity(lossdsl.compile("mse()")(pred=pred, target=target), F.mse_loss(pred, target.to(dtype)), pred)


# --------------------------------------------------------------------------------------------
# soft_bound
# --------------------------------------------------------------------------------------------


def relu(x):
    return torch.clamp_min(x, 0)


def reduce(x, reduction):
    return x.mean() if reduction == "mean" else x.sum()


def scale_of(x, reduction):
    """d reduce(x) / d x_i."""
    return 1.0 / x.numel() if reduction == "mean" else 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "margin, penalty, reduction, shape",
    [
        (0.0, "squared", "mean", (17,)),
        (0.5, "squared", "sum", (4, 5)),
        (0.5, "hinge", "mean", (17,)),
        (0.0, "hinge", "sum", (4, 5)),
        (0.25, "squared", "mean", (2, 3, 4)),
    ],
)
@pytest.mark.parametrize("op", ["<=", "<", ">=", ">"])
def test_soft_bound_single_comparison(op, margin, penalty, reduction, shape, dtype):
    bound = 100.0
    y = (bound + 2.0 * torch.randn(shape, dtype=dtype)).requires_grad_()
    spec = f"soft_bound(y {op} 100, penalty={penalty}, margin={margin}, reduction={reduction})"
    if penalty == "squared" and margin == 0.0 and reduction == "mean":
        assert lossdsl.compile(f"soft_bound(y {op} 100)").terms[0].penalty == "squared"  # the defaults
    ours = lossdsl.compile(spec)(y=y)
    with torch.no_grad():
        # violation and its derivative w.r.t. y
        if op in ("<=", "<"):
            violation, sign = relu(y - bound + margin), 1.0
        else:
            violation, sign = relu(margin - (y - bound)), -1.0
        active = (violation > 0).to(dtype)
        value = reduce(violation.square() if penalty == "squared" else violation, reduction)
        d = 2 * violation if penalty == "squared" else active
        expected_grad = sign * d * scale_of(y, reduction)
    torch.testing.assert_close(ours, value)
    torch.testing.assert_close(grad(ours, y)[0], expected_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_soft_bound_card_example(dtype):
    """The documented equivalence: soft_bound(y <= 100) == relu(y - 100).square().mean()."""
    y = (100 + 5 * torch.randn(30, dtype=dtype)).requires_grad_()
    ours = lossdsl.compile("soft_bound(y <= 100)")(y=y)
    ref = F.relu(y - 100).square().mean()
    assert_parity(ours, ref, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("penalty", ["squared", "hinge"])
def test_soft_bound_chain_adds_links(penalty, reduction, dtype):
    y = (0.5 + torch.randn(25, dtype=dtype)).requires_grad_()
    ours = lossdsl.compile(f"soft_bound(0 <= y <= 1, penalty={penalty}, reduction={reduction})")(y=y)
    with torch.no_grad():
        low, high = relu(-y), relu(y - 1)
        if penalty == "squared":
            value = reduce(low.square(), reduction) + reduce(high.square(), reduction)
            expected_grad = (-2 * low + 2 * high) * scale_of(y, reduction)
        else:
            value = reduce(low, reduction) + reduce(high, reduction)
            expected_grad = (-(low > 0).to(dtype) + (high > 0).to(dtype)) * scale_of(y, reduction)
    torch.testing.assert_close(ours, value)
    torch.testing.assert_close(grad(ours, y)[0], expected_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_soft_bound_chain_with_margin(dtype):
    y = (0.5 + torch.randn(25, dtype=dtype)).requires_grad_()
    ours = lossdsl.compile("soft_bound(0 <= y <= 1, margin=0.25)")(y=y)
    with torch.no_grad():
        low, high = relu(0.25 - y), relu(y - 1 + 0.25)
        value = low.square().mean() + high.square().mean()
        expected_grad = (-2 * low + 2 * high) / y.numel()
    torch.testing.assert_close(ours, value)
    torch.testing.assert_close(grad(ours, y)[0], expected_grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("penalty", ["squared", "hinge"])
def test_soft_bound_equality(penalty, reduction, dtype):
    a = leaf(4, 3, dtype=dtype)
    b = leaf(4, 3, dtype=dtype)
    ours = lossdsl.compile(f"soft_bound(a == b, penalty={penalty}, reduction={reduction})")(a=a, b=b)
    with torch.no_grad():
        diff = a - b
        if penalty == "squared":
            value = reduce(diff.square(), reduction)
            ga = 2 * diff * scale_of(a, reduction)
        else:
            value = reduce(diff.abs(), reduction)
            ga = torch.sign(diff) * scale_of(a, reduction)
    torch.testing.assert_close(ours, value)
    g_a, g_b = grad(ours, a, b)
    torch.testing.assert_close(g_a, ga)
    torch.testing.assert_close(g_b, -ga)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_soft_bound_arithmetic_of_inputs(reduction, dtype):
    upper = leaf(20, dtype=dtype)
    lower = leaf(20, dtype=dtype)
    loss_fn = lossdsl.compile(f"soft_bound(upper - lower >= 0, reduction={reduction})")
    assert loss_fn.inputs == ("upper", "lower")
    ours = loss_fn(upper=upper, lower=lower)
    with torch.no_grad():
        violation = relu(lower - upper)
        value = reduce(violation.square(), reduction)
        g_lower = 2 * violation * scale_of(upper, reduction)
    torch.testing.assert_close(ours, value)
    g_u, g_l = grad(ours, upper, lower)
    torch.testing.assert_close(g_u, -g_lower)
    torch.testing.assert_close(g_l, g_lower)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_soft_bound_scaled_and_negated_expressions(dtype):
    x = leaf(15, dtype=dtype)
    z = leaf(15, dtype=dtype)
    ours = lossdsl.compile("soft_bound(2 * x + 1 <= -z / 4, penalty=hinge)")(x=x, z=z)
    with torch.no_grad():
        violation = relu(2 * x + 1 + z / 4)
        active = (violation > 0).to(dtype) / x.numel()
    torch.testing.assert_close(ours, violation.mean())
    g_x, g_z = grad(ours, x, z)
    torch.testing.assert_close(g_x, 2 * active)
    torch.testing.assert_close(g_z, active / 4)


def test_soft_bound_empty_and_integer_inputs():
    empty = torch.zeros(0, requires_grad=True)
    value = lossdsl.compile("soft_bound(y <= 1)")(y=empty)
    torch.testing.assert_close(value, torch.zeros(()))
    counts = torch.tensor([0, 3, 7])
    expected = relu(counts.to(torch.get_default_dtype()) - 5).square().mean()
    torch.testing.assert_close(lossdsl.compile("soft_bound(y <= 5)")(y=counts), expected)


# --------------------------------------------------------------------------------------------
# Inputs renamed by keyword
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_renamed_inputs(dtype):
    head2 = leaf(8, 3, dtype=dtype)
    t2 = torch.randn(8, 3, dtype=dtype)
    loss_fn = lossdsl.compile("mse(pred=head2, target=t2)")
    assert loss_fn.inputs == ("head2", "t2")
    # pred/target are not read; passing unrelated ones changes nothing.
    ours = loss_fn(pred=torch.full((2,), 1e6, dtype=dtype), target=torch.zeros(5), head2=head2, t2=t2)
    assert_parity(ours, F.mse_loss(head2, t2), head2)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_renamed_inputs_mixed_with_defaults(dtype):
    pred = leaf(6, 4, dtype=dtype)
    target = torch.randint(0, 4, (6,))
    aux = leaf(6, dtype=dtype)
    y2 = torch.randn(6, dtype=dtype)
    logits2 = leaf(6, dtype=dtype)
    y3 = torch.randint(0, 2, (6,)).to(dtype)
    loss_fn = lossdsl.compile("ce() + 0.5 * mae(pred=aux, target=y2) + bce(pred=logits2, target=y3)")
    assert set(loss_fn.inputs) == {"pred", "target", "aux", "y2", "logits2", "y3"}
    ours = loss_fn(pred, target, aux=aux, y2=y2, logits2=logits2, y3=y3)
    ref = F.cross_entropy(pred, target) + 0.5 * F.l1_loss(aux, y2) + F.binary_cross_entropy_with_logits(logits2, y3)
    assert_parity(ours, ref, pred, aux, logits2)
    torch.testing.assert_close(loss_fn.last_terms["mae"], F.l1_loss(aux, y2).detach())
    torch.testing.assert_close(loss_fn.last_terms["bce"], F.binary_cross_entropy_with_logits(logits2, y3).detach())


# --------------------------------------------------------------------------------------------
# Numerical stability and low precision
# --------------------------------------------------------------------------------------------


def huge_logits(*shape: int) -> torch.Tensor:
    signs = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0)
    return (1e4 * signs).requires_grad_()


@pytest.mark.parametrize(
    "spec, pred_shape, target_kind",
    [
        ("ce()", (8, 3), "class"),
        ("ce(weight=[1, 2, 3], label_smoothing=0.1)", (8, 3), "class"),
        ("ce()", (8,), "binary"),
        ("ce(label_smoothing=0.1)", (8,), "binary"),
        ("ce(weight=[1, 3])", (8, 1), "binary"),
        ("ce(weight=[1, 3], label_smoothing=0.2)", (8,), "binary"),
        ("ce(weight=balanced, label_smoothing=0.1)", (8,), "binary"),
        ("bce()", (8,), "binary"),
        ("bce(pos_weight=[2, 0.5])", (4, 2), "binary"),
    ],
)
def test_huge_logits_are_finite(spec, pred_shape, target_kind):
    pred = huge_logits(*pred_shape)
    if target_kind == "class":
        target = torch.randint(0, pred_shape[1], (pred_shape[0],))
    else:
        target = torch.randint(0, 2, pred_shape)
        if spec.startswith("bce"):
            target = target.float()
    value = lossdsl.compile(spec)(pred=pred, target=target)
    (g,) = grad(value, pred)
    assert torch.isfinite(value)
    assert torch.isfinite(g).all()
    # and the value is the (stable) reference's
    if spec == "ce()" and target_kind == "class":
        torch.testing.assert_close(value, F.cross_entropy(pred, target))
    if spec == "ce(weight=[1, 3], label_smoothing=0.2)":
        ref = F.cross_entropy(two_class_logits(pred), target, weight=torch.tensor([1.0, 3.0]), label_smoothing=0.2)
        torch.testing.assert_close(value, ref)
    if spec == "bce()":
        torch.testing.assert_close(value, F.binary_cross_entropy_with_logits(pred, target))


@pytest.mark.parametrize(
    "spec, pred_shape",
    [("ce()", (16, 5)), ("ce(weight=[1, 2, 3, 4, 5], label_smoothing=0.1)", (16, 5)), ("ce()", (16,)),
     ("ce(weight=balanced)", (16, 5)), ("mse()", (16, 5)), ("mse(reduction=sum)", (16,))],
)
def test_bfloat16_close_to_float32(spec, pred_shape):
    pred32 = torch.randn(pred_shape)
    if spec.startswith("ce"):
        target = torch.randint(0, pred_shape[1] if len(pred_shape) > 1 else 2, (pred_shape[0],))
    else:
        target = torch.randn(pred_shape)
    pred16 = pred32.to(torch.bfloat16).requires_grad_()
    target16 = target if spec.startswith("ce") else target.to(torch.bfloat16)
    value16 = lossdsl.compile(spec)(pred=pred16, target=target16)
    (g16,) = grad(value16, pred16)
    assert value16.dtype == torch.bfloat16
    assert torch.isfinite(g16.float()).all()
    # float32 on the same (rounded) inputs
    pred_ref = pred16.detach().float().requires_grad_()
    value32 = lossdsl.compile(spec)(pred=pred_ref, target=target16 if spec.startswith("ce") else target16.float())
    (g32,) = grad(value32, pred_ref)
    torch.testing.assert_close(value16.float(), value32, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g16.float(), g32, rtol=5e-2, atol=5e-3)
