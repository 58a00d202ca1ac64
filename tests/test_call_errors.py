"""Call-time inputs a fuzzer found mishandled: each is now either computed (checked against a
reference: torch's functional losses or the formula written out) or an E402 naming the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

import lossdsl

f64 = torch.float64


def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, dtype=f64)).requires_grad_()


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, *wrt: torch.Tensor) -> None:
    """Same value and the same gradients w.r.t. ``wrt``."""
    assert ours.shape == ()
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, wrt), torch.autograd.grad(ref, wrt)):
        torch.testing.assert_close(g_ours, g_ref)


def assert_e402(spec: str, inputs: dict, name: str) -> str:
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec)(**inputs)
    assert info.value.diagnostics[0].code == "E402"
    assert f"input '{name}' of " in str(info.value)
    return str(info.value)


def all_classes(shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Random class indices of ``shape`` in which every class is present."""
    t = torch.randint(0, num_classes, shape).reshape(-1)
    t[:num_classes] = torch.arange(num_classes)
    return t[torch.randperm(t.numel())].reshape(shape)


def balanced(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    y = targets.reshape(-1).numpy()
    return torch.tensor(compute_class_weight("balanced", classes=np.arange(num_classes), y=y), dtype=f64)


def two_class(z: torch.Tensor) -> torch.Tensor:
    """Binary logits z as the two-class logits [0, z], on which F.cross_entropy is ce's binary form."""
    return torch.stack([torch.zeros_like(z), z], dim=1)


# --- 1. integer targets of any dtype -----------------------------------------------------------

INT_DTYPES = [torch.int32, torch.int16, torch.int8, torch.uint8]
INT_IDS = ["i32", "i16", "i8", "u8"]


def ce_reference(spec_kwargs: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    num_classes = pred.shape[1]
    if spec_kwargs == "weight=balanced":
        return F.cross_entropy(pred, target, weight=balanced(target, num_classes))
    if spec_kwargs == "ignore_index=1":
        return F.cross_entropy(pred, target, ignore_index=1)
    if spec_kwargs == "weight=[1, 2, 3], label_smoothing=0.1":
        return F.cross_entropy(pred, target, weight=torch.tensor([1.0, 2, 3], dtype=f64), label_smoothing=0.1)
    return F.cross_entropy(pred, target)


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=INT_IDS)
@pytest.mark.parametrize("shape", [(12, 3), (4, 3, 2, 2)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("kwargs", ["", "weight=balanced", "ignore_index=1", "weight=[1, 2, 3], label_smoothing=0.1"])
def test_ce_multiclass_integer_targets_of_any_dtype(kwargs, shape, dtype):
    pred = leaf(*shape)
    target = all_classes((shape[0], *shape[2:]), shape[1])
    ours = lossdsl.compile(f"ce({kwargs})")(pred, target.to(dtype))
    assert_parity(ours, ce_reference(kwargs, pred, target), pred)


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=INT_IDS)
@pytest.mark.parametrize("kwargs", ["", "weight=balanced", "ignore_index=1", "label_smoothing=0.1"])
def test_ce_binary_integer_targets_of_any_dtype(kwargs, dtype):
    z = leaf(12)
    target = all_classes((12,), 2)
    ours = lossdsl.compile(f"ce({kwargs})")(z, target.to(dtype))
    if kwargs == "weight=balanced":
        ref = F.cross_entropy(two_class(z), target, weight=balanced(target, 2))
    elif kwargs == "ignore_index=1":
        ref = F.cross_entropy(two_class(z), target, ignore_index=1)
    else:
        ref = F.cross_entropy(two_class(z), target, label_smoothing=0.1 if kwargs else 0.0)
    assert_parity(ours, ref, z)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16], ids=["i32", "i16"])
def test_ce_negative_ignore_index_in_narrow_integer_targets(dtype):
    pred, target = leaf(10, 3), all_classes((10,), 3)
    target[::3] = -100
    ours = lossdsl.compile("ce(sample_weight=w)")(pred, target.to(dtype), w=torch.ones(10))
    assert_parity(ours, F.cross_entropy(pred, target), pred)


def test_ce_ignore_index_beyond_int32_does_not_wrap():
    # 2**32 wraps to 0 in int32: compared there, every class-0 target would be ignored.
    pred, target = leaf(10, 3), all_classes((10,), 3)
    ours = lossdsl.compile(f"ce(ignore_index={2**32}, label_smoothing=0.1)")(pred, target.to(torch.int32))
    assert_parity(ours, F.cross_entropy(pred, target, label_smoothing=0.1), pred)


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=INT_IDS)
@pytest.mark.parametrize("squared", [False, True])
def test_hinge_multiclass_integer_targets_of_any_dtype(squared, dtype):
    pred, target = leaf(9, 3), all_classes((9,), 3)
    w = torch.rand(9, dtype=f64)
    spec = f"hinge(squared={str(squared).lower()}"
    p = 2 if squared else 1
    ours = lossdsl.compile(spec + ")")(pred, target.to(dtype))
    assert_parity(ours, F.multi_margin_loss(pred, target, p=p), pred)
    ours = lossdsl.compile(spec + ", sample_weight=w)")(pred, target.to(dtype), w=w)
    ref = (w * F.multi_margin_loss(pred, target, p=p, reduction="none")).sum() / w.sum()
    assert_parity(ours, ref, pred)


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=INT_IDS)
@pytest.mark.parametrize("spec", ["focal(alpha=[1, 2, 3])", "dice()", "tversky(alpha=0.3, beta=0.7)"])
def test_class_index_terms_read_any_integer_dtype_as_int64(spec, dtype):
    pred, target = leaf(4, 3, 2, 2), all_classes((4, 2, 2), 3)
    assert_parity(lossdsl.compile(spec)(pred, target.to(dtype)), lossdsl.compile(spec)(pred, target), pred)


# --- 2. empty batches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "pred_shape", "target"),
    [
        ("soft_f1()", (0,), torch.zeros(0)),
        ("soft_f1(reduction=sum)", (0, 3), torch.zeros(0, 3, dtype=torch.long)),
        ("soft_f1(sample_weight=w)", (0, 1), torch.zeros(0)),
        ("dice()", (0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)),
        ("dice(squared=true)", (0, 1, 4, 4), torch.zeros(0, 1, 4, 4)),
        ("tversky()", (0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)),
        ("tversky(sample_weight=w)", (0, 3, 4), torch.zeros(0, 4, dtype=torch.long)),
        ("contrastive(a=pred, b=target, same=s)", (0, 2), torch.zeros(0, 2)),
        ("kl_normal(mu=pred, logvar=target)", (0,), torch.zeros(0)),
    ],
)
def test_empty_batch_gives_zero_with_a_gradient(spec, pred_shape, target):
    pred = leaf(*pred_shape)
    value = lossdsl.compile(spec)(pred=pred, target=target, w=torch.zeros(0), s=torch.zeros(0))
    torch.testing.assert_close(value, torch.zeros((), dtype=f64))
    (g,) = torch.autograd.grad(value, pred)
    assert g.shape == pred.shape


# --- 3. a scalar pred where a batch is needed --------------------------------------------------

SCALAR = torch.tensor(0.5, dtype=f64)


@pytest.mark.parametrize(
    ("spec", "inputs", "name"),
    [
        ("hinge()", {"pred": SCALAR, "target": torch.tensor(1)}, "pred"),
        ("hinge(sample_weight=w)", {"pred": SCALAR, "target": torch.tensor(1), "w": torch.ones(1)}, "pred"),
        ("focal()", {"pred": SCALAR, "target": torch.tensor([1])}, "pred"),
        ("focal(sample_weight=w)", {"pred": SCALAR, "target": torch.tensor(1.0), "w": torch.ones(1)}, "pred"),
        ("soft_f1()", {"pred": SCALAR, "target": torch.tensor(1.0)}, "pred"),
        ("bce(sample_weight=w)", {"pred": SCALAR, "target": torch.tensor(1.0), "w": torch.ones(1)}, "pred"),
        ("quantile(sample_weight=w)", {"pred": SCALAR, "target": torch.tensor(1.0), "w": torch.ones(1)}, "pred"),
        ("mse(sample_weight=w)", {"pred": SCALAR, "target": torch.tensor(1.0), "w": torch.ones(1)}, "pred"),
        ("contrastive()", {"a": SCALAR, "b": SCALAR, "same": torch.ones(1)}, "a"),
        ("kl_normal()", {"mu": SCALAR, "logvar": SCALAR}, "mu"),
    ],
)
def test_scalar_pred_where_a_batch_is_needed(spec, inputs, name):
    assert "got a scalar" in assert_e402(spec, inputs, name)


# --- 4. [N] statistics and embeddings are D = 1 ------------------------------------------------


def kl_normal_closed(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per element."""
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_normal_of_n_statistics_has_one_latent_dimension(reduction):
    mu, logvar, w = leaf(8), leaf(8), torch.rand(8, dtype=f64)
    ours = lossdsl.compile(f"kl_normal(reduction={reduction})")(mu=mu, logvar=logvar)
    ref = kl_normal_closed(mu, logvar)
    assert_parity(ours, ref.mean() if reduction == "mean" else ref.sum(), mu, logvar)
    ours = lossdsl.compile(f"kl_normal(reduction={reduction}, sample_weight=w)")(mu=mu, logvar=logvar, w=w)
    ref = (w * kl_normal_closed(mu, logvar)).sum()
    assert_parity(ours, ref / w.sum() if reduction == "mean" else ref, mu, logvar)


def test_kl_normal_of_n_statistics_inside_fairness():
    mu, logvar, group = leaf(8), leaf(8), torch.tensor([0, 1] * 4)
    loss_fn = lossdsl.compile("fairness(group_loss(kl_normal), group=g)")
    assert_parity(loss_fn(mu=mu, logvar=logvar, g=group), loss_fn(mu=mu[:, None], logvar=logvar[:, None], g=group), mu)


def test_contrastive_of_n_embeddings_uses_the_absolute_difference():
    a, b, same = leaf(8), leaf(8), torch.tensor([1, 0] * 4)
    ours = lossdsl.compile("contrastive(margin=1.5)")(a=a, b=b, same=same)
    d = (a - b).abs()
    ref = (same * d**2 + (1 - same) * F.relu(1.5 - d) ** 2).mean()
    assert_parity(ours, ref, a, b)


# --- 5. dtypes of the second and third inputs --------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "inputs", "name"),
    [
        ("kl(p=a, q=b)", {"a": torch.randn(4, 3), "b": torch.ones(4, 3, dtype=torch.long)}, "b"),
        ("kl_normal()", {"mu": torch.randn(4, 2), "logvar": torch.ones(4, 2, dtype=torch.bool)}, "logvar"),
        ("contrastive()", {"a": torch.randn(4, 2), "b": torch.ones(4, 2, dtype=torch.bool), "same": torch.ones(4)}, "b"),
        ("contrastive()", {"a": torch.randn(4, 2), "b": torch.ones(4, 2, dtype=torch.complex64), "same": torch.ones(4)}, "b"),
        ("triplet()", {"anchor": torch.randn(4, 2), "positive": torch.ones(4, 2, dtype=torch.bool), "negative": torch.randn(4, 2)}, "positive"),
        ("triplet()", {"anchor": torch.randn(4, 2), "positive": torch.randn(4, 2), "negative": torch.ones(4, 2, dtype=torch.bool)}, "negative"),
        ("ce()", {"pred": torch.randn(4, 3), "target": torch.ones(4, dtype=torch.complex64)}, "target"),
        ("focal()", {"pred": torch.randn(4, 3), "target": torch.ones(4, dtype=torch.complex64)}, "target"),
        ("hinge()", {"pred": torch.randn(4, 3), "target": torch.ones(4, dtype=torch.complex64)}, "target"),
        ("dice()", {"pred": torch.randn(4, 3, 2), "target": torch.ones(4, 2, dtype=torch.complex64)}, "target"),
        ("bce()", {"pred": torch.randn(4), "target": torch.ones(4, dtype=torch.complex64)}, "target"),
    ],
)
def test_wrong_dtypes_name_the_input(spec, inputs, name):
    assert_e402(spec, inputs, name)


# --- 6. one-channel logits with integer 0/1 labels ----------------------------------------------


def overlap_closed(prob: torch.Tensor, mask: torch.Tensor, alpha: float | None, smooth: float) -> torch.Tensor:
    """MONAI's DiceLoss(sigmoid=True) (alpha None) or TverskyLoss, per sample over [N, P], averaged."""
    tp = (prob * mask).sum(1)
    if alpha is None:
        return (1 - (2 * tp + smooth) / (prob.sum(1) + mask.sum(1) + smooth)).mean()
    fp, fn = (prob * (1 - mask)).sum(1), ((1 - prob) * mask).sum(1)
    return (1 - (tp + smooth) / (tp + alpha * fp + (1 - alpha) * fn + smooth)).mean()


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8, torch.bool], ids=["i64", "i32", "u8", "bool"])
@pytest.mark.parametrize("spec, alpha", [("dice(smooth=0.5)", None), ("tversky(alpha=0.3, beta=0.7, smooth=0.5)", 0.3)])
def test_one_channel_overlap_takes_integer_labels(spec, alpha, dtype):
    pred, labels = leaf(8, 1, 4, 4), torch.randint(0, 2, (8, 4, 4))
    ours = lossdsl.compile(spec)(pred, labels.to(dtype))
    ref = overlap_closed(torch.sigmoid(pred).reshape(8, -1), labels.reshape(8, -1).to(f64), alpha, 0.5)
    assert_parity(ours, ref, pred)


def test_one_channel_focal_takes_integer_labels():
    pred, labels = leaf(4, 1, 3, 3), torch.randint(0, 2, (4, 3, 3))
    ours = lossdsl.compile("focal(gamma=2.0, alpha=0.25)")(pred, labels.to(torch.int32))
    y, p = labels.to(f64), torch.sigmoid(pred[:, 0])
    p_t = p * y + (1 - p) * (1 - y)
    ref = F.binary_cross_entropy_with_logits(pred[:, 0], y, reduction="none") * (1 - p_t) ** 2
    assert_parity(ours, (ref * (0.25 * y + 0.75 * (1 - y))).mean(), pred)


def test_ce_one_class_logits_with_indices_say_what_binary_logits_are():
    message = assert_e402("ce()", {"pred": torch.randn(8, 1, 4, 4), "target": torch.randint(0, 2, (8, 4, 4))}, "pred")
    assert "binary logits are [N] or [N, 1]" in message


# --- 7. gradients reach learned sample weights -------------------------------------------------


def weighted_ce(logits, target, w, class_weight=None, smoothing=0.0, ignore_index=-100) -> torch.Tensor:
    """ce's weighted mean: sum(w * loss) / sum(w * class weight of the kept targets)."""
    losses = F.cross_entropy(
        logits, target, weight=class_weight, ignore_index=ignore_index, reduction="none", label_smoothing=smoothing
    )
    keep = target != ignore_index
    share = keep.to(f64) if class_weight is None else class_weight[target * keep] * keep
    return (w * losses).sum() / (w * share).sum()


@pytest.mark.parametrize(
    "kwargs", ["", "weight=[1, 3]", "label_smoothing=0.1", "weight=[1, 3], label_smoothing=0.1", "ignore_index=-1"]
)
@pytest.mark.parametrize("target_dtype", [torch.long, torch.bool], ids=["i64", "bool"])
def test_ce_binary_gradient_reaches_sample_weights(kwargs, target_dtype):
    z, w = leaf(10), torch.rand(10, dtype=f64, requires_grad=True)
    target = all_classes((10,), 2)
    if "ignore_index" in kwargs and target_dtype == torch.long:
        target[::4] = -1
    ours = lossdsl.compile(f"ce({kwargs}{', ' if kwargs else ''}sample_weight=w)")(z, target.to(target_dtype), w=w)
    class_weight = torch.tensor([1.0, 3.0], dtype=f64) if "weight" in kwargs else None
    smoothing = 0.1 if "smoothing" in kwargs else 0.0
    ref = weighted_ce(two_class(z), target, w, class_weight, smoothing, -1 if "ignore" in kwargs else -100)
    assert_parity(ours, ref, z, w)


@pytest.mark.parametrize("kwargs", ["", "weight=[1, 2, 3], label_smoothing=0.1", "ignore_index=2"])
def test_ce_multiclass_gradient_reaches_sample_weights(kwargs):
    pred, w, target = leaf(10, 3), torch.rand(10, dtype=f64, requires_grad=True), all_classes((10,), 3)
    ours = lossdsl.compile(f"ce({kwargs}{', ' if kwargs else ''}sample_weight=w)")(pred, target, w=w)
    class_weight = torch.tensor([1.0, 2, 3], dtype=f64) if "weight" in kwargs else None
    ref = weighted_ce(pred, target, w, class_weight, 0.1 if "smoothing" in kwargs else 0.0, 2 if "ignore" in kwargs else -100)
    assert_parity(ours, ref, pred, w)


def test_bce_and_focal_gradients_reach_sample_weights():
    pred, w, target = leaf(6, 2), torch.rand(6, dtype=f64, requires_grad=True), torch.randint(0, 2, (6, 2)).to(f64)
    per_sample = F.binary_cross_entropy_with_logits(pred, target, pos_weight=torch.tensor(2.0, dtype=f64), reduction="none")
    ours = lossdsl.compile("bce(pos_weight=2.0, sample_weight=w)")(pred, target, w=w)
    assert_parity(ours, (w * per_sample.mean(1)).sum() / w.sum(), pred, w)
    p = torch.sigmoid(pred)
    p_t = p * target + (1 - p) * (1 - target)
    focal = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * (1 - p_t) ** 2
    ours = lossdsl.compile("focal(sample_weight=w)")(pred, target, w=w)
    assert_parity(ours, (w * focal.mean(1)).sum() / w.sum(), pred, w)


# --- 8. 0 / 0 in the overlap losses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "scale"),
    [
        ("tversky(alpha=0, beta=0, smooth=0)", 1.0),
        ("tversky(alpha=0, smooth=0)", 1.0),
        ("dice(smooth=0)", 1.0),
        ("dice(smooth=0)", 800.0),  # sigmoid(-800) is 0 in float64: no predicted mass either
        ("dice(smooth=0, squared=true)", 800.0),
    ],
)
def test_empty_class_without_smoothing_scores_perfectly(spec, scale):
    pred = (-scale - torch.rand(2, 1, 4, 4, dtype=f64)).requires_grad_() if scale > 1 else leaf(2, 1, 4, 4)
    value = lossdsl.compile(spec)(pred, torch.zeros(2, 1, 4, 4))
    (g,) = torch.autograd.grad(value, pred)
    assert torch.isfinite(value) and torch.isfinite(g).all()
    if spec.startswith("tversky") or scale > 1:  # nothing predicted, or false positives weigh 0
        torch.testing.assert_close(value, torch.zeros((), dtype=f64))


def test_tversky_without_smoothing_matches_the_formula_elsewhere():
    pred, mask = leaf(3, 1, 4, 4), torch.randint(0, 2, (3, 1, 4, 4)).to(f64)
    mask[0] = 0  # sample 0: no positives, and with alpha = 0 nothing else counts: 0 / 0, loss 0
    ours = lossdsl.compile("tversky(alpha=0, beta=0.5, smooth=0)")(pred, mask)
    prob, mask = torch.sigmoid(pred).reshape(3, -1)[1:], mask.reshape(3, -1)[1:]
    tp, fn = (prob * mask).sum(1), ((1 - prob) * mask).sum(1)
    ref = (1 - tp / (tp + 0.5 * fn)).sum() / 3  # sample 0 adds 0 to the mean
    assert_parity(ours, ref, pred)
