"""Parity of the rest of the catalogue with its references: values and gradients.

focal, hinge, soft_f1, smooth_l1, log_cosh, quantile, dice, tversky, kl_normal, kl,
contrastive, triplet, ce with probability targets and bce with label smoothing, against
torch's functional losses, MONAI's losses, scikit-learn's ``fbeta_score`` and fairlearn's
metrics, or closed forms written out here; ``sample_weight`` on every term; saturated
logits; wrong inputs. (ce, bce, mse, mae, huber and soft_bound's plain forms are in
test_terms.py.)
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairlearn.metrics import (
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate_difference,
    true_positive_rate_difference,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.losses import DiceLoss, FocalLoss, TverskyLoss
from sklearn.metrics import fbeta_score

import lossdsl

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]
REDUCTIONS = ["mean", "sum"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: on busy cores, intra-op threads only wait on each other (an
    element-wise op on 24 values took 15 ms with 2 threads, 10 us with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grad(value: torch.Tensor, *wrt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(value, wrt, allow_unused=True)


def leaf(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, dtype=dtype)).requires_grad_()


def tol(dtype: torch.dtype, loose: bool = False) -> dict:
    """Tolerances for a reference that sums in another order (or, ``loose``, computes in float32)."""
    if loose or dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-6}
    return {"rtol": 1e-9, "atol": 1e-11}


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, *wrt: torch.Tensor, loose: bool = False) -> None:
    """Same value and dtype, same gradients w.r.t. ``wrt``; ``ref`` may be float32 (MONAI) when ``loose``."""
    assert ours.shape == ()
    dtype = ours.dtype
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref.to(dtype), **tol(dtype, loose))
    for g_ours, g_ref in zip(grad(ours, *wrt), grad(ref, *wrt)):
        assert torch.isfinite(g_ours).all()
        torch.testing.assert_close(g_ours, g_ref.to(dtype), **tol(dtype, loose))


def fmt(values) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def spec_of(name: str, *args: str) -> str:
    return f"{name}({', '.join(a for a in args if a)})"


def reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    return x.mean() if reduction == "mean" else x.sum()


def weighted(losses: torch.Tensor, w: torch.Tensor, reduction: str) -> torch.Tensor:
    """The documented sample_weight rule on an element-wise loss [N, ...]: per-sample mean (or sum)
    over the sample's elements, then sum(w * l) / sum(w) (or sum(w * l))."""
    per_sample = losses.reshape(losses.shape[0], -1)
    per_sample = per_sample.mean(1) if reduction == "mean" else per_sample.sum(1)
    total = (w * per_sample).sum()
    return total / w.sum() if reduction == "mean" else total


def two_class(z: torch.Tensor) -> torch.Tensor:
    z = z.reshape(-1)
    return torch.stack([torch.zeros_like(z), z], dim=1)


def hard_logits(hard: torch.Tensor, dtype: torch.dtype, size: float = 50.0) -> torch.Tensor:
    """0/1 predictions as logits +-size (sigmoid(50) is 1.0 in float64, sigmoid(-50) is 2e-22)."""
    return torch.where(hard.bool(), size, -size).to(dtype).requires_grad_()


def saturated(*shape: int) -> torch.Tensor:
    signs = torch.where(torch.rand(shape) < 0.5, -1.0, 1.0)
    return (1e4 * signs).requires_grad_()


# --------------------------------------------------------------------------------------------
# Closed-form references
# --------------------------------------------------------------------------------------------


def torchvision_sigmoid_focal(x: torch.Tensor, t: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss(reduction="none"), written out (alpha=None for alpha < 0)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None and alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def softmax_focal(x: torch.Tensor, t: torch.Tensor, gamma: float, alpha: list | None) -> torch.Tensor:
    """-alpha_y (1 - p_y)^gamma log p_y per sample (and pixel): [N, ...]."""
    log_p = F.log_softmax(x, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if alpha is not None:
        loss = loss * torch.tensor(alpha, dtype=x.dtype)[t]
    return loss


def soft_fbeta_loss(x, y, beta: float, reduction: str, w=None) -> torch.Tensor:
    """1 - F_beta per label from soft counts, as docs/terms.md writes it."""
    n = x.shape[0]
    p = torch.sigmoid(x).reshape(n, -1)
    y = y.reshape(n, -1).to(x.dtype)
    w = torch.ones(n, 1, dtype=x.dtype) if w is None else w.reshape(n, 1).to(x.dtype)
    tp = (w * p * y).sum(0)
    fp = (w * p * (1 - y)).sum(0)
    fn = (w * (1 - p) * y).sum(0)
    b2 = beta**2
    f = (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)
    return reduce(1 - f, reduction)


def pinball(pred, target, q) -> torch.Tensor:
    r = target - pred
    return torch.maximum(q * r, (q - 1) * r)


def log_cosh_closed(x: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.cosh(x))


def kl_normal_closed(mu, logvar) -> torch.Tensor:
    """Per-sample KL [N]."""
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).reshape(mu.shape[0], -1).sum(1)


def kl_per_sample(p, q) -> torch.Tensor:
    per_element = F.kl_div(F.log_softmax(q, 1), F.log_softmax(p, 1), log_target=True, reduction="none")
    return per_element.reshape(p.shape[0], -1).sum(1)


def contrastive_closed(a, b, same, margin) -> torch.Tensor:
    d = (a - b).norm(dim=1)
    same = same.to(a.dtype)
    return same * d**2 + (1 - same) * F.relu(margin - d) ** 2


def hinge_binary(x, y, margin, squared) -> torch.Tensor:
    s = 2 * y.reshape(-1).to(x.dtype) - 1
    h = F.relu(margin - s * x.reshape(-1))
    return h**2 if squared else h


# --------------------------------------------------------------------------------------------
# focal, sigmoid form
# --------------------------------------------------------------------------------------------

FOCAL_SIGMOID_SHAPES = {
    "N": ((12,), (12,), "hard"),
    "N1-N": ((12, 1), (12,), "hard"),
    "N1-N1": ((12, 1), (12, 1), "hard"),
    "NC": ((6, 4), (6, 4), "hard"),
    "NC-soft": ((6, 4), (6, 4), "soft"),
}


def focal_args(gamma, alpha, reduction):
    return [f"gamma={gamma}", f"alpha={alpha}" if alpha is not None else "", f"reduction={reduction}"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.5, None), (1.5, 0.8), (2.0, 0.0)])
@pytest.mark.parametrize("case", list(FOCAL_SIGMOID_SHAPES))
def test_focal_sigmoid_matches_torchvision_formula(case, gamma, alpha, dtype):
    for reduction in REDUCTIONS:
        pred_shape, target_shape, kind = FOCAL_SIGMOID_SHAPES[case]
        x = leaf(*pred_shape, dtype=dtype, scale=2.0)
        t = torch.rand(target_shape, dtype=dtype) if kind == "soft" else torch.randint(0, 2, target_shape).to(dtype)
        ours = lossdsl.compile(spec_of("focal", *focal_args(gamma, alpha, reduction)))(pred=x, target=t)
        ref = reduce(torchvision_sigmoid_focal(x.reshape(t.shape), t, gamma, alpha), reduction)
        assert_parity(ours, ref, x)


def test_focal_defaults_are_gamma_2_without_alpha():
    x = leaf(9, 3, dtype=torch.float64)
    t = torch.randint(0, 2, (9, 3)).double()
    assert_parity(lossdsl.compile("focal()")(pred=x, target=t), torchvision_sigmoid_focal(x, t, 2.0, None).mean(), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.5, None), (3.0, 0.6)])
@pytest.mark.parametrize("shape", [(7, 3), (7, 1), (2, 1, 3, 3), (2, 2, 3)], ids=["NC", "N1", "N1HW", "NCL"])
def test_focal_sigmoid_matches_monai(shape, gamma, alpha, dtype):
    """MONAI's sigmoid focal loss (computed in float32) on 0/1 targets of pred's shape. MONAI's mean is
    the element mean, as ours; its "sum" averages spatial dims, so ours is its reduction="none" summed."""
    for reduction in REDUCTIONS:
        x = leaf(*shape, dtype=dtype, scale=2.0)
        t = torch.randint(0, 2, shape).to(dtype)
        ours = lossdsl.compile(spec_of("focal", *focal_args(gamma, alpha, reduction)))(pred=x, target=t)
        monai_reduction = "mean" if reduction == "mean" else "none"
        monai = FocalLoss(use_softmax=False, gamma=gamma, alpha=alpha, reduction=monai_reduction)
        ref = reduce(monai(x, t), reduction)
        assert_parity(ours, ref, x, loose=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "pred_shape, target_shape", [((10,), (10,)), ((10, 1), (10,)), ((5, 3), (5, 3))], ids=["N", "N1", "NC"]
)
def test_focal_gamma_zero_is_bce_with_logits(pred_shape, target_shape, dtype):
    for reduction in REDUCTIONS:
        x = leaf(*pred_shape, dtype=dtype, scale=2.0)
        t = torch.randint(0, 2, target_shape).to(dtype)
        ours = lossdsl.compile(f"focal(gamma=0, reduction={reduction})")(pred=x, target=t)
        assert_parity(ours, F.binary_cross_entropy_with_logits(x.reshape(t.shape), t, reduction=reduction), x)


# --------------------------------------------------------------------------------------------
# focal, softmax form
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("gamma, alpha", [(2.0, [0.25, 0.5, 0.25]), (0.5, None), (1.0, [1.0, 2.0, 0.5])])
@pytest.mark.parametrize("shape", [(8, 3), (2, 3, 4, 3)], ids=["NC", "NCHW"])
def test_focal_softmax_matches_monai(shape, gamma, alpha, dtype):
    """-alpha_y (1 - p_y)^gamma log p_y: MONAI's FocalLoss(use_softmax=True, to_onehot_y=True) element-wise
    loss summed over classes; ``mean`` divides by samples x pixels."""
    for reduction in REDUCTIONS:
        x = leaf(*shape, dtype=dtype, scale=2.0)
        t = torch.randint(0, shape[1], (shape[0], *shape[2:]))
        args = [f"gamma={gamma}", f"alpha={fmt(alpha)}" if alpha else "", f"reduction={reduction}"]
        ours = lossdsl.compile(spec_of("focal", *args))(pred=x, target=t)
        monai = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, alpha=alpha, reduction="none")
        per_pixel = monai(x, t.unsqueeze(1)).sum(1)  # [N, ...]
        assert per_pixel.shape == t.shape
        assert_parity(ours, reduce(per_pixel, reduction), x, loose=True)
        # ... and the exact closed form in the input's precision
        again = lossdsl.compile(spec_of("focal", *args))(pred=x, target=t)
        assert_parity(again, reduce(softmax_focal(x, t, gamma, alpha), reduction), x)


@pytest.mark.parametrize("alpha", ["[4]", "[0.25]", "[1]"])
def test_focal_with_a_one_entry_list_alpha_is_refused_when_checked(alpha):
    """A list alpha weighs the softmax form's classes, and logits [N, 1] take the sigmoid form, which
    refuses a list: focal(alpha=[4]) was accepted and could never run."""
    src = f"loss = focal(alpha={alpha})"
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "E204"
    assert diagnostic.message.startswith(f"'alpha' of focal() got {alpha}: a list holds one weight per class")
    assert (diagnostic.span.column, diagnostic.span.end_column) == (src.index("[") + 1, len(src))


def test_focal_with_two_classes_takes_a_list_alpha():
    """The smallest list alpha, two classes of the softmax form."""
    x = leaf(16, 2, dtype=torch.float64, scale=2.0)
    t = torch.randint(0, 2, (16,))
    ours = lossdsl.compile("focal(alpha=[0.25, 0.75])")(pred=x, target=t)
    assert_parity(ours, softmax_focal(x, t, 2.0, [0.25, 0.75]).mean(), x)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(8, 3), (2, 3, 4, 5)], ids=["NC", "NCHW"])
def test_focal_softmax_against_monai_reduced(shape, reduction):
    """MONAI's own reductions: its mean divides by N x C x pixels (ours by N x pixels); its "sum"
    averages the spatial dims first (and, with no spatial dims, averages everything: torch's mean(dim=[])
    reduces every dim), so ours equals MONAI's "sum" times the pixel count, not MONAI's "sum"."""
    x = leaf(*shape, dtype=torch.float32)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    alpha = [0.25, 0.5, 0.25]
    ours = lossdsl.compile(f"focal(alpha={fmt(alpha)}, reduction={reduction})")(pred=x, target=t)
    monai = FocalLoss(use_softmax=True, to_onehot_y=True, alpha=alpha, reduction=reduction)(x, t.unsqueeze(1))
    classes, pixels = shape[1], math.prod(shape[2:])
    if reduction == "mean":
        ref = monai * classes
    elif len(shape) > 2:
        ref = monai * pixels
    else:
        ref = monai * shape[0] * classes
    assert_parity(ours, ref, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(9, 4), (2, 4, 3, 2)], ids=["NC", "NCHW"])
def test_focal_softmax_gamma_zero_is_cross_entropy(shape, dtype):
    for reduction in REDUCTIONS:
        x = leaf(*shape, dtype=dtype, scale=2.0)
        t = torch.randint(0, shape[1], (shape[0], *shape[2:]))
        ours = lossdsl.compile(f"focal(gamma=0.0, reduction={reduction})")(pred=x, target=t)
        assert_parity(ours, F.cross_entropy(x, t, reduction=reduction), x)


# --------------------------------------------------------------------------------------------
# hinge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("margin, squared", [(1.0, False), (0.5, True), (2.0, False), (1.0, True)])
@pytest.mark.parametrize(
    "pred_shape, target_shape", [((15,), (15,)), ((15, 1), (15,)), ((15, 1), (15, 1))], ids=["N", "N1-N", "N1-N1"]
)
def test_hinge_binary_closed_form(pred_shape, target_shape, margin, squared, dtype):
    for reduction in REDUCTIONS:
        x = leaf(*pred_shape, dtype=dtype, scale=1.5)
        y = torch.randint(0, 2, target_shape)
        spec = f"hinge(margin={margin}, squared={str(squared).lower()}, reduction={reduction})"
        ours = lossdsl.compile(spec)(pred=x, target=y)
        assert_parity(ours, reduce(hinge_binary(x, y, margin, squared), reduction), x)


def test_hinge_defaults():
    x = leaf(10, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    assert_parity(lossdsl.compile("hinge()")(pred=x, target=y), hinge_binary(x, y, 1.0, False).mean(), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("margin, squared", [(1.0, False), (0.5, True), (2.0, True)])
def test_hinge_multiclass_matches_multi_margin_loss(margin, squared, dtype):
    for reduction in REDUCTIONS:
        x = leaf(11, 4, dtype=dtype)
        y = torch.randint(0, 4, (11,))
        spec = f"hinge(margin={margin}, squared={str(squared).lower()}, reduction={reduction})"
        ours = lossdsl.compile(spec)(pred=x, target=y)
        ref = F.multi_margin_loss(x, y, p=2 if squared else 1, margin=margin, reduction=reduction)
        assert_parity(ours, ref, x)


# --------------------------------------------------------------------------------------------
# soft_f1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("pred_shape, target_shape", [((30,), (30,)), ((30, 1), (30,))], ids=["N", "N1"])
def test_soft_f1_binary_hard_predictions_match_sklearn(pred_shape, target_shape, beta):
    y = torch.randint(0, 2, (30,))
    hard = torch.randint(0, 2, (30,))
    x = hard_logits(hard, torch.float64).reshape(pred_shape)
    expected = fbeta_score(y.numpy(), hard.numpy(), beta=beta, zero_division=0)
    for reduction in REDUCTIONS:  # one label: mean and sum agree
        ours = lossdsl.compile(f"soft_f1(beta={beta}, reduction={reduction})")(pred=x, target=y.reshape(target_shape))
        torch.testing.assert_close(ours, torch.tensor(1 - expected, dtype=torch.float64))


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
def test_soft_f1_multilabel_hard_predictions_match_sklearn_macro(beta):
    y = torch.randint(0, 2, (25, 5))
    hard = torch.randint(0, 2, (25, 5))
    y[:, 4] = 0  # a label with no positives ...
    hard[:, 4] = 0  # ... and no predicted positives: F = 0 (zero_division=0)
    x = hard_logits(hard, torch.float64)
    macro = fbeta_score(y.numpy(), hard.numpy(), beta=beta, average="macro", zero_division=0)
    per_label = fbeta_score(y.numpy(), hard.numpy(), beta=beta, average=None, zero_division=0)
    ours_mean = lossdsl.compile(f"soft_f1(beta={beta})")(pred=x, target=y)
    ours_sum = lossdsl.compile(f"soft_f1(beta={beta}, reduction=sum)")(pred=x, target=y)
    torch.testing.assert_close(ours_mean, torch.tensor(1 - macro, dtype=torch.float64))
    torch.testing.assert_close(ours_sum, torch.tensor((1 - per_label).sum(), dtype=torch.float64))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(30,), (30, 4)], ids=["N", "NC"])
def test_soft_f1_sample_weight_matches_sklearn(shape, reduction):
    y = torch.randint(0, 2, shape)
    hard = torch.randint(0, 2, shape)
    w = torch.rand(shape[0], dtype=torch.float64) * 3
    w[:3] = 0.0
    x = hard_logits(hard, torch.float64)
    average = "binary" if len(shape) == 1 else None
    per_label = np.atleast_1d(
        fbeta_score(y.numpy(), hard.numpy(), beta=1.5, average=average, sample_weight=w.numpy(), zero_division=0)
    )
    expected = (1 - per_label).mean() if reduction == "mean" else (1 - per_label).sum()
    ours = lossdsl.compile(f"soft_f1(beta=1.5, reduction={reduction}, sample_weight=w)")(pred=x, target=y, w=w)
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 20),
    c=st.integers(1, 4),
    beta=st.sampled_from([0.5, 1.0, 3.0]),
    seed=st.integers(0, 2**31 - 1),
    weighted_=st.booleans(),
)
def test_soft_f1_hard_predictions_property(n, c, beta, seed, weighted_):
    """Any labels, any 0/1 predictions (labels without positives included): 1 - sklearn's macro F_beta."""
    rng = np.random.default_rng(seed)
    # one label: 1-D arrays, as scikit-learn reads an [N, 1] array as one column of classes 0/1
    shape = (n,) if c == 1 else (n, c)
    y = rng.integers(0, 2, shape)
    hard = rng.integers(0, 2, shape)
    w = rng.random(n) + 0.1 if weighted_ else None
    x = hard_logits(torch.from_numpy(hard), torch.float64)
    average = "binary" if c == 1 else "macro"
    expected = fbeta_score(y, hard, beta=beta, average=average, zero_division=0, sample_weight=w)
    inputs = {"pred": x, "target": torch.from_numpy(y)}
    spec = f"soft_f1(beta={beta})"
    if weighted_:
        spec = f"soft_f1(beta={beta}, sample_weight=w)"
        inputs["w"] = torch.from_numpy(w)
    ours = lossdsl.compile(spec)(**inputs)
    assert abs(ours.item() - (1 - expected)) <= 1e-9


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("beta", [1.0, 2.0])
@pytest.mark.parametrize(
    "pred_shape, target_shape", [((16,), (16,)), ((16, 1), (16,)), ((10, 3), (10, 3))], ids=["N", "N1", "NC"]
)
def test_soft_f1_soft_values_and_gradients(pred_shape, target_shape, beta, dtype):
    for reduction in REDUCTIONS:
        x = leaf(*pred_shape, dtype=dtype)
        y = torch.randint(0, 2, target_shape)
        y.view(-1)[:2] = torch.tensor([0, 1])
        ours = lossdsl.compile(f"soft_f1(beta={beta}, reduction={reduction})")(pred=x, target=y)
        assert_parity(ours, soft_fbeta_loss(x.reshape(y.shape[0], -1), y, beta, reduction), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_soft_f1_large_beta_stays_finite_in_half_precision(dtype):
    """beta = 1000: (1 + beta^2) overflows float16; the term divides it out. Value and gradient
    as the float64 reference, to half precision."""
    x = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(1))
    low = x.to(dtype).requires_grad_()
    ours = lossdsl.compile("soft_f1(beta=1000)")(pred=low, target=y)
    reference_x = x.to(dtype).double().requires_grad_()
    expected = soft_fbeta_loss(reference_x, y, 1000.0, "mean")
    torch.testing.assert_close(ours.double(), expected, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(grad(ours, low)[0].double(), grad(expected, reference_x)[0], atol=1e-3, rtol=5e-2)


def test_soft_f1_empty_label_scores_zero_with_finite_gradient():
    """No positives and no predicted mass (sigmoid(-1000) is exactly 0): F = 0, so the loss is 1."""
    x = torch.full((6, 2), -1000.0, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(6, 2, dtype=torch.long)
    expected = 1 - fbeta_score(y.numpy(), np.zeros((6, 2)), beta=1.0, average="macro", zero_division=0)
    ours = lossdsl.compile("soft_f1()")(pred=x, target=y)
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64))
    assert torch.isfinite(grad(ours, x)[0]).all()


# --------------------------------------------------------------------------------------------
# smooth_l1, log_cosh, quantile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(13,), (4, 3, 2)], ids=["N", "3d"])
@pytest.mark.parametrize(
    "spec, beta",
    [("smooth_l1()", 1.0), ("smooth_l1(beta=0.5)", 0.5), ("smooth_l1(0.5)", 0.5), ("smooth_l1(beta=0)", 0.0),
     ("smooth_l1(2.5)", 2.5)],
)
def test_smooth_l1_matches_functional(spec, beta, shape, dtype):
    for reduction in REDUCTIONS:
        pred = leaf(*shape, dtype=dtype, scale=2.0)
        target = 2.0 * torch.randn(shape, dtype=dtype)
        text = spec[:-1] + (", " if spec[-2] != "(" else "") + f"reduction={reduction})"
        ours = lossdsl.compile(text)(pred=pred, target=target)
        assert_parity(ours, F.smooth_l1_loss(pred, target, beta=beta, reduction=reduction), pred)
        if beta == 0.0:
            torch.testing.assert_close(ours, F.l1_loss(pred, target, reduction=reduction))


def test_smooth_l1_positional_equals_keyword():
    positional, keyword = lossdsl.compile("smooth_l1(0.5)"), lossdsl.compile("smooth_l1(beta=0.5)")
    assert positional.terms[0].beta == keyword.terms[0].beta == 0.5


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(13,), (4, 5)], ids=["N", "NC"])
def test_log_cosh_closed_form_float64(shape, reduction):
    pred = leaf(*shape, dtype=torch.float64, scale=3.0)
    target = leaf(*shape, dtype=torch.float64, scale=3.0)
    ours = lossdsl.compile(f"log_cosh(reduction={reduction})")(pred=pred, target=target)
    assert_parity(ours, reduce(log_cosh_closed(pred - target), reduction), pred, target)


def test_log_cosh_float32_moderate_and_huge_residuals():
    pred = leaf(10, dtype=torch.float32, scale=2.0)
    target = torch.randn(10)
    assert_parity(lossdsl.compile("log_cosh()")(pred=pred, target=target), log_cosh_closed(pred - target).mean(), pred)
    # |x| = 1e4: cosh overflows float32, log(cosh(x)) = |x| - log 2 + log1p(exp(-2|x|)) and d/dx = tanh(x) = sign(x)
    huge = torch.tensor([1e4, -1e4, 1e4], requires_grad=True)
    value = lossdsl.compile("log_cosh(reduction=sum)")(pred=huge, target=torch.zeros(3))
    (g,) = grad(value, huge)
    torch.testing.assert_close(value, torch.tensor(3 * (1e4 - math.log(2.0))))
    torch.testing.assert_close(g, torch.sign(huge.detach()))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "spec, q", [("quantile()", 0.5), ("quantile(0.9)", 0.9), ("quantile(q=0.1)", 0.1)]
)
@pytest.mark.parametrize("shape", [(14,), (5, 3)], ids=["N", "NC"])
def test_quantile_single(spec, q, shape, dtype):
    for reduction in REDUCTIONS:
        pred = leaf(*shape, dtype=dtype)
        target = torch.randn(shape, dtype=dtype)
        text = spec[:-1] + (", " if spec[-2] != "(" else "") + f"reduction={reduction})"
        ours = lossdsl.compile(text)(pred=pred, target=target)
        assert_parity(ours, reduce(pinball(pred, target, q), reduction), pred)



@pytest.mark.parametrize("target_shape", [(12,), (4, 2)], ids=["N", "NL"])
@pytest.mark.parametrize(
    "qs, dtype",
    [
        ([0.1, 0.5, 0.9], torch.float32),
        ([0.1, 0.5, 0.9], torch.float64),
        ([0.25, 0.75], torch.float32),
        ([0.25, 0.75], torch.float64),
    ],
    ids=["q1-5-9-f32", "q1-5-9-f64", "q25-75-f32", "q25-75-f64"],
)
def test_quantile_several(qs, dtype, target_shape):
    for reduction in REDUCTIONS:
        pred = leaf(*target_shape, len(qs), dtype=dtype)
        target = torch.randn(target_shape, dtype=dtype)
        ours = lossdsl.compile(f"quantile(q={fmt(qs)}, reduction={reduction})")(pred=pred, target=target)
        columns = torch.stack([pinball(pred[..., i], target, q) for i, q in enumerate(qs)], dim=-1)
        assert_parity(ours, reduce(columns, reduction), pred)


# --------------------------------------------------------------------------------------------
# dice, tversky
# --------------------------------------------------------------------------------------------


def test_overlap_defaults_are_monais():
    dice_fields = lossdsl.REGISTRY["dice"].params.model_fields
    tversky_fields = lossdsl.REGISTRY["tversky"].params.model_fields
    monai_dice = inspect.signature(DiceLoss).parameters
    monai_tversky = inspect.signature(TverskyLoss).parameters
    assert dice_fields["smooth"].default == monai_dice["smooth_nr"].default == monai_dice["smooth_dr"].default
    assert dice_fields["include_background"].default == monai_dice["include_background"].default
    assert dice_fields["squared"].default == monai_dice["squared_pred"].default
    assert dice_fields["reduction"].default == monai_dice["reduction"].default.value
    assert tversky_fields["smooth"].default == monai_tversky["smooth_nr"].default == monai_tversky["smooth_dr"].default
    assert tversky_fields["alpha"].default == monai_tversky["alpha"].default
    assert tversky_fields["beta"].default == monai_tversky["beta"].default
    assert tversky_fields["include_background"].default == monai_tversky["include_background"].default
    # and the values: dice() / tversky() against MONAI's defaults
    x = leaf(3, 1, 4, 4, dtype=torch.float64)
    m = torch.randint(0, 2, (3, 1, 4, 4)).double()
    assert_parity(lossdsl.compile("dice()")(pred=x, target=m), DiceLoss(sigmoid=True)(x, m), x)
    assert_parity(lossdsl.compile("tversky()")(pred=x, target=m), TverskyLoss(sigmoid=True)(x, m), x)
    x3 = leaf(2, 3, 4, 4, dtype=torch.float64)
    t3 = torch.randint(0, 3, (2, 1, 4, 4))
    assert_parity(lossdsl.compile("dice()")(pred=x3, target=t3), DiceLoss(softmax=True, to_onehot_y=True)(x3, t3), x3)
    assert_parity(
        lossdsl.compile("tversky()")(pred=x3, target=t3), TverskyLoss(softmax=True, to_onehot_y=True)(x3, t3), x3
    )


def overlap_reference(kind: str, channels: int, reduction: str, **options):
    """The MONAI loss the spec is documented to equal."""
    smooth = options.pop("smooth", 1e-5)
    activation = {"sigmoid": True} if channels == 1 else {"softmax": True, "to_onehot_y": True}
    if kind == "dice":
        options["squared_pred"] = options.pop("squared", False)
        return DiceLoss(**activation, smooth_nr=smooth, smooth_dr=smooth, reduction=reduction, **options)
    return TverskyLoss(**activation, smooth_nr=smooth, smooth_dr=smooth, reduction=reduction, **options)


def overlap_spec(kind: str, reduction: str, **options) -> str:
    args = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]
    return spec_of(kind, *args, f"reduction={reduction}")


DICE_OPTIONS = [{}, {"squared": True}, {"smooth": 1.0}, {"smooth": 0.0, "squared": True}]
TVERSKY_OPTIONS = [{}, {"alpha": 0.3, "beta": 0.7}, {"alpha": 0.8, "beta": 0.2, "smooth": 1.0}]
OVERLAP_CASES = [("dice", o) for o in DICE_OPTIONS] + [("tversky", o) for o in TVERSKY_OPTIONS]
OVERLAP_IDS = [f"{k}-{'-'.join(f'{a}{b}' for a, b in o.items()) or 'default'}" for k, o in OVERLAP_CASES]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind, options", OVERLAP_CASES, ids=OVERLAP_IDS)
def test_overlap_one_channel_matches_monai_sigmoid(kind, options, dtype):
    for reduction in REDUCTIONS:
        x = leaf(3, 1, 5, 4, dtype=dtype, scale=2.0)
        mask = torch.randint(0, 2, (3, 1, 5, 4)).to(dtype)
        ours = lossdsl.compile(overlap_spec(kind, reduction, **options))(pred=x, target=mask)
        ref = overlap_reference(kind, 1, reduction, **dict(options))(x, mask)
        assert_parity(ours, ref, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("kind, options", OVERLAP_CASES, ids=OVERLAP_IDS)
def test_overlap_several_channels_matches_monai_softmax(kind, options, include_background, dtype):
    # MONAI's to_onehot_y makes float32 masks; squared_pred then takes norms, square roots and squares
    # of them in float32 (sqrt(5)**2 != 5), so in float64 it agrees to float32 precision only.
    loose = options.get("squared", False) and dtype == torch.float64
    for reduction in REDUCTIONS:
        for target_form in ["N1HW", "NHW"]:
            x = leaf(2, 4, 4, 3, dtype=dtype, scale=2.0)
            t = torch.randint(0, 4, (2, 1, 4, 3))
            ours_target = t if target_form == "N1HW" else t[:, 0]
            spec = overlap_spec(kind, reduction, include_background=include_background, **options)
            ours = lossdsl.compile(spec)(pred=x, target=ours_target)
            ref = overlap_reference(kind, 4, reduction, include_background=include_background, **dict(options))(x, t)
            assert_parity(ours, ref, x, loose=loose)
    if loose:  # exact against MONAI given float64 one-hot masks
        one_hot = F.one_hot(t[:, 0], 4).movedim(-1, 1).to(dtype)
        ref = DiceLoss(softmax=True, include_background=include_background, squared_pred=True,
                       smooth_nr=options.get("smooth", 1e-5), smooth_dr=options.get("smooth", 1e-5))(x, one_hot)
        spec = overlap_spec(kind, "mean", include_background=include_background, **options)
        ours = lossdsl.compile(spec)(pred=x, target=t)
        assert_parity(ours, ref, x)


@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_overlap_3d_and_float_one_hot_masks(kind):
    """[N, C, D, H, W] logits; float one-hot masks of pred's shape equal the class indices."""
    x = leaf(2, 3, 2, 3, 2, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 1, 2, 3, 2))
    one_hot = F.one_hot(t[:, 0], 3).movedim(-1, 1).double()
    loss_fn = lossdsl.compile(f"{kind}(include_background=false)")
    monai_cls = DiceLoss if kind == "dice" else TverskyLoss
    ref = monai_cls(softmax=True, to_onehot_y=True, include_background=False)(x, t)
    assert_parity(loss_fn(pred=x, target=t), ref, x)
    assert_parity(loss_fn(pred=x, target=one_hot), monai_cls(softmax=True, include_background=False)(x, one_hot), x)


# --------------------------------------------------------------------------------------------
# kl_normal, kl
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(9, 4), (3, 2, 3), (1, 5)], ids=["ND", "N23", "one"])
def test_kl_normal_closed_form(shape, dtype):
    for reduction in REDUCTIONS:
        mu = leaf(*shape, dtype=dtype)
        logvar = leaf(*shape, dtype=dtype, scale=0.5)
        ours = lossdsl.compile(f"kl_normal(reduction={reduction})")(mu=mu, logvar=logvar)
        assert_parity(ours, reduce(kl_normal_closed(mu, logvar), reduction), mu, logvar)


def test_kl_normal_renamed_inputs_and_gradients():
    m = leaf(6, 3, dtype=torch.float64)
    lv = leaf(6, 3, dtype=torch.float64)
    ours = lossdsl.compile("kl_normal(mu=m, logvar=lv)")(m=m, lv=lv)
    g_mu, g_logvar = grad(ours, m, lv)
    # d/dmu = mu / N, d/dlogvar = (exp(logvar) - 1) / (2 N)
    torch.testing.assert_close(g_mu, m.detach() / 6)
    torch.testing.assert_close(g_logvar, (lv.detach().exp() - 1) / 12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(8, 5), (3, 4, 2)], ids=["NC", "NCL"])
def test_kl_matches_kl_div(shape, dtype):
    for reduction in REDUCTIONS:
        p = leaf(*shape, dtype=dtype, scale=2.0)
        q = leaf(*shape, dtype=dtype, scale=2.0)
        ours = lossdsl.compile(f"kl(p=teacher, q=student, reduction={reduction})")(teacher=p, student=q)
        torch_reduction = "batchmean" if reduction == "mean" else "sum"
        ref = F.kl_div(F.log_softmax(q, 1), F.log_softmax(p, 1), log_target=True, reduction=torch_reduction)
        assert_parity(ours, ref, p, q)


# --------------------------------------------------------------------------------------------
# contrastive, triplet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("margin", [1.0, 2.5])
def test_contrastive_closed_form(margin, dtype):
    for reduction in REDUCTIONS:
        a = leaf(12, 3, dtype=dtype)
        b = leaf(12, 3, dtype=dtype)
        same = torch.randint(0, 2, (12,))
        ours = lossdsl.compile(f"contrastive(margin={margin}, reduction={reduction})")(a=a, b=b, same=same)
        assert_parity(ours, reduce(contrastive_closed(a, b, same, margin), reduction), a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_contrastive_identical_pairs_have_finite_gradients(dtype):
    a0 = torch.randn(6, 4, dtype=dtype)
    b0 = torch.randn(6, 4, dtype=dtype)
    b0[:2] = a0[:2]  # pair 0 (same) and pair 1 (different) are identical
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    same = torch.tensor([1, 0, 1, 0, 1, 0])
    ours = lossdsl.compile("contrastive(margin=1.5)")(a=a, b=b, same=same)
    g_a, g_b = grad(ours, a, b)
    assert torch.isfinite(g_a).all() and torch.isfinite(g_b).all()
    # value: pair 0 costs 0, pair 1 costs margin^2
    with torch.no_grad():
        rest = contrastive_closed(a0[2:], b0[2:], same[2:], 1.5)
        torch.testing.assert_close(ours, (1.5**2 + rest.sum()) / 6)
    # gradients: d(d^2)/da = 2 (a - b) = 0 at pair 0; the other pairs as the closed form
    torch.testing.assert_close(g_a[0], torch.zeros(4, dtype=dtype))
    a2, b2 = a0[2:].clone().requires_grad_(), b0[2:].clone().requires_grad_()
    ref = contrastive_closed(a2, b2, same[2:], 1.5).sum() / 6
    r_a, r_b = grad(ref, a2, b2)
    torch.testing.assert_close(g_a[2:], r_a)
    torch.testing.assert_close(g_b[2:], r_b)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p, margin", [(2, 1.0), (1, 1.0), (2, 0.3), (1, 2.0), (3, 0.5)])
def test_triplet_matches_functional(p, margin, dtype):
    for reduction in REDUCTIONS:
        anchor, positive, negative = (leaf(10, 4, dtype=dtype) for _ in range(3))
        ours = lossdsl.compile(f"triplet(margin={margin}, p={p}, reduction={reduction})")(
            anchor=anchor, positive=positive, negative=negative
        )
        ref = F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=p, reduction=reduction)
        assert_parity(ours, ref, anchor, positive, negative)


def test_triplet_defaults():
    anchor, positive, negative = (leaf(7, 3, dtype=torch.float64) for _ in range(3))
    ours = lossdsl.compile("triplet()")(anchor=anchor, positive=positive, negative=negative)
    assert_parity(ours, F.triplet_margin_loss(anchor, positive, negative), anchor, positive, negative)


# --------------------------------------------------------------------------------------------
# ce with probability targets; bce with label smoothing
# --------------------------------------------------------------------------------------------

CE_PROB_CONFIGS = {
    "plain": (None, 0.0),
    "weight": ([0.5, 1.0, 2.0, 1.5], 0.0),
    "smoothing": (None, 0.1),
    "weight_smoothing": ([0.5, 1.0, 2.0, 1.5], 0.2),
}


def ce_args(weight, smoothing, reduction):
    return [f"weight={fmt(weight)}" if weight else "", f"label_smoothing={smoothing}" if smoothing else "",
            f"reduction={reduction}"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(7, 4), (2, 4, 3, 2)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("name", list(CE_PROB_CONFIGS))
def test_ce_probability_targets(name, shape, dtype):
    for reduction in REDUCTIONS:
        weight, smoothing = CE_PROB_CONFIGS[name]
        x = leaf(*shape, dtype=dtype, scale=2.0)
        t = torch.softmax(2 * torch.randn(shape, dtype=dtype), dim=1)
        ours = lossdsl.compile(spec_of("ce", *ce_args(weight, smoothing, reduction)))(pred=x, target=t)
        w = torch.tensor(weight, dtype=dtype) if weight else None
        assert_parity(ours, F.cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction=reduction), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("pred_shape, target_shape", [((9,), (9,)), ((9, 1), (9,)), ((9, 1), (9, 1))],
                         ids=["N", "N1-N", "N1-N1"])
@pytest.mark.parametrize("weight, smoothing", [(None, 0.0), ([1.0, 3.0], 0.0), (None, 0.1), ([2.0, 0.5], 0.2)])
def test_ce_binary_probability_targets(weight, smoothing, pred_shape, target_shape, dtype):
    for reduction in REDUCTIONS:
        z = leaf(*pred_shape, dtype=dtype, scale=2.0)
        t = torch.rand(target_shape, dtype=dtype)
        ours = lossdsl.compile(spec_of("ce", *ce_args(weight, smoothing, reduction)))(pred=z, target=t)
        w = torch.tensor(weight, dtype=dtype) if weight else None
        probs = torch.stack([1 - t.reshape(-1), t.reshape(-1)], dim=1)
        ref = F.cross_entropy(two_class(z), probs, weight=w, label_smoothing=smoothing, reduction=reduction)
        assert_parity(ours, ref, z)
        if weight is None and not smoothing:
            bce = F.binary_cross_entropy_with_logits(z.reshape(-1), t.reshape(-1), reduction=reduction)
            torch.testing.assert_close(ours, bce)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("smoothing, pos_weight", [(0.1, None), (0.3, [1.0, 4.0, 0.5]), (1.0, None)])
@pytest.mark.parametrize("shape", [(10,), (6, 3)], ids=["N", "NC"])
def test_bce_label_smoothing(shape, smoothing, pos_weight, dtype):
    for reduction in REDUCTIONS:
        if pos_weight and len(shape) == 1:
            pos_weight = pos_weight[:1]
        x = leaf(*shape, dtype=dtype, scale=2.0)
        y = torch.randint(0, 2, shape).to(dtype)
        args = [f"label_smoothing={smoothing}", f"pos_weight={fmt(pos_weight)}" if pos_weight else "",
                f"reduction={reduction}"]
        ours = lossdsl.compile(spec_of("bce", *args))(pred=x, target=y)
        pw = torch.tensor(pos_weight, dtype=dtype) if pos_weight else None
        ref = F.binary_cross_entropy_with_logits(
            x, y * (1 - smoothing) + smoothing / 2, pos_weight=pw, reduction=reduction
        )
        assert_parity(ours, ref, x)


# --------------------------------------------------------------------------------------------
# sample_weight on every term
# --------------------------------------------------------------------------------------------
# Each case: spec (without reduction/sample_weight), a builder of (inputs, leaves to differentiate)
# and the reference's element-wise losses [N, ...] (a tuple: soft_bound's chain adds its links).

N = 6


def _reg(shape=(N, 3)):
    def make(dtype):
        pred = leaf(*shape, dtype=dtype, scale=2.0)
        return {"pred": pred, "target": 2 * torch.randn(shape, dtype=dtype)}, ("pred",)

    return make


def _logits_and(target_fn, shape):
    def make(dtype):
        pred = leaf(*shape, dtype=dtype, scale=2.0)
        return {"pred": pred, "target": target_fn(shape, dtype)}, ("pred",)

    return make


def _classes(shape, dtype):
    return torch.randint(0, shape[1], (shape[0], *shape[2:]))


def _binary(shape, dtype):
    return torch.randint(0, 2, (shape[0],))


def _zero_one(shape, dtype):
    return torch.randint(0, 2, shape).to(dtype)


def _mask_indices(shape, dtype):
    return torch.randint(0, shape[1], (shape[0], 1, *shape[2:]))


def _embeddings(*names, extra=None):
    def make(dtype):
        inputs = {name: leaf(N, 4, dtype=dtype) for name in names}
        if extra:
            inputs.update(extra(dtype))
        return inputs, names

    return make


def _kl_normal(dtype):
    return {"mu": leaf(N, 4, dtype=dtype), "logvar": leaf(N, 4, dtype=dtype, scale=0.5)}, ("mu", "logvar")


def _y(dtype):
    return {"y": (0.5 + torch.randn(N, 3, dtype=dtype)).requires_grad_()}, ("y",)


QS = [0.25, 0.5, 0.75]  # exact in float32: see test_list_parameters_keep_float64_precision

WEIGHT_CASES = {
    "mse": ("mse()", _reg(), lambda i: (F.mse_loss(i["pred"], i["target"], reduction="none"),)),
    "mae": ("mae()", _reg((N,)), lambda i: (F.l1_loss(i["pred"], i["target"], reduction="none"),)),
    "huber": ("huber(0.5)", _reg((N, 2, 2)),
              lambda i: (F.huber_loss(i["pred"], i["target"], delta=0.5, reduction="none"),)),
    "smooth_l1": ("smooth_l1(beta=0.5)", _reg(),
                  lambda i: (F.smooth_l1_loss(i["pred"], i["target"], beta=0.5, reduction="none"),)),
    "log_cosh": ("log_cosh()", _reg(), lambda i: (log_cosh_closed(i["pred"] - i["target"]),)),
    "quantile": ("quantile(0.3)", _reg(), lambda i: (pinball(i["pred"], i["target"], 0.3),)),
    "quantile_several": (
        f"quantile(q={fmt(QS)})",
        _logits_and(lambda shape, dtype: torch.randn(shape[0], dtype=dtype), (N, 3)),
        lambda i: (torch.stack([pinball(i["pred"][:, k], i["target"], q) for k, q in enumerate(QS)], 1),),
    ),
    "ce_probabilities": (
        "ce(weight=[1.0, 2.0, 0.5], label_smoothing=0.1)",
        _logits_and(lambda shape, dtype: torch.softmax(torch.randn(shape, dtype=dtype), 1), (N, 3)),
        lambda i: (F.cross_entropy(i["pred"], i["target"], weight=torch.tensor([1.0, 2.0, 0.5], dtype=i["pred"].dtype),
                                   label_smoothing=0.1, reduction="none"),),
    ),
    "bce": ("bce(pos_weight=[1.0, 3.0, 0.5])", _logits_and(_zero_one, (N, 3)),
            lambda i: (F.binary_cross_entropy_with_logits(
                i["pred"], i["target"], pos_weight=torch.tensor([1.0, 3.0, 0.5], dtype=i["pred"].dtype),
                reduction="none"),)),
    "bce_smoothing": ("bce(label_smoothing=0.1)", _logits_and(_zero_one, (N,)),
                      lambda i: (F.binary_cross_entropy_with_logits(i["pred"], i["target"] * 0.9 + 0.05,
                                                                    reduction="none"),)),
    "focal_sigmoid": ("focal(gamma=2.0, alpha=0.25)", _logits_and(_zero_one, (N, 3)),
                      lambda i: (torchvision_sigmoid_focal(i["pred"], i["target"], 2.0, 0.25),)),
    "focal_softmax": ("focal(gamma=1.5, alpha=[0.25, 0.25, 0.5])", _logits_and(_classes, (N, 3, 2, 2)),
                      lambda i: (softmax_focal(i["pred"], i["target"], 1.5, [0.25, 0.25, 0.5]),)),
    "hinge_binary": ("hinge(margin=0.5)", _logits_and(_binary, (N,)),
                     lambda i: (hinge_binary(i["pred"], i["target"], 0.5, False),)),
    "hinge_multiclass": ("hinge(squared=true)", _logits_and(_classes, (N, 4)),
                         lambda i: (F.multi_margin_loss(i["pred"], i["target"], p=2, reduction="none"),)),
    "dice": ("dice()", _logits_and(_mask_indices, (N, 3, 3, 2)),
             lambda i: (DiceLoss(softmax=True, to_onehot_y=True, reduction="none")(i["pred"], i["target"]),)),
    "dice_one_channel": ("dice(squared=true)", _logits_and(_zero_one, (N, 1, 3, 3)),
                         lambda i: (DiceLoss(sigmoid=True, squared_pred=True, reduction="none")(i["pred"],
                                                                                                i["target"]),)),
    "tversky": ("tversky(alpha=0.3, beta=0.7)", _logits_and(_zero_one, (N, 1, 3, 3)),
                lambda i: (TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, reduction="none")(i["pred"], i["target"]),)),
    "kl_normal": ("kl_normal()", _kl_normal, lambda i: (kl_normal_closed(i["mu"], i["logvar"]),)),
    "kl": ("kl(p=p, q=q)", _embeddings("p", "q"), lambda i: (kl_per_sample(i["p"], i["q"]),)),
    "contrastive": ("contrastive(margin=2.0)",
                    _embeddings("a", "b", extra=lambda dtype: {"same": torch.randint(0, 2, (N,))}),
                    lambda i: (contrastive_closed(i["a"], i["b"], i["same"], 2.0),)),
    "triplet": ("triplet(margin=0.5, p=1)", _embeddings("anchor", "positive", "negative"),
                lambda i: (F.triplet_margin_loss(i["anchor"], i["positive"], i["negative"], margin=0.5, p=1,
                                                 reduction="none"),)),
    "soft_bound": ("soft_bound(0 <= y <= 1)", _y, lambda i: (F.relu(-i["y"]) ** 2, F.relu(i["y"] - 1) ** 2)),
}


def with_weight(spec: str, reduction: str, name: str = "wts") -> str:
    return spec[:-1] + (", " if spec[-2] != "(" else "") + f"reduction={reduction}, sample_weight={name})"


def sample_weights(dtype, zeros: int = 2) -> torch.Tensor:
    w = torch.rand(N, dtype=dtype) * 2
    w[:zeros] = 0.0  # samples that weigh nothing
    return w


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_sample_weight_rule(case, dtype):
    for reduction in REDUCTIONS:
        spec, make, reference = WEIGHT_CASES[case]
        inputs, leaves = make(dtype)
        w = sample_weights(dtype)
        ours = lossdsl.compile(with_weight(spec, reduction))(**inputs, wts=w)
        ref = sum(weighted(losses, w, reduction) for losses in reference(inputs))
        assert_parity(ours, ref, *(inputs[name] for name in leaves))


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_sample_weight_all_zero_gives_zero(case):
    spec, make, _ = WEIGHT_CASES[case]
    inputs, leaves = make(torch.float64)
    for reduction in REDUCTIONS:
        ours = lossdsl.compile(with_weight(spec, reduction))(**inputs, wts=torch.zeros(N, dtype=torch.float64))
        torch.testing.assert_close(ours, torch.zeros((), dtype=torch.float64))
        for g in grad(ours, *(inputs[name] for name in leaves)):
            torch.testing.assert_close(g, torch.zeros_like(g))


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_sample_weight_of_wrong_shape_names_the_input(case):
    spec, make, _ = WEIGHT_CASES[case]
    inputs, _ = make(torch.float64)
    loss_fn = lossdsl.compile(with_weight(spec, "mean", "per_sample_w"))
    for bad in (torch.ones(N, 1), torch.ones(N + 1), torch.ones(())):
        with pytest.raises(lossdsl.LossSpecError, match="'per_sample_w'"):
            loss_fn(**inputs, per_sample_w=bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "shape, class_weight, smoothing, ignore",
    [
        ((N, 4), None, 0.0, None),
        ((N, 4), [1.0, 2.0, 0.5, 3.0], 0.1, None),
        ((N, 4), [1.0, 2.0, 0.5, 3.0], 0.0, 1),
        ((N, 3, 2, 2), [1.0, 2.0, 0.5], 0.2, -100),
        ((N,), [1.0, 3.0], 0.0, None),
        ((N, 1), [1.0, 3.0], 0.1, -1),
        ((N,), None, 0.1, None),
    ],
    ids=["plain", "weight-smooth", "weight-ignore", "pixels-weight-smooth-ignore", "binary-weight",
         "binary-weight-smooth-ignore", "binary-smooth"],
)
def test_ce_sample_weight_rule(shape, class_weight, smoothing, ignore, dtype):
    """Each sample's loss and its share of the class-weighted denominator are multiplied by its weight."""
    binary = len(shape) == 1 or shape[1] == 1
    num_classes = 2 if binary else shape[1]
    target_shape = (shape[0],) if binary else (shape[0], *shape[2:])
    ref_kwargs = {"label_smoothing": smoothing}
    args = [f"label_smoothing={smoothing}" if smoothing else ""]
    cw = torch.ones(num_classes, dtype=dtype)
    if class_weight:
        cw = ref_kwargs["weight"] = torch.tensor(class_weight, dtype=dtype)
        args.append(f"weight={fmt(class_weight)}")
    if ignore is not None:
        ref_kwargs["ignore_index"] = ignore
        args.append(f"ignore_index={ignore}")
    spec = spec_of("ce", *args)
    for reduction in REDUCTIONS:
        pred = leaf(*shape, dtype=dtype, scale=2.0)
        target = torch.randint(0, num_classes, target_shape)
        if ignore is not None:
            target.view(-1)[1::3] = ignore
        ours_target = target.reshape(shape) if binary else target
        w = sample_weights(dtype)
        ours = lossdsl.compile(with_weight(spec, reduction))(pred=pred, target=ours_target, wts=w)
        logits = two_class(pred) if binary else pred
        losses = F.cross_entropy(logits, target, reduction="none", **ref_kwargs)  # class-weighted, 0 where ignored
        per_element = w.reshape(-1, *[1] * (losses.dim() - 1))  # each sample's weight, on its pixels
        keep = target != (ignore if ignore is not None else -100)
        total = (per_element * losses).sum()
        share = (per_element * cw[target * keep] * keep).sum()  # torch's mean denominator, weighted
        assert_parity(ours, total if reduction == "sum" else total / share, pred)
        # unit weights: the unweighted loss, as torch reduces it
        unit = torch.ones(N, dtype=dtype)
        ones = lossdsl.compile(with_weight(spec, reduction))(pred=pred, target=ours_target, wts=unit)
        unweighted = F.cross_entropy(logits, target, reduction=reduction, **ref_kwargs)
        torch.testing.assert_close(ones, unweighted, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ce_sample_weight_all_zero_and_wrong_shape(dtype):
    pred = leaf(N, 3, dtype=dtype)
    target = torch.randint(0, 3, (N,))
    loss_fn = lossdsl.compile("ce(weight=[1.0, 2.0, 3.0], sample_weight=wts)")
    value = loss_fn(pred=pred, target=target, wts=torch.zeros(N, dtype=dtype))
    torch.testing.assert_close(value, torch.zeros((), dtype=dtype))
    torch.testing.assert_close(grad(value, pred)[0], torch.zeros_like(pred))
    with pytest.raises(lossdsl.LossSpecError, match="'wts'"):
        loss_fn(pred=pred, target=target, wts=torch.ones(N - 1, dtype=dtype))


@pytest.mark.parametrize("form", ["N", "NC"])
def test_soft_f1_sample_weight_all_zero_and_wrong_shape(form):
    """All weights 0: no positives and no predicted mass in any label, so F = 0 and the loss is 1."""
    shape = (N,) if form == "N" else (N, 3)
    x = leaf(*shape, dtype=torch.float64)
    y = torch.randint(0, 2, shape)
    loss_fn = lossdsl.compile("soft_f1(sample_weight=wts)")
    value = loss_fn(pred=x, target=y, wts=torch.zeros(N, dtype=torch.float64))
    torch.testing.assert_close(value, torch.ones((), dtype=torch.float64))
    assert torch.isfinite(grad(value, x)[0]).all()
    with pytest.raises(lossdsl.LossSpecError, match="'wts'"):
        loss_fn(pred=x, target=y, wts=torch.ones(N, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_f1_sample_weight_soft_gradients(reduction, dtype):
    x = leaf(10, 3, dtype=dtype)
    y = torch.randint(0, 2, (10, 3))
    y[0] = 1
    w = torch.rand(10, dtype=dtype)
    ours = lossdsl.compile(f"soft_f1(beta=2.0, reduction={reduction}, sample_weight=w)")(pred=x, target=y, w=w)
    assert_parity(ours, soft_fbeta_loss(x, y, 2.0, reduction, w), x)


FAIRLEARN = {
    "dp_gap": demographic_parity_difference,
    "tpr_gap": true_positive_rate_difference,
    "fpr_gap": false_positive_rate_difference,
    "eo_gap": equalized_odds_difference,
}


def weighted_fairness_reference(stat, prob, group, y, w):
    """Per-group weighted soft rates, one loop over the groups."""
    def gap(chosen_fn):
        rates = []
        for code in torch.unique(group):
            chosen = (group == code) & chosen_fn
            if w[chosen].sum() > 0:
                rates.append((w * prob)[chosen].sum() / w[chosen].sum())
        return max(rates) - min(rates)

    everyone = torch.ones_like(y, dtype=torch.bool)
    if stat == "dp_gap":
        return gap(everyone)
    tpr, fpr = gap(y == 1), gap(y == 0)
    return {"tpr_gap": tpr, "fpr_gap": fpr, "eo_gap": torch.maximum(tpr, fpr)}[stat]


@pytest.mark.parametrize("stat", list(FAIRLEARN))
def test_fairness_sample_weight(stat):
    n = 36
    group = torch.arange(n) % 3 * 7 - 5  # three groups, sparse codes
    y = torch.randint(0, 2, (n,))
    y[:6] = torch.tensor([0, 0, 0, 1, 1, 1])  # every group has both labels
    hard = torch.randint(0, 2, (n,))
    w = torch.rand(n, dtype=torch.float64) + 0.05
    spec = f"fairness({stat}, group=g, sample_weight=w)"
    inputs = {"g": group, "w": w} if stat == "dp_gap" else {"g": group, "target": y, "w": w}
    # hard predictions: fairlearn with sample_weight
    ours = lossdsl.compile(spec)(pred=hard_logits(hard, torch.float64), **inputs)
    expected = FAIRLEARN[stat](y.numpy(), hard.numpy(), sensitive_features=group.numpy(), sample_weight=w.numpy())
    assert abs(ours.item() - expected) <= 1e-9
    unweighted = FAIRLEARN[stat](y.numpy(), hard.numpy(), sensitive_features=group.numpy())
    assert abs(expected - unweighted) > 1e-6  # the weights matter here
    # soft predictions: weighted group rates, values and gradients
    for dtype in DTYPES:
        x = leaf(n, dtype=dtype)
        wd = w.to(dtype)
        ours = lossdsl.compile(spec)(pred=x, **{**inputs, "w": wd})
        assert_parity(ours, weighted_fairness_reference(stat, torch.sigmoid(x), group, y, wd), x)
    # all weights 0: no group rate is defined, so 0; a wrong shape names the input
    zeros = torch.zeros(n, dtype=torch.float64)
    zero = lossdsl.compile(spec)(pred=leaf(n, dtype=torch.float64), **{**inputs, "w": zeros})
    torch.testing.assert_close(zero, torch.zeros((), dtype=torch.float64))
    with pytest.raises(lossdsl.LossSpecError, match="'w'"):
        lossdsl.compile(spec)(pred=leaf(n, dtype=torch.float64), **{**inputs, "w": torch.ones(n, 1)})


# --------------------------------------------------------------------------------------------
# float64 with list parameters that float32 cannot hold exactly
# --------------------------------------------------------------------------------------------


def _precision_case(name):
    x = leaf(6, 3, dtype=torch.float64)
    values = [0.1, 0.2, 0.7]
    t64 = torch.tensor(values, dtype=torch.float64)
    if name == "ce_weight":
        t = torch.randint(0, 3, (6,))
        return x, lossdsl.compile(f"ce(weight={fmt(values)})")(pred=x, target=t), F.cross_entropy(x, t, weight=t64)
    if name == "bce_pos_weight":
        t = torch.randint(0, 2, (6, 3)).double()
        ours = lossdsl.compile(f"bce(pos_weight={fmt(values)})")(pred=x, target=t)
        return x, ours, F.binary_cross_entropy_with_logits(x, t, pos_weight=t64)
    if name == "focal_alpha":
        t = torch.randint(0, 3, (6,))
        ours = lossdsl.compile(f"focal(alpha={fmt(values)})")(pred=x, target=t)
        return x, ours, softmax_focal(x, t, 2.0, values).mean()
    y = torch.randn(6, dtype=torch.float64)
    columns = torch.stack([pinball(x[:, i], y, q) for i, q in enumerate(values)], dim=-1)
    return x, lossdsl.compile(f"quantile(q={fmt(values)})")(pred=x, target=y), columns.mean()


@pytest.mark.parametrize("name", ["ce_weight", "bce_pos_weight", "focal_alpha", "quantile_q"])
def test_list_parameters_keep_float64_precision(name):
    """weight=[0.1, ...] in float64 should be torch's loss with float64 weights 0.1, ... (as a Python
    float parameter is): the buffers hold float64 values, cast to the inputs' dtype."""
    x, ours, ref = _precision_case(name)
    assert_parity(ours, ref, x)


# --------------------------------------------------------------------------------------------
# Saturated logits: finite values and gradients
# --------------------------------------------------------------------------------------------

STABILITY = {
    "focal_sigmoid_g2": ("focal(gamma=2.0, alpha=0.25)", (8, 3), "zero_one",
                         lambda x, t: torchvision_sigmoid_focal(x, t, 2.0, 0.25).mean()),
    "focal_sigmoid_g05": ("focal(gamma=0.5)", (8,), "zero_one",
                          lambda x, t: torchvision_sigmoid_focal(x, t, 0.5, None).mean()),
    "focal_softmax_g2": ("focal(gamma=2.0, alpha=[0.3, 0.3, 0.4])", (8, 3), "classes",
                         lambda x, t: softmax_focal(x, t, 2.0, [0.3, 0.3, 0.4]).mean()),
    "focal_softmax_g05": ("focal(gamma=0.5)", (2, 3, 2, 2), "classes",
                          lambda x, t: softmax_focal(x, t, 0.5, None).mean()),
    "hinge_binary": ("hinge(squared=true)", (8,), "binary", lambda x, t: hinge_binary(x, t, 1.0, True).mean()),
    "hinge_multiclass": ("hinge()", (8, 4), "classes", lambda x, t: F.multi_margin_loss(x, t)),
    "soft_f1": ("soft_f1()", (8, 3), "zero_one", lambda x, t: torch.tensor(
        1 - fbeta_score(t.numpy(), (x > 0).numpy(), beta=1.0, average="macro", zero_division=0))),
    "dice": ("dice()", (2, 3, 3, 3), "mask_indices",
             lambda x, t: DiceLoss(softmax=True, to_onehot_y=True)(x, t)),
    "dice_one_channel": ("dice(squared=true)", (2, 1, 3, 3), "zero_one",
                         lambda x, t: DiceLoss(sigmoid=True, squared_pred=True)(x, t)),
    "tversky": ("tversky(alpha=0.3, beta=0.7)", (2, 3, 3, 3), "mask_indices",
                lambda x, t: TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)(x, t)),
    "tversky_one_channel": ("tversky()", (2, 1, 3, 3), "zero_one", lambda x, t: TverskyLoss(sigmoid=True)(x, t)),
    "kl": ("kl(p=target, q=pred)", (8, 4), "saturated",
           lambda x, t: F.kl_div(F.log_softmax(x, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")),
    "bce_smoothing": ("bce(label_smoothing=0.1)", (8, 2), "zero_one",
                      lambda x, t: F.binary_cross_entropy_with_logits(x, t * 0.9 + 0.05)),
}


@pytest.mark.parametrize("case", list(STABILITY))
def test_saturated_logits_are_finite(case):
    spec, shape, kind, reference = STABILITY[case]
    x = saturated(*shape)
    target = {
        "zero_one": lambda: torch.randint(0, 2, shape).float(),
        "binary": lambda: torch.randint(0, 2, shape),
        "classes": lambda: torch.randint(0, shape[1], (shape[0], *shape[2:])),
        "mask_indices": lambda: torch.randint(0, shape[1], (shape[0], 1, *shape[2:])),
        "saturated": lambda: saturated(*shape).detach(),
    }[kind]()
    value = lossdsl.compile(spec)(pred=x, target=target)
    (g,) = grad(value, x)
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    assert torch.isfinite(g).all()
    with torch.no_grad():
        torch.testing.assert_close(value, reference(x, target).float())


# --------------------------------------------------------------------------------------------
# Wrong inputs name the input
# --------------------------------------------------------------------------------------------


def f64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def ints(high, *shape):
    return torch.randint(0, high, shape)


WRONG_INPUTS = [
    ("focal(alpha=[0.25, 0.75])", {"pred": f64(5), "target": ints(2, 5).double()}, "pred"),
    ("focal(alpha=0.25)", {"pred": f64(5, 3), "target": ints(3, 5)}, "pred"),
    ("focal(alpha=[0.2, 0.8])", {"pred": f64(5, 3), "target": ints(3, 5)}, "pred"),
    ("focal()", {"pred": f64(5, 3), "target": f64(5)}, "target"),
    ("focal()", {"pred": ints(3, 5, 3), "target": ints(3, 5)}, "pred"),
    ("hinge()", {"pred": f64(5, 3), "target": f64(5)}, "target"),
    ("hinge()", {"pred": f64(5), "target": ints(2, 4)}, "target"),
    ("hinge()", {"pred": f64(5, 3, 2), "target": ints(3, 5, 2)}, "target"),
    ("soft_f1()", {"pred": f64(5, 3), "target": ints(2, 5)}, "target"),
    ("soft_f1()", {"pred": ints(2, 5), "target": ints(2, 5)}, "pred"),
    ("smooth_l1()", {"pred": f64(5), "target": f64(5, 1)}, "target"),
    ("log_cosh(pred=yhat)", {"yhat": ints(3, 5), "target": f64(5)}, "yhat"),
    ("quantile(q=[0.1, 0.5, 0.9])", {"pred": f64(5), "target": f64(5)}, "pred"),
    ("quantile(q=[0.1, 0.9])", {"pred": f64(5, 3), "target": f64(5)}, "pred"),
    ("quantile(0.9)", {"pred": f64(5), "target": f64(4)}, "target"),
    ("dice()", {"pred": f64(2, 3, 4, 4), "target": ints(3, 2, 4, 3)}, "target"),
    ("dice()", {"pred": f64(2, 3, 4, 4), "target": f64(2, 4, 4)}, "target"),
    ("tversky()", {"pred": f64(5), "target": f64(5)}, "pred"),
    ("tversky()", {"pred": f64(2, 1, 4, 4), "target": f64(2, 1, 4, 3)}, "target"),
    ("kl_normal(mu=m, logvar=lv)", {"m": f64(4, 3), "lv": f64(4, 2)}, "lv"),
    ("kl(p=teacher, q=student)", {"teacher": f64(4, 3), "student": f64(4, 5)}, "student"),
    ("kl(p=teacher, q=student)", {"teacher": f64(4), "student": f64(4)}, "teacher"),
    ("contrastive()", {"a": f64(4, 3), "b": f64(4, 3), "same": ints(2, 3)}, "same"),
    ("contrastive()", {"a": f64(4, 3), "b": f64(4, 2), "same": ints(2, 4)}, "b"),
    ("triplet()", {"anchor": f64(4), "positive": f64(4), "negative": f64(4)}, "anchor"),
    ("triplet()", {"anchor": f64(4, 3), "positive": f64(4, 3), "negative": f64(3, 3)}, "negative"),
    ("ce()", {"pred": f64(4, 3), "target": f64(4, 2)}, "target"),
    ("ce(weight=balanced)", {"pred": f64(4, 3), "target": torch.softmax(f64(4, 3), 1)}, "target"),
    ("bce(label_smoothing=0.1)", {"pred": f64(4, 3), "target": f64(4)}, "target"),
]


@pytest.mark.parametrize(
    "spec, inputs, name", WRONG_INPUTS, ids=[f"{s}-{n}-{i}" for i, (s, _, n) in enumerate(WRONG_INPUTS)]
)
def test_wrong_inputs_name_the_input(spec, inputs, name):
    with pytest.raises(lossdsl.LossSpecError, match=f"'{name}'"):
        lossdsl.compile(spec)(**inputs)


@pytest.mark.parametrize("pos_weight", ["[1.39, 3e+38]", "3e38", "[2, 1e16]"])
def test_bce_pos_weight_beyond_float32_room_is_refused(pos_weight):
    """bce(pos_weight=[1.39, 3e+38]) compiled and returned inf (a positive's loss times 3e38)."""
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(f"bce(pos_weight={pos_weight})")
    assert [d.code for d in info.value.diagnostics] == ["E205"]


def test_bce_at_the_largest_pos_weight_is_finite_and_matches_torch():
    x = leaf(64, 2, dtype=torch.float32, scale=4.0)
    t = torch.randint(0, 2, (64, 2)).float()
    pos_weight = torch.tensor([1e15, 1.0])
    ours = lossdsl.compile("bce(pos_weight=[1e15, 1])")(pred=x, target=t)
    assert torch.isfinite(ours)
    assert_parity(ours, F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight), x)
