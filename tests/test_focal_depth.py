"""focal's class reduction against MONAI (issue 13): ``monai.losses.FocalLoss(use_softmax=True)``
averages its one-hot ``[N, C, ...]`` losses over classes too, lossdsl sums over them by default;
``class_reduction=mean`` gives MONAI's number. Values and gradients on random inputs (MONAI's
tests/test_focal_loss.py exercises the same arguments)."""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.losses import FocalLoss

import lossdsl


# MONAI's focal loss computes in float32 whatever the input's dtype: float32 tolerances throughout
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> None:
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref.to(ours.dtype), **TOLERANCE)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, x), torch.autograd.grad(ref, x)
    assert torch.isfinite(g_ours).all()
    torch.testing.assert_close(g_ours, g_ref.to(ours.dtype), **TOLERANCE)


SHAPES = [(6, 4), (3, 5, 4, 3)]



def _monai_weighs_positives_by_a_list_alpha() -> bool:
    """MONAI's sigmoid form takes a list alpha in recent releases only (pyproject allows monai>=1.3)."""
    try:
        FocalLoss(alpha=[0.5, 2.0])(torch.zeros(1, 2), torch.ones(1, 2))
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


needs_monai_ignore_index = pytest.mark.skipif(
    "ignore_index" not in inspect.signature(FocalLoss).parameters, reason="this MONAI's FocalLoss has no ignore_index"
)
needs_monai_list_alpha = pytest.mark.skipif(
    not _monai_weighs_positives_by_a_list_alpha(), reason="this MONAI's sigmoid FocalLoss takes no list alpha"
)


def one_hot(t: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, C, ...] in pred's dtype, as MONAI's to_onehot_y makes them."""
    return torch.nn.functional.one_hot(t, classes).movedim(-1, 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=["NC", "NCHW"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_class_mean_is_monais_softmax_focal(gamma, shape, dtype):
    x = (2 * torch.randn(*shape, dtype=dtype)).requires_grad_()
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    ours = lossdsl.compile(f"focal(gamma={gamma}, class_reduction=mean)")(pred=x, target=t)
    ref = FocalLoss(use_softmax=True, gamma=gamma)(x, one_hot(t, shape[1], dtype))
    assert_parity(ours, ref, x)


@pytest.mark.parametrize("shape", SHAPES, ids=["NC", "NCHW"])
def test_class_sum_is_c_times_monais_mean(shape):
    """The default sums over classes: C times MONAI's mean (as before, unchanged)."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    default = lossdsl.compile("focal()")(pred=x, target=t)
    torch.testing.assert_close(lossdsl.compile("focal(class_reduction=sum)")(pred=x, target=t), default)
    assert_parity(default, shape[1] * FocalLoss(use_softmax=True)(x, one_hot(t, shape[1], x.dtype)), x)


def test_class_mean_with_class_weights_is_monais_list_alpha():
    """alpha=[w..] in the softmax form is MONAI's list alpha, one weight per class."""
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (8,))
    w = [0.2, 1.0, 3.0]
    ours = lossdsl.compile("focal(alpha=[0.2, 1.0, 3.0], class_reduction=mean)")(pred=x, target=t)
    ref = FocalLoss(use_softmax=True, alpha=w)(x, one_hot(t, 3, x.dtype))
    assert_parity(ours, ref, x)


def test_class_mean_none_and_sample_weight_divide_each_element_by_c():
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    t = torch.randint(0, 4, (5, 3))
    w = torch.rand(5, dtype=torch.float64)
    for spec in ["focal(reduction=none{})", "focal(sample_weight=w{})"]:
        summed = lossdsl.compile(spec.format(""))(pred=x, target=t, w=w)
        averaged = lossdsl.compile(spec.format(", class_reduction=mean"))(pred=x, target=t, w=w)
        torch.testing.assert_close(averaged, summed / 4, rtol=1e-12, atol=0)


def test_sigmoid_form_is_already_an_average_over_labels():
    """Multi-label [N, C]: each label is an element either way; both equal MONAI's sigmoid focal mean."""
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (6, 4)).double()
    for option in ["sum", "mean"]:
        xi = x.detach().clone().requires_grad_()
        ours = lossdsl.compile(f"focal(class_reduction={option})")(pred=xi, target=y)
        assert_parity(ours, FocalLoss(use_softmax=False, gamma=2.0)(xi, y), xi)


# --- the sigmoid form's class weights and pos_weight (issue 13) --------------------------------


def torchvision_focal(x: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, alpha: float = -1.0,
                      pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision/ops/focal_loss.py's ``sigmoid_focal_loss(reduction="none")``, written out here
    (torchvision is too heavy a test dependency): ``BCE * (1 - p_t)^gamma * alpha_t``. Its BCE has
    no pos_weight; with one, the BCE is torch's with pos_weight, ``-(pw y log p + (1 - y) log(1 - p))``,
    written out too."""
    p = torch.sigmoid(x)
    pw = 1.0 if pos_weight is None else pos_weight
    ce_loss = -(pw * y * torch.nn.functional.logsigmoid(x) + (1 - y) * torch.nn.functional.logsigmoid(-x))
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def per_channel(values: list[float], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A list of one entry per channel (dim 1), shaped to broadcast against ``shape``."""
    return torch.tensor(values, dtype=dtype).reshape(len(values), *[1] * (len(shape) - 2))


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


@pytest.mark.parametrize("shape", SHAPES, ids=["NC", "NCHW"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_class_weight_is_monais_weight(gamma, shape):
    """MONAI FocalLoss(weight=[...]) multiplies channel c's losses by weight[c], then averages
    over every element (monai/losses/focal_loss.py): focal(weight=[...]) with the default normalize."""
    x = (2 * torch.randn(*shape)).requires_grad_()
    y = torch.randint(0, 2, shape).float()
    w = torch.rand(shape[1]).add(0.2).tolist()
    ours = lossdsl.compile(f"focal(gamma={gamma}, weight={fmt(w)})")(pred=x, target=y)
    assert_parity(ours, FocalLoss(gamma=gamma, weight=w)(x, y), x)


@needs_monai_list_alpha
@pytest.mark.parametrize("shape", SHAPES, ids=["NC", "NCHW"])
def test_sigmoid_pos_weight_list_is_monais_sigmoid_list_alpha(shape):
    """MONAI's sigmoid form with a list alpha weighs each class's positives by alpha[c] and leaves
    the negatives at 1 (monai/losses/focal_loss.py, sigmoid_focal_loss): on 0/1 targets that is
    pos_weight, one per channel."""
    x = (2 * torch.randn(*shape)).requires_grad_()
    y = torch.randint(0, 2, shape).float()
    a = torch.rand(shape[1]).add(0.2).tolist()
    ours = lossdsl.compile(f"focal(pos_weight={fmt(a)})")(pred=x, target=y)
    assert_parity(ours, FocalLoss(alpha=a)(x, y), x)


@pytest.mark.parametrize("shape", [(7,), (6, 4), (3, 4, 5, 2)], ids=["N", "NC", "NCHW"])
@pytest.mark.parametrize("soft", [False, True], ids=["01", "probs"])
def test_sigmoid_weights_match_the_torchvision_formula(shape, soft):
    """alpha, weight and pos_weight together against torchvision's formula (values and gradients,
    float64), on 0/1 and on probability targets, for each reduction."""
    x = (3 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()
    y = torch.rand(*shape, dtype=torch.float64) if soft else torch.randint(0, 2, shape).double()
    channels = shape[1] if len(shape) > 1 else 1
    w, pw = torch.rand(channels).add(0.1).tolist(), torch.rand(channels).mul(3).add(0.1).tolist()
    elementwise = (torchvision_focal(x, y, gamma=1.5, alpha=0.3, pos_weight=per_channel(pw, shape, x.dtype))
                   * per_channel(w, shape, x.dtype))
    for reduction, ref in [("mean", elementwise.mean()), ("sum", elementwise.sum()), ("none", elementwise)]:
        spec = f"focal(gamma=1.5, alpha=0.3, weight={fmt(w)}, pos_weight={fmt(pw)}, reduction={reduction})"
        ours = lossdsl.compile(spec)(pred=x, target=y)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        probe = torch.randn_like(ref)  # a random cotangent checks every element's gradient
        (g_ours,), (g_ref,) = torch.autograd.grad((ours * probe).sum(), x), torch.autograd.grad((ref * probe).sum(), x, retain_graph=True)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_one_pos_weight_for_all_and_one_weight_for_all():
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (5, 3, 4)).double()
    ours = lossdsl.compile("focal(pos_weight=2.5, weight=[0.5])")(pred=x, target=y)
    ref = 0.5 * torchvision_focal(x, y, pos_weight=torch.tensor(2.5, dtype=x.dtype)).mean()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)


def test_binary_logits_n1hw_with_nhw_targets_take_weights():
    """Binary logits [N, 1, H, W] with targets [N, H, W]: one channel, so one entry."""
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (2, 3, 3))
    ours = lossdsl.compile("focal(pos_weight=[3.0], weight=[2.0], reduction=none)")(pred=x, target=y)
    ref = 2.0 * torchvision_focal(x[:, 0], y.double(), pos_weight=torch.tensor(3.0, dtype=x.dtype))
    assert ours.shape == (2, 3, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("spec,problem", [
    ("focal(weight=[1.0, 2.0])", "weight has 2 entries but pred has 4 channels (dim 1)"),
    ("focal(pos_weight=[1.0, 2.0, 3.0])", "pos_weight has 3 entries but pred has 4 channels (dim 1)"),
])
def test_a_list_of_the_wrong_length_is_named(spec, problem):
    with pytest.raises(lossdsl.LossSpecError) as caught:
        lossdsl.compile(spec)(pred=torch.randn(3, 4), target=torch.ones(3, 4))
    assert caught.value.diagnostics[0].code == "E402" and problem in str(caught.value)


def test_pos_weight_in_the_softmax_form_says_which_form_takes_it():
    loss = lossdsl.compile("focal(pos_weight=2.0)")
    with pytest.raises(lossdsl.LossSpecError) as caught:
        loss(pred=torch.randn(3, 4), target=torch.tensor([0, 1, 3]))
    assert caught.value.diagnostics[0].code == "E402" and "pos_weight weighs the positives of the sigmoid form" in str(caught.value)


def test_softmax_weight_is_monais_weight_and_multiplies_a_list_alpha():
    """In the softmax form MONAI's weight (like its list alpha) multiplies the true class's term."""
    x = torch.randn(8, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (8, 4))
    w, a = [0.5, 2.0, 1.5], [0.2, 1.0, 3.0]
    ours = lossdsl.compile(f"focal(weight={fmt(w)}, alpha={fmt(a)}, class_reduction=mean)")(pred=x, target=t)
    ref = FocalLoss(use_softmax=True, weight=w, alpha=a)(x, one_hot(t, 3, x.dtype))
    assert_parity(ours, ref, x)


# --- ignore_index and include_background (issue 13) ---------------------------------------------


@needs_monai_ignore_index
@pytest.mark.parametrize("ignore", [255, 1], ids=["sentinel", "a class"])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_softmax_ignore_index_is_monais(gamma, ignore):
    """MONAI masks pixels whose label is ignore_index and divides the loss summed over classes by the
    kept pixels (monai/losses/focal_loss.py, reduction="mean" with a mask): the default class sum."""
    x = (2 * torch.randn(3, 4, 5, 6)).requires_grad_()
    t = torch.randint(0, 4, (3, 1, 5, 6))
    t[torch.rand(t.shape) < 0.3] = ignore
    ours = lossdsl.compile(f"focal(gamma={gamma}, ignore_index={ignore})")(pred=x, target=t)
    ref = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, ignore_index=ignore)(x, t)
    assert_parity(ours, ref, x)


@needs_monai_ignore_index
def test_binary_ignore_index_is_monais():
    """Binary masks [N, 1, H, W] with 255 where unlabelled: MONAI's label-encoded mask."""
    x = (2 * torch.randn(4, 1, 5, 5)).requires_grad_()
    y = torch.randint(0, 2, (4, 1, 5, 5))
    y[torch.rand(y.shape) < 0.3] = 255
    ours = lossdsl.compile("focal(ignore_index=255, weight=[1.5])")(pred=x, target=y)
    ref = FocalLoss(ignore_index=255, weight=1.5)(x, y.float())
    assert_parity(ours, ref, x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multilabel_ignore_index_leaves_out_each_entry(reduction):
    """Multi-label [N, C] with -1 for unknown labels: each such entry adds nothing and leaves mean's
    count (MONAI reads several channels as one-hot instead); against torchvision's formula, masked."""
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(-1, 2, (6, 5))
    keep = y != -1
    elementwise = torchvision_focal(x, (y * keep).double(), alpha=0.25) * keep
    ref = {"mean": elementwise.sum() / keep.sum(), "sum": elementwise.sum(), "none": elementwise}[reduction]
    ours = lossdsl.compile(f"focal(alpha=0.25, ignore_index=-1, reduction={reduction})")(pred=x, target=y)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    probe = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad((ours * probe).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * probe).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=0)
    assert (g_ours[~keep] == 0).all()


def test_ignore_index_with_sample_weight_divides_by_the_kept_weight():
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (5, 4))
    t[0, :2] = t[3, 1] = -100
    w = torch.rand(5, dtype=torch.float64)
    keep = t != -100
    log_p = torch.log_softmax(x, dim=1).gather(1, (t * keep).unsqueeze(1)).squeeze(1)
    elementwise = -(1 - log_p.exp()) ** 2 * log_p * keep
    per_element = w[:, None].expand_as(t)
    ours = lossdsl.compile("focal(ignore_index=-100, sample_weight=w)")(pred=x, target=t, w=w)
    torch.testing.assert_close(ours, (per_element * elementwise).sum() / (per_element * keep).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("spec", ["focal(ignore_index=-1)", "focal(ignore_index=-1, sample_weight=w)",
                                  "focal(ignore_index=-1, weight=[1.0, 2.0, 3.0], normalize=weights)"])
def test_everything_ignored_gives_zero_and_zero_gradients(spec):
    for target in [torch.full((4, 3), -1), torch.full((4,), -1)]:  # sigmoid form, softmax form
        x = torch.randn(4, 3, requires_grad=True)
        loss = lossdsl.compile(spec)(pred=x, target=target, w=torch.rand(4))
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0 and (grad == 0).all()


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_softmax_include_background_false_is_monais(gamma):
    """MONAI drops channel 0 before its softmax; background pixels add 0 but count in the mean over
    N * (C - 1) * H * W: focal(include_background=false, class_reduction=mean)."""
    x = (2 * torch.randn(3, 4, 5, 6)).requires_grad_()
    t = torch.randint(0, 4, (3, 1, 5, 6))
    w = [0.5, 2.0, 1.0]  # one per foreground class, as MONAI counts them
    spec = f"focal(gamma={gamma}, include_background=false, class_reduction=mean, weight={fmt(w)})"
    ours = lossdsl.compile(spec)(pred=x, target=t)
    ref = FocalLoss(to_onehot_y=True, use_softmax=True, include_background=False, gamma=gamma, weight=w)(x, t)
    assert_parity(ours, ref, x)


def test_sigmoid_include_background_false_is_monais():
    x = (2 * torch.randn(3, 4, 5, 6)).requires_grad_()
    y = torch.randint(0, 2, (3, 4, 5, 6)).float()
    w = [0.5, 2.0, 1.0]
    ours = lossdsl.compile(f"focal(include_background=false, weight={fmt(w)}, alpha=0.25)")(pred=x, target=y)
    ref = FocalLoss(include_background=False, weight=w, alpha=0.25)(x, y)
    assert_parity(ours, ref, x)
    none = lossdsl.compile("focal(include_background=false, reduction=none)")(pred=x, target=y)
    assert none.shape == (3, 3, 5, 6)


def test_include_background_false_with_one_channel_changes_nothing():
    x, y = torch.randn(4, 1, 3, 3), torch.randint(0, 2, (4, 1, 3, 3))
    torch.testing.assert_close(lossdsl.compile("focal(include_background=false)")(pred=x, target=y),
                               lossdsl.compile("focal()")(pred=x, target=y), rtol=0, atol=0)


def test_include_background_false_list_length_counts_the_foreground():
    loss = lossdsl.compile("focal(include_background=false, weight=[1.0, 2.0, 3.0, 4.0])")
    with pytest.raises(lossdsl.LossSpecError) as caught:
        loss(pred=torch.randn(3, 4), target=torch.tensor([0, 1, 3]))
    assert "weight has 4 entries but the logits have 3 classes besides the background" in str(caught.value)


# --- class-index maps [N, 1, H, W], and float ones (issue 13) -----------------------------------


@pytest.mark.parametrize("spec", ["focal()", "focal(gamma=0.5, alpha=[0.2, 1.0, 3.0, 0.7], ignore_index=2)",
                                  "focal(reduction=none)"])
def test_class_index_maps_with_a_channel_are_squeezed_as_dice_does(spec):
    """Targets [N, 1, H, W] (MONAI's, and dice's) are the class indices [N, H, W]; the channel goes."""
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (3, 1, 5, 6))
    loss = lossdsl.compile(spec)
    ours, squeezed = loss(pred=x, target=t), loss(pred=x, target=t[:, 0])
    torch.testing.assert_close(ours, squeezed, rtol=0, atol=0)
    g_ours, g_squeezed = (torch.autograd.grad(v.sum(), x)[0] for v in (ours, squeezed))
    torch.testing.assert_close(g_ours, g_squeezed, rtol=0, atol=0)


def test_class_indices_n1_beside_logits_nc():
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.randint(0, 3, (6, 1))
    focal = lossdsl.compile("focal(gamma=0.0)")
    torch.testing.assert_close(focal(pred=x, target=t), torch.nn.functional.cross_entropy(x, t[:, 0]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(3, 1, 5, 6), (3, 5, 6)], ids=["N1HW", "NHW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_float_class_index_maps_say_the_dtype_is_the_problem(shape, dtype):
    """The message names the dtype and the map's own shape (not a squeezed one) and how to fix it."""
    target = torch.randint(0, 4, shape).to(dtype)
    with pytest.raises(lossdsl.LossSpecError) as caught:
        lossdsl.compile("focal()")(pred=torch.randn(3, 4, 5, 6), target=target)
    message = str(caught.value)
    assert caught.value.diagnostics[0].code == "E402"
    assert f"class indices must be integers, got {dtype} values of shape {shape}" in message
    assert "pass target.long(), or 0/1 targets of shape (3, 4, 5, 6) for the sigmoid form" in message
    assert "input 'target' of focal()" in message


def test_a_target_of_no_fitting_shape_shows_both_shapes_it_could_have():
    with pytest.raises(lossdsl.LossSpecError) as caught:
        lossdsl.compile("focal()")(pred=torch.randn(3, 4, 5, 6), target=torch.rand(3, 2, 5, 6))
    assert ("expected 0/1 targets of shape (3, 4, 5, 6) or class indices of shape (3, 5, 6) (or (3, 1, 5, 6)), "
            "got torch.float32 (3, 2, 5, 6)") in str(caught.value)


# --- normalize=weights|count (issue 13) ---------------------------------------------------------


def mmpretrain_sigmoid_focal(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                             gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """mmpretrain/models/losses/focal_loss.py's sigmoid_focal_loss, reduced as
    mmpretrain/models/losses/utils.py's weight_reduce_loss does with avg_factor=None: the loss
    times the sample weights [N, 1], then its plain mean over all N * C elements. Written out here
    (mmpretrain is no test dependency)."""
    pred_sigmoid = pred.sigmoid()
    pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    if weight is not None:
        loss = loss * weight.reshape(-1, 1)
    return loss.mean()


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_count_with_sample_weight_is_mmpretrains_mean_over_n(gamma):
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (7, 4)).double()
    w = torch.rand(7, dtype=torch.float64).mul(3).requires_grad_()  # learned weights get their gradient too
    ours = lossdsl.compile(f"focal(gamma={gamma}, alpha=0.25, normalize=count, sample_weight=w)")(pred=x, target=y, w=w)
    ref = mmpretrain_sigmoid_focal(x, y, w, gamma=gamma)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, (x, w)), torch.autograd.grad(ref, (x, w))):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", SHAPES, ids=["NC", "NCHW"])
def test_weights_with_class_weights_at_gamma_0_is_torchs_cross_entropy(shape):
    """torch's convention: F.cross_entropy(weight=w) divides by the summed weights of the targets."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    w = torch.rand(shape[1], dtype=torch.float64).add(0.1)
    ours = lossdsl.compile(f"focal(gamma=0.0, weight={fmt(w.tolist())}, normalize=weights)")(pred=x, target=t)
    ref = torch.nn.functional.cross_entropy(x, t, weight=w)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-12, atol=1e-15)
    count = lossdsl.compile(f"focal(gamma=0.0, weight={fmt(w.tolist())}, normalize=count)")(pred=x, target=t)
    torch.testing.assert_close(count, torch.nn.functional.cross_entropy(x, t, weight=w, reduction="none").mean(),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("normalize", ["weights", "count"])
def test_both_conventions_against_their_formulas_with_every_weight(normalize):
    """Softmax form, gamma 2, a list alpha and weight (class weights), sample weights and ignored
    pixels: sum(k w l) / sum(k w) or / sum(k)."""
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (5, 4))
    t[1, 1] = t[4, 0] = 9
    a, cw, sw = [0.5, 1.0, 2.0], [3.0, 1.0, 0.25], torch.rand(5, dtype=torch.float64)
    keep = t != 9
    labels = t * keep
    log_p = torch.log_softmax(x, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    w = torch.tensor(a, dtype=x.dtype)[labels] * torch.tensor(cw, dtype=x.dtype)[labels] * sw[:, None] * keep
    numerator = (w * -(1 - log_p.exp()) ** 2 * log_p).sum()
    ref = numerator / (w.sum() if normalize == "weights" else keep.sum())
    spec = f"focal(alpha={fmt(a)}, weight={fmt(cw)}, ignore_index=9, normalize={normalize}, sample_weight=sw)"
    ours = lossdsl.compile(spec)(pred=x, target=t, sw=sw)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-12, atol=1e-15)


def test_sigmoid_weights_divides_by_the_broadcast_class_weights():
    x = torch.randn(6, 3, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (6, 3, 2)).double()
    cw, sw = [0.5, 4.0, 1.0], torch.rand(6, dtype=torch.float64)
    w = per_channel(cw, x.shape, x.dtype) * sw[:, None, None]
    elementwise = torchvision_focal(x, y) * w
    ours = lossdsl.compile(f"focal(weight={fmt(cw)}, normalize=weights, sample_weight=sw)")(pred=x, target=y, sw=sw)
    ref = elementwise.sum() / w.expand_as(x).sum()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-12, atol=1e-15)


def test_unset_normalize_counts_class_weights_and_weighs_sample_weights():
    """The default keeps focal's behaviour: count for class weights (MONAI's), weights for sample weights."""
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.randint(0, 3, (6,))
    sw = torch.rand(6, dtype=torch.float64)
    run = lambda spec: lossdsl.compile(spec)(pred=x, target=t, sw=sw)  # noqa: E731
    torch.testing.assert_close(run("focal(weight=[1.0, 2.0, 3.0])"), run("focal(weight=[1.0, 2.0, 3.0], normalize=count)"))
    torch.testing.assert_close(run("focal(sample_weight=sw)"), run("focal(sample_weight=sw, normalize=weights)"))
    for spec in ["focal(reduction=sum, weight=[1.0, 2.0, 3.0], sample_weight=sw{})", "focal(reduction=none, sample_weight=sw{})"]:
        torch.testing.assert_close(run(spec.format(", normalize=weights")), run(spec.format(", normalize=count")))


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_weights_is_invariant_to_the_weights_scale_and_count_is_linear(scale, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=generator)
    t = torch.randint(0, 3, (5, 4), generator=generator)
    cw = torch.rand(3, dtype=torch.float64, generator=generator).add(0.1).tolist()
    sw = torch.rand(5, dtype=torch.float64, generator=generator)
    for normalize, factor in [("weights", 1.0), ("count", scale * scale)]:
        loss = lambda c, s: lossdsl.compile(  # noqa: E731
            f"focal(weight={fmt(c)}, normalize={normalize}, sample_weight=sw)")(pred=x, target=t, sw=s)
        torch.testing.assert_close(loss([scale * c for c in cw], scale * sw), factor * loss(cw, sw), rtol=1e-9, atol=0)


def test_group_parts_follow_normalize():
    """per_sample_parts: each sample's summed loss and its share of the divisor, so a group's mean is
    the term's own mean over that group."""
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 2, 1, 2])
    focal = lossdsl.compile("focal(weight=[1.0, 2.0, 4.0], normalize=weights)")
    term = next(m for m in focal.modules() if type(m).__name__ == "Focal")
    parts = term.per_sample_parts(x, t, torch.ones(4, dtype=x.dtype))
    torch.testing.assert_close(parts[:, 0].sum() / parts[:, 1].sum(), focal(pred=x, target=t), rtol=1e-12, atol=0)
    torch.testing.assert_close(parts[:, 1], torch.tensor([1.0, 4.0, 2.0, 4.0], dtype=x.dtype))


# --- asl, the asymmetric loss (issue 13) --------------------------------------------------------


def mmpretrain_asl(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8,
                   reduction: str = "mean") -> torch.Tensor:
    """mmpretrain/models/losses/asymmetric_loss.py's asymmetric_loss (use_sigmoid=True), reduced as
    mmpretrain/models/losses/utils.py's weight_reduce_loss with avg_factor=None; written out here
    (mmpretrain is no test dependency). The defaults are its AsymmetricLoss class's."""
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    if clip and clip > 0:
        pt = (1 - pred_sigmoid + clip).clamp(max=1) * (1 - target) + pred_sigmoid * target
    else:
        pt = (1 - pred_sigmoid) * (1 - target) + pred_sigmoid * target
    asymmetric_weight = (1 - pt).pow(gamma_pos * target + gamma_neg * (1 - target))
    loss = -torch.log(pt.clamp(min=eps)) * asymmetric_weight
    if weight is not None:
        loss = loss * weight.reshape(-1, 1)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


ASL_SETTINGS = [
    {},  # AsymmetricLoss()'s defaults
    {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05},  # the asymmetric_loss function's defaults
    {"gamma_pos": 0.5, "gamma_neg": 2.0, "clip": 0.0},
    {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.1},
]


def asl_spec(options: dict, **more: object) -> str:
    return "asl(" + ", ".join(f"{k}={v}" for k, v in {**options, **more}.items()) + ")"


@pytest.mark.parametrize("options", ASL_SETTINGS, ids=["class", "function", "no-clip", "gamma-0"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_asl_is_mmpretrains(options, reduction, dtype):
    x = (3 * torch.randn(8, 5, dtype=dtype)).requires_grad_()
    y = (torch.rand(8, 5) < 0.3).to(dtype)
    ours = lossdsl.compile(asl_spec(options, reduction=reduction))(pred=x, target=y)
    ref = mmpretrain_asl(x, y, reduction=reduction, **options)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(ours, ref, **tolerance)
    probe = torch.randn_like(ref)
    (g_ours,), (g_ref,) = torch.autograd.grad((ours * probe).sum(), x), torch.autograd.grad((ref * probe).sum(), x)
    assert torch.isfinite(g_ours).all()
    torch.testing.assert_close(g_ours, g_ref, **tolerance)


def test_asl_class_indices_are_made_one_hot_as_mmpretrain_does():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (6,))
    asl = lossdsl.compile("asl()")
    ref = mmpretrain_asl(x, torch.nn.functional.one_hot(t, 4).double())
    for target in (t, t[:, None], t.int()):
        torch.testing.assert_close(asl(pred=x, target=target), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("normalize", ["weights", "count"])
def test_asl_sample_weights(normalize):
    """count is mmpretrain's weight (mean of w * l); weights divides by the summed weights."""
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(7, 3) < 0.4).double()
    w = torch.rand(7, dtype=torch.float64)
    ours = lossdsl.compile(f"asl(normalize={normalize}, sample_weight=w)")(pred=x, target=y, w=w)
    ref = mmpretrain_asl(x, y, w)
    if normalize == "weights":
        ref = ref * w.numel() / w.sum()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-12, atol=1e-15)


def test_asl_gradients_stay_finite_at_saturated_logits_and_small_gammas():
    """A gamma below 1 at 1 - p_t = 0 (a negative inside the clip, a positive at p = 1) would be 0 * inf."""
    x = torch.tensor([[-40.0, 40.0, -3.5, 0.0], [40.0, -40.0, 3.0, -20.0]], requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    for options in [{"gamma_pos": 0.5, "gamma_neg": 0.5}, {}]:
        loss = lossdsl.compile(asl_spec(options))(pred=x, target=y)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        torch.testing.assert_close(loss, mmpretrain_asl(x.detach(), y, **options), rtol=1e-5, atol=1e-6)


def test_asl_half_precision_is_computed_in_float32():
    x = (3 * torch.randn(64, 6)).half()
    y = (torch.rand(64, 6) < 0.3).half()
    ours = lossdsl.compile("asl()")(pred=x, target=y)
    assert ours.dtype == torch.float16
    torch.testing.assert_close(ours.float(), mmpretrain_asl(x.float(), y.float()), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("target,problem", [
    (torch.ones(4, 2), "expected 0/1 labels of shape (4, 3) or class indices of shape (4,), got torch.float32 (4, 2)"),
    (torch.ones(4), "class indices must be integers, got torch.float32 values of shape (4,)"),
])
def test_asl_bad_targets_are_named(target, problem):
    with pytest.raises(lossdsl.LossSpecError) as caught:
        lossdsl.compile("asl()")(pred=torch.randn(4, 3), target=target)
    assert caught.value.diagnostics[0].code == "E402" and problem in str(caught.value)
    assert "input 'target' of asl()" in str(caught.value)


def test_asl_bad_parameters_are_spec_errors():
    for spec in ["asl(clip=1.0)", "asl(gamma_neg=-1.0)", "asl(eps=0.0)"]:
        with pytest.raises(lossdsl.LossSpecError):
            lossdsl.compile(spec)


# --- compiled -----------------------------------------------------------------------------------

COMPILED = {
    "focal(weight=[1.0, 2.0, 3.0], pos_weight=2.0, ignore_index=-1, normalize=weights, sample_weight=w)":
        lambda: {"pred": torch.randn(6, 3), "target": torch.randint(-1, 2, (6, 3)), "w": torch.rand(6)},
    "focal(include_background=false, ignore_index=255, weight=[1.0, 2.0], normalize=count)":
        lambda: {"pred": torch.randn(2, 3, 4, 4), "target": torch.randint(0, 3, (2, 1, 4, 4))},
    "asl(normalize=count, sample_weight=w)":
        lambda: {"pred": torch.randn(6, 3), "target": torch.randint(0, 2, (6, 3)), "w": torch.rand(6)},
}


@pytest.mark.parametrize("spec", list(COMPILED))
def test_new_options_trace_fullgraph_and_match_eager(spec):
    """No host synchronisation or graph break in the forward (torch.compile(fullgraph=True))."""
    torch.manual_seed(13)
    loss_fn, inputs = lossdsl.compile(spec), COMPILED[spec]()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(**inputs), loss_fn(**inputs))


def test_mmpretrain_focal_on_class_indices_is_the_sigmoid_form_on_their_one_hot():
    """mmpretrain's FocalLoss makes class indices [N] one-hot and takes the sigmoid form
    (mmpretrain/models/losses/focal_loss.py); lossdsl's class indices take the softmax form, so a
    port passes F.one_hot(t, C): focal(alpha=0.25) (mmpretrain's default alpha) then matches."""
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (9,))
    y = torch.nn.functional.one_hot(t, 4).double()
    ours = lossdsl.compile("focal(alpha=0.25)")(pred=x, target=y)
    ref = mmpretrain_sigmoid_focal(x, y)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-12, atol=1e-15)


def test_coming_from_rows_torchvision_default_alpha_and_monai_label_maps():
    """docs/coming_from.md: torchvision's sigmoid_focal_loss defaults (alpha=0.25) and MONAI's
    to_onehot_y on [N, 1, H, W] labels given to lossdsl as they are."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (4, 3, 5)).double()
    elementwise = torchvision_focal(x, y, alpha=0.25)
    torch.testing.assert_close(lossdsl.compile("focal(alpha=0.25)")(pred=x, target=y), elementwise.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(lossdsl.compile("focal(alpha=0.25, reduction=none)")(pred=x, target=y), elementwise,
                               rtol=1e-12, atol=0)
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    labels = torch.randint(0, 4, (2, 1, 3, 3))
    ours = lossdsl.compile("focal(class_reduction=mean)")(pred=logits, target=labels)
    assert_parity(ours, FocalLoss(use_softmax=True, to_onehot_y=True)(logits, labels), logits)


def test_a_list_alpha_with_pos_weight_is_a_spec_error():
    with pytest.raises(lossdsl.LossSpecError) as caught:
        lossdsl.compile("focal(alpha=[1.0, 2.0], pos_weight=2.0)")
    assert "a list alpha belongs to the softmax form and pos_weight to the sigmoid form" in str(caught.value)


def test_half_precision_focal_is_computed_in_float32():
    """Class weights up to 1e15 do not fit float16 (largest 65,504); the loss is computed in float32
    and comes back in float16."""
    x = torch.randn(64, 3).half()
    t = torch.randint(0, 3, (64,))
    spec = "focal(weight=[1e6, 1.0, 3e5], normalize=weights, ignore_index=2)"
    ours = lossdsl.compile(spec)(pred=x, target=t)
    assert ours.dtype == torch.float16 and torch.isfinite(ours)
    torch.testing.assert_close(ours.float(), lossdsl.compile(spec)(pred=x.float(), target=t), rtol=1e-3, atol=1e-4)
