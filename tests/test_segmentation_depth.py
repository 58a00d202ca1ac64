"""dice and tversky at the depth MONAI users bring (issue 13): a sigmoid per channel over
overlapping masks (BraTS), ``batch=true``, ``smooth_nr`` / ``smooth_dr``, probabilities without
an activation, and the conventions for a class absent from the target. References:
``monai.losses.DiceLoss`` / ``TverskyLoss`` (MONAI's tests/test_dice_loss.py and
tests/test_tversky_loss.py exercise the same arguments), values and gradients."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss, TverskyLoss

import lossdsl

DTYPES = [torch.float32, torch.float64]
MONAI = {"dice": DiceLoss, "tversky": TverskyLoss}


def tol(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-11}


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> None:
    """Same value, same gradient with respect to ``x``, both finite."""
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref.to(ours.dtype), **tol(ours.dtype))
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, x, retain_graph=True), torch.autograd.grad(ref, x, retain_graph=True)
    assert torch.isfinite(g_ours).all()
    torch.testing.assert_close(g_ours, g_ref.to(ours.dtype), **tol(ours.dtype))


def logits(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return (2 * torch.randn(*shape, dtype=dtype)).requires_grad_()


def brats_masks(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Three nested masks per image, as BraTS's tumour core in the whole tumour: they overlap."""
    whole = torch.rand(n, 1, 6, 5) < 0.6
    core = whole & (torch.rand(n, 1, 6, 5) < 0.6)
    enhancing = core & (torch.rand(n, 1, 6, 5) < 0.6)
    return torch.cat([whole, core, enhancing], dim=1).to(dtype)


OPTIONS = [
    ({}, {}),
    ({"batch": "true"}, {"batch": True}),
    ({"include_background": "false"}, {"include_background": False}),
    ({"smooth_nr": "0.0", "smooth_dr": "1e-3"}, {"smooth_nr": 0.0, "smooth_dr": 1e-3}),
    ({"smooth": "1.0", "smooth_nr": "0.5"}, {"smooth_nr": 0.5, "smooth_dr": 1.0}),
    ({"batch": "true", "smooth_nr": "0.0", "smooth_dr": "1.0", "include_background": "false"},
     {"batch": True, "smooth_nr": 0.0, "smooth_dr": 1.0, "include_background": False}),
]
IDS = ["default", "batch", "no-background", "nr0-dr1e-3", "smooth-and-nr", "batch-nr-dr"]


def compiled_fullgraph(loss: torch.nn.Module) -> torch.nn.Module:
    """torch.compile(fullgraph=True) from a fresh dynamo cache: every LossModule shares one forward,
    and the suite's earlier compiles count towards dynamo's recompile limit, which fullgraph turns
    into an error."""
    torch._dynamo.reset()
    return torch.compile(loss, fullgraph=True, backend="eager")


def spec(kind: str, ours: dict, reduction: str, **more: str) -> str:
    args = ", ".join(f"{k}={v}" for k, v in {**ours, **more, "reduction": reduction}.items())
    return f"{kind}({args})"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ours, theirs", OPTIONS, ids=IDS)
@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_sigmoid_per_channel_over_overlapping_masks_matches_monai(kind, ours, theirs, dtype):
    extra = {"alpha": 0.3, "beta": 0.7} if kind == "tversky" else {}
    for reduction in ["mean", "sum"]:
        x = logits(3, 3, 6, 5, dtype=dtype)
        masks = brats_masks(3, dtype)
        more = {k: str(v) for k, v in extra.items()}
        value = lossdsl.compile(spec(kind, ours, reduction, activation="sigmoid", **more))(pred=x, target=masks)
        ref = MONAI[kind](sigmoid=True, reduction=reduction, **theirs, **extra)(x, masks)
        assert_parity(value, ref, x)


@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_sigmoid_takes_integer_masks_and_class_indices(kind):
    """Integer (or bool-valued) masks of pred's shape are masks under a sigmoid, not class indices;
    class indices [N, 1, ...] are made one-hot as MONAI's to_onehot_y does."""
    x = logits(2, 3, 4, 4, dtype=torch.float64)
    masks = brats_masks(2, torch.float64)[:, :, :4, :4]
    loss = lossdsl.compile(f"{kind}(activation=sigmoid)")
    ref = MONAI[kind](sigmoid=True)(x, masks)
    assert_parity(loss(pred=x, target=masks.long()), ref, x)
    indices = torch.randint(0, 3, (2, 1, 4, 4))
    assert_parity(loss(pred=x, target=indices), MONAI[kind](sigmoid=True, to_onehot_y=True)(x, indices), x)


@pytest.mark.parametrize("ours, theirs", OPTIONS, ids=IDS)
@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_softmax_options_match_monai(kind, ours, theirs):
    for reduction in ["mean", "sum"]:
        x = logits(2, 4, 4, 3, dtype=torch.float64)
        t = torch.randint(0, 4, (2, 1, 4, 3))
        value = lossdsl.compile(spec(kind, ours, reduction))(pred=x, target=t)
        ref = MONAI[kind](softmax=True, to_onehot_y=True, reduction=reduction, **theirs)(x, t)
        assert_parity(value, ref, x)
        explicit = lossdsl.compile(spec(kind, ours, reduction, activation="softmax"))(pred=x, target=t)
        torch.testing.assert_close(explicit, value)


@pytest.mark.parametrize("ours, theirs", OPTIONS, ids=IDS)
@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_probabilities_without_activation_match_monai(kind, ours, theirs):
    """activation=none: pred is already probabilities (MONAI's default, no sigmoid nor softmax)."""
    z = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    for prob, masks in [(z.softmax(1), torch.nn.functional.one_hot(torch.randint(0, 3, (2, 5, 4)), 3).movedim(-1, 1).double()),
                        (z.sigmoid(), brats_masks(2, torch.float64)[:, :, :5, :4])]:
        value = lossdsl.compile(spec(kind, ours, "mean", activation="none"))(pred=prob, target=masks)
        assert_parity(value, MONAI[kind](**theirs)(prob, masks), z)


def test_old_smooth_still_sets_both_sides():
    x = logits(2, 1, 4, 4, dtype=torch.float64)
    m = torch.randint(0, 2, (2, 1, 4, 4)).double()
    old = lossdsl.compile("dice(smooth=0.5)")(pred=x, target=m)
    both = lossdsl.compile("dice(smooth_nr=0.5, smooth_dr=0.5)")(pred=x, target=m)
    torch.testing.assert_close(old, both)
    assert_parity(old, DiceLoss(sigmoid=True, smooth_nr=0.5, smooth_dr=0.5)(x, m), x)


def test_batch_of_one_equals_per_sample_and_pools_otherwise():
    """batch=true on one image is the per-sample score; on two it is the ratio of the summed parts."""
    x = logits(1, 2, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 2, (1, 4, 4))
    torch.testing.assert_close(lossdsl.compile("dice(batch=true)")(pred=x, target=t),
                               lossdsl.compile("dice()")(pred=x, target=t))
    x2 = logits(2, 1, 3, 3, dtype=torch.float64)
    m2 = torch.randint(0, 2, (2, 1, 3, 3)).double()
    p = x2.sigmoid()
    expected = 1 - (2 * (p * m2).sum() + 1e-5) / (p.sum() + m2.sum() + 1e-5)
    torch.testing.assert_close(lossdsl.compile("dice(batch=true)")(pred=x2, target=m2), expected)


def test_batch_with_sample_weight_is_a_spec_error():
    with pytest.raises(lossdsl.LossSpecError, match="batch=true pools the samples"):
        lossdsl.compile("dice(batch=true, sample_weight=w)")


@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_new_options_compile_fullgraph(kind):
    loss = lossdsl.compile(f"{kind}(activation=sigmoid, batch=true, smooth_nr=0.0, smooth_dr=1e-5)")
    x = torch.randn(2, 3, 4, 4)
    m = (torch.rand(2, 3, 4, 4) < 0.5).float()
    compiled = compiled_fullgraph(loss)
    torch.testing.assert_close(compiled(pred=x, target=m), loss(pred=x, target=m))


# --------------------------------------------------------------------------------------------
# absent=smoothed|skip|zero: a class missing from the target
# --------------------------------------------------------------------------------------------


def per_class_dice_loss(prob: torch.Tensor, mask: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - (2|P∩G| + s) / (|P| + |G| + s) per sample and class, written out: [N, C]."""
    dims = tuple(range(2, prob.dim()))
    return 1 - (2 * (prob * mask).sum(dims) + smooth) / (prob.sum(dims) + mask.sum(dims) + smooth)


def absent_case():
    """Two images, three classes; class 2 appears in neither target, class 1 only in the second."""
    x = logits(2, 3, 4, 4, dtype=torch.float64)
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    t[1, :2] = 1
    mask = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double()
    return x, t, mask


def test_absent_smoothed_is_monais_and_scores_about_one():
    x, t, mask = absent_case()
    value = lossdsl.compile("dice(absent=smoothed)")(pred=x, target=t)
    assert_parity(value, DiceLoss(softmax=True, to_onehot_y=True)(x, t.unsqueeze(1)), x)
    losses = per_class_dice_loss(x.softmax(1), mask)
    # the absent class: 1 - s / (|P| + s), within s / |P| of 1
    torch.testing.assert_close(losses[:, 2], 1 - 1e-5 / (x.softmax(1)[:, 2].sum((1, 2)) + 1e-5))
    assert (losses[:, 2] > 1 - 1e-4).all()
    torch.testing.assert_close(lossdsl.compile("dice()")(pred=x, target=t), value)


@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_absent_skip_averages_the_present_classes_only(kind):
    x, t, mask = absent_case()
    prob = x.softmax(1)
    if kind == "dice":
        losses = per_class_dice_loss(prob, mask)
    else:
        dims = (2, 3)
        tp = (prob * mask).sum(dims)
        losses = 1 - (tp + 1e-5) / (tp + 0.5 * (prob * (1 - mask)).sum(dims) + 0.5 * ((1 - prob) * mask).sum(dims) + 1e-5)
    present = mask.sum((2, 3)) > 0  # [[T, F, F], [T, T, F]]: three present of six
    assert present.sum() == 3
    expected = losses[present].sum() / 3
    value = lossdsl.compile(f"{kind}(absent=skip)")(pred=x, target=t)
    assert_parity(value, expected, x)
    # sum: the present classes' losses added
    assert_parity(lossdsl.compile(f"{kind}(absent=skip, reduction=sum)")(pred=x, target=t), losses[present].sum(), x)
    # weighted: sample n's present classes weigh w_n each
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    weighted = lossdsl.compile(f"{kind}(absent=skip, sample_weight=w)")(pred=x, target=t, w=w)
    expected_weighted = (2.0 * losses[0, 0] + 0.5 * (losses[1, 0] + losses[1, 1])) / (2.0 * 1 + 0.5 * 2)
    assert_parity(weighted, expected_weighted, x)


@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_absent_zero_counts_them_with_loss_zero(kind):
    """smp's DiceLoss: loss *= (class present), then the mean over every class."""
    x, t, mask = absent_case()
    losses = per_class_dice_loss(x.softmax(1), mask) if kind == "dice" else None
    value = lossdsl.compile(f"{kind}(absent=zero)")(pred=x, target=t)
    smoothed = lossdsl.compile(f"{kind}(reduction=sum)")
    present = mask.sum((2, 3)) > 0
    if losses is None:  # tversky: the per-class losses from MONAI's reduction=none
        losses = TverskyLoss(softmax=True, to_onehot_y=True, reduction="none")(x, t.unsqueeze(1)).reshape(2, 3)
    expected = (losses * present).sum() / 6
    assert_parity(value, expected, x)
    assert value < smoothed(pred=x, target=t) / 6  # the absent classes' near-1 losses are gone


def test_absent_with_batch_is_smps_pooled_dice():
    """smp pools the batch (dims (0, 2)) and zeroes classes absent from the whole batch."""
    x, t, mask = absent_case()
    prob = x.softmax(1)
    pooled = 1 - (2 * (prob * mask).sum((0, 2, 3)) + 1e-5) / (prob.sum((0, 2, 3)) + mask.sum((0, 2, 3)) + 1e-5)
    present = mask.sum((0, 2, 3)) > 0  # class 2 only is absent from the batch
    value = lossdsl.compile("dice(batch=true, absent=zero)")(pred=x, target=t)
    assert_parity(value, (pooled * present).sum() / 3, x)
    assert_parity(lossdsl.compile("dice(batch=true, absent=skip)")(pred=x, target=t), pooled[:2].mean(), x)


def test_absent_skip_with_nothing_present_is_zero_with_zero_gradients():
    x = logits(2, 3, 4, 4, dtype=torch.float64)
    t = torch.zeros(2, 4, 4, dtype=torch.long)  # only the background, which is dropped
    value = lossdsl.compile("dice(absent=skip, include_background=false)")(pred=x, target=t)
    assert value == 0
    (g,) = torch.autograd.grad(value, x)
    assert torch.equal(g, torch.zeros_like(g))


def test_absent_skip_compiles_fullgraph():
    loss = lossdsl.compile("dice(absent=skip, sample_weight=w)")
    x, t, w = torch.randn(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4)), torch.tensor([1.0, 3.0])
    compiled = compiled_fullgraph(loss)
    torch.testing.assert_close(compiled(pred=x, target=t, w=w), loss(pred=x, target=t, w=w))
