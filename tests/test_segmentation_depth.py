"""dice and tversky at the depth MONAI users bring (issue 13): a sigmoid per channel over
overlapping masks (BraTS), ``batch=true``, ``smooth_nr`` / ``smooth_dr``, probabilities without
an activation, and the conventions for a class absent from the target. References:
``monai.losses.DiceLoss`` / ``TverskyLoss`` (MONAI's tests/test_dice_loss.py and
tests/test_tversky_loss.py exercise the same arguments), values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


# --------------------------------------------------------------------------------------------
# ignore_index: pixels left out of every class's sums (smp's convention,
# segmentation_models_pytorch/losses/dice.py: y_pred * mask, one_hot(y_true * mask) * mask)
# --------------------------------------------------------------------------------------------


def masked_closed_form(kind: str, prob: torch.Tensor, labels: torch.Tensor, ignore: int, smooth: float = 1e-5,
                       alpha: float = 0.5, beta: float = 0.5) -> torch.Tensor:
    """[N, C]: each class's loss over the kept pixels only, picked out by boolean indexing
    (no masking by multiplication), written from the formulas: dice 1 - (2I + s) / (|P| + |G| + s),
    tversky 1 - (TP + s) / (TP + a FP + b FN + s), jaccard (MONAI's) 1 - (2I + s) / (2(|P| + |G| - I) + s)."""
    n, c = prob.shape[:2]
    rows = []
    for i in range(n):
        kept = labels[i] != ignore
        row = []
        for k in range(c):
            p = prob[i, k][kept]
            g = (labels[i][kept] == k).to(prob.dtype)
            inter = (p * g).sum()
            if kind == "dice":
                row.append(1 - (2 * inter + smooth) / (p.sum() + g.sum() + smooth))
            elif kind == "jaccard":
                row.append(1 - (2 * inter + smooth) / (2 * (p.sum() + g.sum() - inter) + smooth))
            else:
                fp, fn = (p * (1 - g)).sum(), ((1 - p) * g).sum()
                row.append(1 - (inter + smooth) / (inter + alpha * fp + beta * fn + smooth))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def void_labels(n: int, c: int, h: int, w: int, ignore: int = 255) -> torch.Tensor:
    """Class indices with about a quarter of the pixels void (``ignore``), class c - 1 void-only in image 0."""
    t = torch.randint(0, c, (n, h, w))
    t[torch.rand(n, h, w) < 0.25] = ignore
    t[0][t[0] == c - 1] = ignore
    return t


@pytest.mark.parametrize("kind", ["dice", "tversky", "jaccard"])
@pytest.mark.parametrize("ignore", [255, -100, 0])
def test_ignore_index_leaves_pixels_out_of_every_class(kind, ignore):
    torch.manual_seed(3)
    x = logits(3, 4, 5, 6, dtype=torch.float64)
    t = void_labels(3, 4, 5, 6, ignore=ignore)  # ignore=0: class 0 is the void, absent from every sum
    losses = masked_closed_form(kind, x.softmax(1), t, ignore)
    for reduction, expected in [("mean", losses.mean()), ("sum", losses.sum())]:
        value = lossdsl.compile(f"{kind}(ignore_index={ignore}, reduction={reduction})")(pred=x, target=t)
        assert_parity(value, expected, x)
    # [N, 1, H, W] class indices, as MONAI's to_onehot_y takes them, give the same
    same = lossdsl.compile(f"{kind}(ignore_index={ignore})")(pred=x, target=t.unsqueeze(1))
    torch.testing.assert_close(same, losses.mean())


@pytest.mark.parametrize("kind", ["dice", "tversky", "jaccard"])
def test_ignore_index_is_monai_on_zeroed_pixels(kind):
    """MONAI has no ignore_index: zeroing the ignored pixels of its probabilities and one-hot target
    is the same loss, value and gradient (activation=sigmoid over masks, batch=true, no background)."""
    x = logits(2, 3, 4, 5, dtype=torch.float64)
    t = void_labels(2, 3, 4, 5)
    kept = (t != 255).unsqueeze(1).double()
    onehot = torch.nn.functional.one_hot(torch.where(t == 255, 0, t), 3).movedim(-1, 1).double() * kept
    extra = {"jaccard": True} if kind == "jaccard" else {}
    cls = DiceLoss if kind == "jaccard" else MONAI[kind]
    for ours, theirs in [("", {}), ("batch=true, include_background=false", {"batch": True, "include_background": False})]:
        value = lossdsl.compile(f"{kind}(ignore_index=255{', ' + ours if ours else ''})")(pred=x, target=t)
        ref = cls(**theirs, **extra)(x.softmax(1) * kept, onehot)
        assert_parity(value, ref, x)
    # masks of pred's shape: an element equal to ignore_index leaves its own channel only (smp's multilabel)
    masks = brats_masks(2, torch.float64)[:, :, :4, :5]
    masks[torch.rand(masks.shape) < 0.2] = 255
    kept = (masks != 255).double()
    value = lossdsl.compile(f"{kind}(activation=sigmoid, ignore_index=255)")(pred=x, target=masks)
    assert_parity(value, cls(**extra)(x.sigmoid() * kept, masks * kept), x)


def test_ignore_index_ignored_pixels_get_no_gradient_even_from_nan_logits():
    x = logits(2, 3, 4, 4, dtype=torch.float64)
    t = void_labels(2, 3, 4, 4)
    with torch.no_grad():
        x[:, :, 0, 0] = float("nan")
    t[:, 0, 0] = 255
    value = lossdsl.compile("dice(ignore_index=255)")(pred=x, target=t)
    (g,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(g).all()
    ignored = (t == 255).unsqueeze(1).expand_as(g)
    assert torch.equal(g[ignored], torch.zeros_like(g[ignored]))


def test_ignore_index_on_uint8_targets_and_fullgraph():
    x = torch.randn(2, 3, 4, 4)
    t = void_labels(2, 3, 4, 4).to(torch.uint8)
    loss = lossdsl.compile("dice(ignore_index=255)")
    expected = masked_closed_form("dice", x.softmax(1), t.long(), 255).mean()
    torch.testing.assert_close(loss(pred=x, target=t), expected)
    # a negative ignore_index cannot equal a uint8 value: nothing is left out
    torch.testing.assert_close(lossdsl.compile("dice(ignore_index=-100)")(pred=x, target=t.clamp(max=2)),
                               lossdsl.compile("dice()")(pred=x, target=t.clamp(max=2)))
    compiled = compiled_fullgraph(loss)
    torch.testing.assert_close(compiled(pred=x, target=t), loss(pred=x, target=t))


# --------------------------------------------------------------------------------------------
# weight=[...]: per-class weights, mean = sum(w_c * l) / sum(w_c) over the scores kept
# --------------------------------------------------------------------------------------------

MONAI_OF = {"dice": (DiceLoss, {}), "tversky": (TverskyLoss, {}), "jaccard": (DiceLoss, {"jaccard": True})}


def monai_weighted(kind: str, w: torch.Tensor, x: torch.Tensor, t: torch.Tensor, reduction: str = "mean", **options) -> torch.Tensor:
    """MONAI's loss with class weights ``w``: DiceLoss's ``weight`` (f * w, then its reduction);
    TverskyLoss has none, so its reduction="none" losses times ``w``, reduced the same way."""
    cls, extra = MONAI_OF[kind]
    if kind != "tversky":
        return cls(softmax=True, to_onehot_y=True, weight=w, reduction=reduction, **options, **extra)(x, t)
    f = cls(softmax=True, to_onehot_y=True, reduction="none", **options)(x, t)
    f = f * w.reshape(1, -1, *[1] * (f.dim() - 2))
    return {"mean": f.mean, "sum": f.sum, "none": lambda: f}[reduction]()


def weights_spec(w: list[float]) -> str:
    return "[" + ", ".join(str(v) for v in w) + "]"


@pytest.mark.parametrize("kind", ["dice", "tversky", "jaccard"])
def test_class_weight_is_the_normalised_weighted_mean(kind):
    torch.manual_seed(4)
    x = logits(3, 4, 5, 4, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 5, 4))
    w = torch.tensor([0.5, 2.0, 1.0, 3.5], dtype=torch.float64)
    losses = masked_closed_form(kind, x.softmax(1), t, ignore=-1)  # [N, C]; nothing is -1
    value = lossdsl.compile(f"{kind}(weight={weights_spec(w.tolist())})")(pred=x, target=t)
    assert_parity(value, (losses * w).sum() / (3 * w.sum()), x)
    summed = lossdsl.compile(f"{kind}(weight={weights_spec(w.tolist())}, reduction=sum)")(pred=x, target=t)
    assert_parity(summed, (losses * w).sum(), x)
    # MONAI's weight multiplies and then averages over N * C: ours is that times C / sum(w)
    ref = monai_weighted(kind, w, x, t.unsqueeze(1))
    assert_parity(value, ref * 4 / w.sum(), x)
    # equal weights are no weights
    torch.testing.assert_close(lossdsl.compile(f"{kind}(weight=[2.0, 2.0, 2.0, 2.0])")(pred=x, target=t),
                               lossdsl.compile(f"{kind}()")(pred=x, target=t))


@pytest.mark.parametrize("kind", ["dice", "tversky", "jaccard"])
def test_class_weight_without_background_and_with_sample_weight_and_skip(kind):
    torch.manual_seed(5)
    x, t, mask = absent_case()  # class 2 absent from both images, class 1 from image 0
    w = torch.tensor([3.0, 0.5], dtype=torch.float64)  # classes 1 and 2: the background is dropped
    value = lossdsl.compile(f"{kind}(include_background=false, weight=[3.0, 0.5])")(pred=x, target=t)
    ref = monai_weighted(kind, w, x, t.unsqueeze(1), include_background=False)
    assert_parity(value, ref * 2 / w.sum(), x)
    # absent=skip with sample weights: sum(s_n w_c k_nc l_nc) / sum(s_n w_c k_nc)
    losses = masked_closed_form(kind, x.softmax(1), t, ignore=-1)[:, 1:]
    kept = (mask.sum((2, 3)) > 0)[:, 1:].double()  # only (image 1, class 1)
    s = torch.tensor([2.0, 0.25], dtype=torch.float64)
    weigh = s[:, None] * w[None] * kept
    value = lossdsl.compile(f"{kind}(include_background=false, weight=[3.0, 0.5], absent=skip, sample_weight=s)")(
        pred=x, target=t, s=s)
    assert_parity(value, (weigh * losses).sum() / weigh.sum(), x)
    torch.testing.assert_close(value, losses[1, 0])  # one score kept: its weights cancel


def test_class_weight_of_the_wrong_length_names_the_input():
    loss = lossdsl.compile("dice(include_background=false, weight=[1.0, 2.0, 3.0])")
    with pytest.raises(lossdsl.LossSpecError) as info:
        loss(pred=torch.randn(2, 3, 4, 4), target=torch.randint(0, 3, (2, 4, 4)))
    assert info.value.diagnostics[0].code == "E402"
    message = str(info.value)
    assert "input 'pred' of dice()" in message and "3 entries but 2 classes are scored" in message
    assert "include_background=false" in message
    with pytest.raises(lossdsl.LossSpecError):
        lossdsl.compile("dice(weight=[1.0, -2.0])")
    with pytest.raises(lossdsl.LossSpecError):
        lossdsl.compile("generalized_dice(weight=[1.0, 2.0])")


# --------------------------------------------------------------------------------------------
# reduction=none: the per-image-per-class losses [N, C], MONAI's reduction="none" (its [N, C, 1, 1]
# squeezed); generalized_dice gives [N]
# --------------------------------------------------------------------------------------------


def assert_parity_unreduced(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> None:
    """Same values; same gradient of a random linear combination of them."""
    torch.testing.assert_close(ours, ref.to(ours.dtype), **tol(ours.dtype))
    r = torch.rand(ours.shape, dtype=ours.dtype)
    assert_parity((ours * r).sum(), (ref * r).sum(), x)


@pytest.mark.parametrize("kind", ["dice", "tversky", "jaccard"])
@pytest.mark.parametrize("ours, theirs", [("", {}), ("include_background=false", {"include_background": False}),
                                          ("smooth_nr=0.0, smooth_dr=1e-3", {"smooth_nr": 0.0, "smooth_dr": 1e-3})],
                         ids=["default", "no-background", "nr-dr"])
def test_reduction_none_is_monais_per_image_and_class(kind, ours, theirs):
    torch.manual_seed(6)
    x = logits(3, 4, 5, 4, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 1, 5, 4))
    cls, extra = MONAI_OF[kind]
    args = ", ".join(filter(None, [ours, "reduction=none"]))
    value = lossdsl.compile(f"{kind}({args})")(pred=x, target=t)
    ref = cls(softmax=True, to_onehot_y=True, reduction="none", **theirs, **extra)(x, t)
    assert value.shape == ref.shape[:2] == (3, 4 if not ours.startswith("include") else 3)
    assert_parity_unreduced(value, ref.reshape(value.shape), x)
    # its mean is the mean reduction
    torch.testing.assert_close(value.mean(), lossdsl.compile(f"{kind}({ours})")(pred=x, target=t))
    # sigmoid over overlapping masks, MONAI's sigmoid=True
    masks = brats_masks(3, torch.float64)[:, :, :5, :4]
    x3 = logits(3, 3, 5, 4, dtype=torch.float64)
    value = lossdsl.compile(f"{kind}(activation=sigmoid, {args})")(pred=x3, target=masks)
    ref = cls(sigmoid=True, reduction="none", **theirs, **extra)(x3, masks)
    assert_parity_unreduced(value, ref.reshape(value.shape), x3)


@pytest.mark.parametrize("kind", ["dice", "tversky", "jaccard"])
def test_reduction_none_carries_the_weights_and_absent_classes(kind):
    """Times w_c (MONAI's weight does the same under reduction="none") and s_n (as torch's
    reduction="none" with weights); absent=skip and zero give an absent class 0."""
    x, t, mask = absent_case()
    w = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    s = torch.tensor([3.0, 0.5], dtype=torch.float64)
    cls, extra = MONAI_OF[kind]
    value = lossdsl.compile(f"{kind}(weight=[0.5, 2.0, 1.5], sample_weight=s, reduction=none)")(pred=x, target=t, s=s)
    ref = monai_weighted(kind, w, x, t.unsqueeze(1), reduction="none").reshape(2, 3)
    assert_parity_unreduced(value, ref * s[:, None], x)
    present = mask.sum((2, 3)) > 0
    unweighted = cls(softmax=True, to_onehot_y=True, reduction="none", **extra)(x, t.unsqueeze(1)).reshape(2, 3)
    for absent in ["skip", "zero"]:
        value = lossdsl.compile(f"{kind}(absent={absent}, reduction=none)")(pred=x, target=t)
        assert_parity_unreduced(value, unweighted * present, x)


def test_generalized_dice_reduction_none_is_per_image():
    from monai.losses import GeneralizedDiceLoss

    # float32: MONAI computes its weights from ground_o.float(), 2e-9 off float64's
    x = logits(3, 4, 5, 4, dtype=torch.float32)
    t = torch.randint(0, 4, (3, 1, 5, 4))
    value = lossdsl.compile("generalized_dice(reduction=none)")(pred=x, target=t)
    ref = GeneralizedDiceLoss(softmax=True, to_onehot_y=True, reduction="none")(x, t)
    assert value.shape == (3,)
    assert_parity_unreduced(value, ref.reshape(3), x)


def test_per_sample_is_each_images_mean_over_its_kept_classes():
    x, t, mask = absent_case()
    w = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    losses = masked_closed_form("dice", x.softmax(1), t, ignore=-1)
    per_image = lossdsl.compile("dice(weight=[0.5, 2.0, 1.5])").per_sample(pred=x, target=t)
    torch.testing.assert_close(per_image, (losses * w).sum(1) / w.sum())
    kept = (mask.sum((2, 3)) > 0).double()
    skip = lossdsl.compile("dice(absent=skip)").per_sample(pred=x, target=t)
    torch.testing.assert_close(skip, (losses * kept).sum(1) / kept.sum(1))
    total = lossdsl.compile("dice(reduction=sum)").per_sample(pred=x, target=t)
    torch.testing.assert_close(total, losses.sum(1))


def test_batch_with_reduction_none_is_a_spec_error_and_per_sample_names_it():
    with pytest.raises(lossdsl.LossSpecError, match="no per-image loss for reduction=none"):
        lossdsl.compile("dice(batch=true, reduction=none)")
    x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("dice(batch=true)").per_sample(pred=x, target=t)
    assert info.value.diagnostics[0].code == "E403"
    assert "dice() at <spec>:1:1 has batch=true" in str(info.value) and "no per-sample form" in str(info.value)


def test_generalized_dice_refuses_absent():
    """Its classes are scored together: an absent class takes the largest finite weight (MONAI's)."""
    with pytest.raises(lossdsl.LossSpecError, match="absent= is for dice, tversky and jaccard"):
        lossdsl.compile("generalized_dice(absent=skip)")


def test_weights_and_reduction_none_compile_fullgraph():
    x, t, s = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)), torch.tensor([1.0, 2.0])
    for text in ["dice(weight=[1.0, 2.0, 3.0], absent=skip, sample_weight=s)", "tversky(weight=[1.0, 2.0, 3.0], reduction=none)"]:
        loss = lossdsl.compile(text)
        compiled = compiled_fullgraph(loss)
        torch.testing.assert_close(compiled(pred=x, target=t, s=s), loss(pred=x, target=t, s=s))


# --------------------------------------------------------------------------------------------
# lovasz: Berman et al. 2018, smp's segmentation_models_pytorch/losses/lovasz.py (LovaszLoss:
# multiclass Lovász-softmax, classes="present", per_image, ignore_index; binary Lovász hinge)
# --------------------------------------------------------------------------------------------


def jaccard_set_loss(fg: set[int], mistakes: set[int]) -> float:
    """Δ_J(M) = 1 - |F \\ M| / |F ∪ M| for the ground-truth set F and the mispredicted set M."""
    union = fg | mistakes
    return 1 - len(fg - mistakes) / len(union) if union else 0.0


def lovasz_by_definition(m: torch.Tensor, fg: set[int]) -> torch.Tensor:
    """The Lovász extension of Δ_J at the errors ``m`` [P] (P kept pixels, indexed 0..P-1), by its
    definition: sum_i m_(i) (Δ_J({(1), ..., (i)}) - Δ_J({(1), ..., (i-1)})) over the errors in
    decreasing order, each Δ_J computed on Python sets."""
    values = m.detach().tolist()
    order = sorted(range(len(m)), key=lambda i: -values[i])
    total, previous, taken = m.sum() * 0, 0.0, set()
    for i in order:
        taken.add(i)
        current = jaccard_set_loss(fg, taken)
        total = total + m[i] * (current - previous)
        previous = current
    return total


def lovasz_reference(x: torch.Tensor, t: torch.Tensor, per_image: bool = False, classes: str = "present",
                     ignore: int | None = None) -> torch.Tensor:
    """Softmax errors |1[y = c] - p_c| per class (binary: hinge errors relu(1 - x (2y - 1))) over the
    kept pixels, the Lovász extension of each, averaged over the present (or all) classes, per
    image or over the batch pooled."""
    n, c = x.shape[:2]
    scores = x.softmax(1) if c > 1 else x
    groups = [(scores[i:i + 1], t[i:i + 1]) for i in range(n)] if per_image else [(scores, t)]
    results = []
    for s, y in groups:
        s = s.movedim(1, -1).reshape(-1, c)  # [P, C]
        y = y.reshape(-1)
        kept = [i for i in range(len(y)) if ignore is None or int(y[i]) != ignore]
        s, y = s[kept], y[kept]
        if c == 1:
            m = torch.relu(1 - s[:, 0] * (2 * y.to(s.dtype) - 1))
            results.append(lovasz_by_definition(m, {i for i in range(len(y)) if int(y[i]) == 1}))
            continue
        per_class = []
        for k in range(c):
            fg = {i for i in range(len(y)) if int(y[i]) == k}
            if classes == "present" and not fg:
                continue
            per_class.append(lovasz_by_definition(((y == k).to(s.dtype) - s[:, k]).abs(), fg))
        results.append(torch.stack(per_class).mean() if per_class else x.sum() * 0)
    return torch.stack(results).mean()


LOVASZ_OPTIONS = [
    ({}, {}),
    ({"per_image": "true"}, {"per_image": True}),
    ({"classes": "all"}, {"classes": "all"}),
    ({"ignore_index": "255"}, {"ignore": 255}),
    ({"per_image": "true", "classes": "all", "ignore_index": "255"}, {"per_image": True, "classes": "all", "ignore": 255}),
]


def lovasz_spec(ours: dict, **more: str) -> str:
    return "lovasz(" + ", ".join(f"{k}={v}" for k, v in {**ours, **more}.items()) + ")"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("ours, theirs", LOVASZ_OPTIONS, ids=["default", "per-image", "all", "ignore", "per-image-all-ignore"])
def test_lovasz_softmax_is_the_extension_by_its_definition(ours, theirs, dtype):
    torch.manual_seed(7)
    x = logits(2, 4, 4, 3, dtype=dtype)
    t = torch.randint(0, 4, (2, 4, 3))
    t[1][t[1] == 3] = 0  # class 3 absent from image 1: present differs from all, per image
    if "ignore" in theirs:
        t[torch.rand(2, 4, 3) < 0.3] = 255
    value = lossdsl.compile(lovasz_spec(ours))(pred=x, target=t)
    assert_parity(value, lovasz_reference(x, t, **theirs), x)
    # class indices [N, 1, H, W] are the same
    torch.testing.assert_close(lossdsl.compile(lovasz_spec(ours))(pred=x, target=t.unsqueeze(1)), value)


@pytest.mark.parametrize("ours, theirs", [o for o in LOVASZ_OPTIONS if "classes" not in o[0]], ids=["default", "per-image", "ignore"])
def test_lovasz_hinge_on_one_channel_is_the_extension_by_its_definition(ours, theirs):
    torch.manual_seed(8)
    x = logits(3, 1, 4, 4, dtype=torch.float64)
    t = (torch.rand(3, 1, 4, 4) < 0.4).long()
    if "ignore" in theirs:
        t[torch.rand(3, 1, 4, 4) < 0.3] = 255
    value = lossdsl.compile(lovasz_spec(ours))(pred=x, target=t)
    assert_parity(value, lovasz_reference(x, t, **theirs), x)
    if "ignore" not in theirs:  # float masks [N, H, W] are the same
        torch.testing.assert_close(lossdsl.compile(lovasz_spec(ours))(pred=x, target=t[:, 0].double()), value)


def test_lovasz_per_image_reductions_and_sample_weight():
    torch.manual_seed(9)
    x = logits(3, 3, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (3, 4, 4))
    per_image = torch.stack([lovasz_reference(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    assert_parity(lossdsl.compile("lovasz(per_image=true, reduction=sum)")(pred=x, target=t), per_image.sum(), x)
    w = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    value = lossdsl.compile("lovasz(per_image=true, sample_weight=w)")(pred=x, target=t, w=w)
    assert_parity(value, (w * per_image).sum() / w.sum(), x)
    with pytest.raises(lossdsl.LossSpecError, match="no per-image loss for sample_weight"):
        lossdsl.compile("lovasz(sample_weight=w)")


def test_lovasz_ignored_pixels_and_empty_images():
    """Ignored pixels get no gradient, even from NaN logits; an image of ignored pixels only (no
    class present) scores 0 and counts in the per-image mean, as smp's mean of an empty list (0)."""
    x = logits(2, 3, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 4, 4))
    t[0] = 255
    with torch.no_grad():
        x[0] = float("nan")
    value = lossdsl.compile("lovasz(per_image=true, ignore_index=255)")(pred=x, target=t)
    (g,) = torch.autograd.grad(value, x, retain_graph=True)
    assert torch.isfinite(value) and torch.isfinite(g).all() and torch.equal(g[0], torch.zeros_like(g[0]))
    assert_parity(value, lovasz_reference(x[1:], t[1:]) / 2, x)
    pooled = lossdsl.compile("lovasz(ignore_index=255)")(pred=x, target=t)
    assert_parity(pooled, lovasz_reference(x[1:], t[1:]), x)
    empty = lossdsl.compile("lovasz()")(pred=torch.randn(0, 3, 4, 4), target=torch.zeros(0, 4, 4, dtype=torch.long))
    assert empty == 0


def test_lovasz_perfect_confident_predictions_score_zero_and_bad_ones_more():
    t = torch.randint(0, 3, (2, 5, 5))
    perfect = 30.0 * torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double()
    loss = lossdsl.compile("lovasz()")
    assert loss(pred=perfect, target=t) < 1e-9
    assert loss(pred=-perfect, target=t) > 0.9  # every pixel wrong: about 1 - IoU = 1
    hinge = lossdsl.compile("lovasz()")
    m = (torch.rand(2, 1, 5, 5) < 0.5).double()
    assert hinge(pred=5 * (2 * m - 1), target=m) == 0  # margins of 5 > 1: no hinge error


@given(st.lists(st.booleans(), min_size=1, max_size=12), st.lists(st.booleans(), min_size=12, max_size=12))
@settings(max_examples=60, deadline=None)
def test_lovasz_extension_is_the_jaccard_loss_at_the_vertices(fg_flags, mistake_flags):
    """At 0/1 errors the Lovász extension is the set function itself: Δ_J of the mispredicted set."""
    from lossdsl.library.segmentation import Lovasz

    p = len(fg_flags)
    fg = torch.tensor(fg_flags, dtype=torch.float64).reshape(1, 1, p)
    m = torch.tensor(mistake_flags[:p], dtype=torch.float64).reshape(1, 1, p)
    value, present = Lovasz.lovasz_extension(m, fg, None)
    expected = jaccard_set_loss({i for i in range(p) if fg_flags[i]}, {i for i in range(p) if mistake_flags[i]})
    assert value.item() == pytest.approx(expected, abs=1e-12)
    assert bool(present) == any(fg_flags)


def test_lovasz_errors_name_the_input():
    with pytest.raises(lossdsl.LossSpecError, match="input 'target' of lovasz.*integer class indices"):
        lossdsl.compile("lovasz()")(pred=torch.randn(2, 3, 4, 4), target=torch.rand(2, 4, 4))
    with pytest.raises(lossdsl.LossSpecError, match="input 'pred' of lovasz.*floating-point"):
        lossdsl.compile("lovasz()")(pred=torch.ones(2, 3, 4, 4, dtype=torch.long), target=torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(lossdsl.LossSpecError, match="E402"):
        lossdsl.compile("lovasz()")(pred=torch.randn(2, 3, 4, 4), target=torch.full((2, 4, 4), 7))


@pytest.mark.parametrize("text", ["lovasz(per_image=true, ignore_index=255)", "lovasz(classes=all)", "lovasz()"])
def test_lovasz_compiles_fullgraph(text):
    c = 1 if text == "lovasz()" else 3
    x = torch.randn(2, c, 4, 4)
    t = torch.randint(0, 2 if c == 1 else 3, (2, 4, 4))
    t[0, 0] = 255 if "ignore" in text else t[0, 0]
    loss = lossdsl.compile(text)
    torch.testing.assert_close(compiled_fullgraph(loss)(pred=x, target=t), loss(pred=x, target=t))


# --------------------------------------------------------------------------------------------
# docs/coming_from.md, segmentation: each row's lossdsl spec gives the peer's number
# --------------------------------------------------------------------------------------------


def smp_overlap(kind: str, x: torch.Tensor, t: torch.Tensor, smooth: float = 0.0, eps: float = 1e-7,
                ignore: int | None = None, alpha: float = 0.5, beta: float = 0.5) -> torch.Tensor:
    """smp's DiceLoss / JaccardLoss / TverskyLoss(mode="multiclass") written from
    segmentation_models_pytorch/losses/dice.py, jaccard.py, tversky.py and _functional.py: the batch
    pooled (dims (0, 2)), smooth on both sides, the denominator clamped at eps, absent classes' loss
    zeroed, the mean over the classes."""
    n, c = x.shape[:2]
    p = x.softmax(1).reshape(n, c, -1)
    y = t.reshape(n, -1)
    kept = torch.ones_like(y, dtype=torch.bool) if ignore is None else y != ignore
    p = p * kept.unsqueeze(1)
    g = torch.nn.functional.one_hot(torch.where(kept, y, 0), c).permute(0, 2, 1).to(x.dtype) * kept.unsqueeze(1)
    inter, card = (p * g).sum((0, 2)), (p + g).sum((0, 2))
    if kind == "dice":
        score = (2 * inter + smooth) / (card + smooth).clamp_min(eps)
    elif kind == "jaccard":
        score = (inter + smooth) / (card - inter + smooth).clamp_min(eps)
    else:
        fp, fn = (p * (1 - g)).sum((0, 2)), ((1 - p) * g).sum((0, 2))
        score = (inter + smooth) / (inter + alpha * fp + beta * fn + smooth).clamp_min(eps)
    return ((1 - score) * (g.sum((0, 2)) > 0)).mean()


@pytest.mark.parametrize("kind", ["dice", "jaccard", "tversky"])
@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_coming_from_smp_overlap_losses(kind, smooth):
    x, t, _ = absent_case()
    t[0, 3] = 255
    ours_smooth = 2 * smooth if kind == "jaccard" else smooth  # smp adds s to I and the union, MONAI's form 2I and 2U
    extra = ", alpha=0.3, beta=0.7" if kind == "tversky" else ""
    value = lossdsl.compile(f"{kind}(batch=true, absent=zero, smooth={ours_smooth}, ignore_index=255{extra})")(pred=x, target=t)
    more = {"alpha": 0.3, "beta": 0.7} if kind == "tversky" else {}
    assert_parity(value, smp_overlap(kind, x, t, smooth=smooth, ignore=255, **more), x)


def test_coming_from_monai_dice_ce():
    from monai.losses import DiceCELoss

    x = logits(2, 3, 4, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 1, 4, 5))
    ref = DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=0.7, lambda_ce=1.5)(x, t)
    value = lossdsl.compile("loss = 0.7 * dice() + 1.5 * ce()")(pred=x, target=t[:, 0])
    assert_parity(value, ref, x)


@pytest.mark.parametrize("ignore", [-100, 255])
def test_coming_from_kornia_dice_and_tversky(ignore):
    kornia_losses = pytest.importorskip("kornia.losses")
    torch.manual_seed(11)
    x = logits(3, 4, 5, 6, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 5, 6))
    t[torch.rand(3, 5, 6) < 0.2] = ignore
    t[1][t[1] == 2] = 0  # image 1 lacks class 2: the images have different numbers of present classes
    # average="micro" (kornia's default): every class pooled per image
    micro = lossdsl.compile(f"generalized_dice(w_type=uniform, smooth_nr=0, smooth_dr=1e-8, ignore_index={ignore})")
    assert_parity(micro(pred=x, target=t), kornia_losses.dice_loss(x, t, ignore_index=ignore), x)
    # average="macro", with and without weights, and tversky: each image's mean over its present
    # classes, then the mean over the images: LossModule.per_sample(...).mean()
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    rows = [
        ("dice(smooth_nr=0, smooth_dr=1e-8, absent=skip", lambda: kornia_losses.dice_loss(x, t, average="macro", ignore_index=ignore)),
        ("dice(weight=[0.5, 2.0, 1.0, 3.0], smooth_nr=0, smooth_dr=1e-8, absent=skip",
         lambda: kornia_losses.dice_loss(x, t, average="macro", weight=w, ignore_index=ignore)),
        ("tversky(alpha=0.3, beta=0.7, smooth_nr=0, smooth_dr=1e-8, absent=skip",
         lambda: kornia_losses.tversky_loss(x, t, alpha=0.3, beta=0.7, ignore_index=ignore)),
    ]
    for spec_text, ref in rows:
        loss = lossdsl.compile(f"{spec_text}, ignore_index={ignore})")
        assert_parity(loss.per_sample(pred=x, target=t).mean(), ref(), x)
        # the forward averages the present (image, class) scores pooled instead: not the same here
        assert not torch.isclose(loss(pred=x, target=t), ref())


def test_coming_from_smp_binary_and_multilabel_dice():
    """smp's DiceLoss("binary" / "multilabel"): a sigmoid per channel, masks, dims (0, 2) pooled,
    absent channels zeroed, smooth 0 (segmentation_models_pytorch/losses/dice.py)."""
    x = logits(2, 3, 4, 5, dtype=torch.float64)
    masks = brats_masks(2, torch.float64)[:, :, :4, :5]
    masks[:, 2] = 0  # one channel absent from the batch
    p, g = x.sigmoid().reshape(2, 3, -1), masks.reshape(2, 3, -1)
    score = 2 * (p * g).sum((0, 2)) / (p + g).sum((0, 2)).clamp_min(1e-7)
    expected = ((1 - score) * (g.sum((0, 2)) > 0)).mean()
    value = lossdsl.compile("dice(activation=sigmoid, batch=true, absent=zero, smooth=0)")(pred=x, target=masks)
    assert_parity(value, expected, x)
    one = lossdsl.compile("dice(batch=true, absent=zero, smooth=0)")(pred=x[:, :1], target=masks[:, :1])
    assert_parity(one, 1 - score[0], x)
