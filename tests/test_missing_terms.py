"""Terms issue 13 names as missing, against their peers on random inputs: values and gradients.

References: torch's functionals (``F.poisson_nll_loss``, ``F.gaussian_nll_loss``,
``F.cosine_embedding_loss``, ``F.margin_ranking_loss``), kornia's ``js_div_loss_2d`` formula written
out in plain torch, and MONAI's ``DiceLoss(jaccard=True)`` and ``GeneralizedDiceLoss``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, *wrt: torch.Tensor) -> None:
    """Same value and shape, same gradients w.r.t. ``wrt``."""
    torch.testing.assert_close(ours, ref)
    for g_ours, g_ref in zip(torch.autograd.grad(ours.sum(), wrt), torch.autograd.grad(ref.sum(), wrt)):
        torch.testing.assert_close(g_ours, g_ref)


def leaf(*shape: int, dtype: torch.dtype, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, dtype=dtype) + shift).requires_grad_()


# -- poisson_nll --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("shape", [(11,), (6, 3), (2, 3, 4)], ids=["N", "NC", "3d"])
def test_poisson_nll_matches_torch(shape, full, log_input, reduction, dtype):
    torch.manual_seed(0)
    pred = leaf(*shape, dtype=dtype) if log_input else (torch.rand(shape, dtype=dtype) * 4 + 0.05).requires_grad_()
    target = torch.poisson(torch.full(shape, 2.5, dtype=dtype))
    spec = f"poisson_nll(log_input={str(log_input).lower()}, full={str(full).lower()}, eps=1e-6, reduction={reduction})"
    ours = lossdsl.compile(spec)(pred=pred, target=target)
    ref = F.poisson_nll_loss(pred, target, log_input=log_input, full=full, eps=1e-6, reduction=reduction)
    assert_parity(ours, ref, pred)


def test_poisson_nll_sample_weight_is_a_weighted_mean_of_sample_means():
    torch.manual_seed(1)
    pred, target = leaf(8, 3, dtype=torch.float64), torch.poisson(torch.full((8, 3), 2.0, dtype=torch.float64))
    weight = torch.rand(8, dtype=torch.float64)
    ours = lossdsl.compile("poisson_nll(sample_weight=w)")(pred=pred, target=target, w=weight)
    per_sample = F.poisson_nll_loss(pred, target, reduction="none").mean(dim=1)
    assert_parity(ours, (weight * per_sample).sum() / weight.sum(), pred)


# -- gaussian_nll -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("var_shape", ["same", "last1", "dropped"])
def test_gaussian_nll_matches_torch(var_shape, full, reduction, dtype):
    torch.manual_seed(2)
    pred, target = leaf(7, 4, dtype=dtype), torch.randn(7, 4, dtype=dtype)
    shape = {"same": (7, 4), "last1": (7, 1), "dropped": (7,)}[var_shape]
    var = (torch.rand(shape, dtype=dtype) + 0.05).requires_grad_()
    spec = f"gaussian_nll(full={str(full).lower()}, reduction={reduction})"
    ours = lossdsl.compile(spec)(pred=pred, target=target, var=var)
    ref = F.gaussian_nll_loss(pred, target, var, full=full, reduction=reduction)
    assert_parity(ours, ref, pred, var)


def test_gaussian_nll_clamps_small_variances_as_torch_does():
    """Variances below eps: torch clamps them under no_grad, so the gradient still reaches var."""
    torch.manual_seed(3)
    pred, target = leaf(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    var = torch.tensor([[1e-9, 0.5], [0.0, 2.0], [1e-3, 1e-7], [1.0, 1.0], [3.0, 1e-12]], dtype=torch.float64).requires_grad_()
    ours = lossdsl.compile("gaussian_nll(eps=1e-4)")(pred=pred, target=target, var=var)
    assert_parity(ours, F.gaussian_nll_loss(pred, target, var, eps=1e-4), pred, var)


def test_gaussian_nll_negative_variance_is_clamped_not_nan():
    """torch raises ValueError (a host read of var); lossdsl clamps to eps: the value at var = eps."""
    pred, target = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ours = lossdsl.compile("gaussian_nll(eps=0.5)")(pred=pred, target=target, var=torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))
    expected = F.gaussian_nll_loss(pred, target, torch.tensor([0.5, 0.5, 2.0], dtype=torch.float64), eps=0.5)
    torch.testing.assert_close(ours, expected)


def test_gaussian_nll_bad_variance_shape_is_e402():
    loss = lossdsl.compile("gaussian_nll()")
    with pytest.raises(lossdsl.LossSpecError) as error:
        loss(pred=torch.randn(4, 3), target=torch.randn(4, 3), var=torch.rand(4, 2))
    assert "E402" in str(error.value) and "'var'" in str(error.value) and "gaussian_nll" in str(error.value)


@pytest.mark.parametrize("spec", ["poisson_nll()", "gaussian_nll()"])
def test_empty_batch_gives_zero(spec):
    inputs = {"pred": torch.zeros(0, 3, requires_grad=True), "target": torch.zeros(0, 3)}
    if spec.startswith("gaussian"):
        inputs["var"] = torch.ones(0, 3)
    value = lossdsl.compile(spec)(**inputs)
    assert value.item() == 0.0


def test_poisson_nll_is_finite_where_torch_gives_nan():
    """full=true with targets of 0 or below: torch's gradient w.r.t. the target is NaN (the masked
    log); rates below -eps: torch's value is NaN. lossdsl's value equals torch's wherever torch's is finite."""
    pred = torch.tensor([0.3, -0.2, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.0, -1.0, 3.0, 1.0], dtype=torch.float64, requires_grad=True)
    ours = lossdsl.compile("poisson_nll(full=true, reduction=none)")(pred=pred, target=target)
    ref = F.poisson_nll_loss(pred, target, full=True, reduction="none")
    (g_target,) = torch.autograd.grad(ours.sum(), target, retain_graph=True)
    assert torch.isfinite(g_target).all()
    assert_parity(ours, ref, pred)
    rates = torch.tensor([-1.0, 0.5], dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([2.0, 2.0], dtype=torch.float64)
    value = lossdsl.compile("poisson_nll(log_input=false, reduction=none)")(pred=rates, target=counts)
    assert torch.isfinite(value).all() and value[0] > 100  # -2 log(tiny): a large, finite penalty
    torch.testing.assert_close(value[1], F.poisson_nll_loss(rates[1:], counts[1:], log_input=False, reduction="sum"))
    assert torch.isfinite(torch.autograd.grad(value.sum(), rates)[0]).all()


# -- cosine_embedding, margin_ranking -----------------------------------------------------------


def signs(*shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape) * 2 - 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [0.0, 0.3, -0.5])
def test_cosine_embedding_matches_torch(margin, reduction, dtype):
    torch.manual_seed(4)
    x1, x2, y = leaf(9, 5, dtype=dtype), leaf(9, 5, dtype=dtype), signs(9)
    ours = lossdsl.compile(f"cosine_embedding(margin={margin}, reduction={reduction})")(x1=x1, x2=x2, y=y)
    assert_parity(ours, F.cosine_embedding_loss(x1, x2, y, margin=margin, reduction=reduction), x1, x2)


def test_cosine_embedding_zero_embedding_is_finite_as_torch():
    x1 = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, -1])
    ours = lossdsl.compile("cosine_embedding()")(x1=x1, x2=x2, y=y)
    assert_parity(ours, F.cosine_embedding_loss(x1, x2, y), x1, x2)


def test_cosine_embedding_sample_weight_and_empty_batch():
    torch.manual_seed(5)
    x1, x2, y, w = leaf(6, 4, dtype=torch.float64), leaf(6, 4, dtype=torch.float64), signs(6), torch.rand(6, dtype=torch.float64)
    ours = lossdsl.compile("cosine_embedding(sample_weight=w)")(x1=x1, x2=x2, y=y, w=w)
    per_pair = F.cosine_embedding_loss(x1, x2, y, reduction="none")
    assert_parity(ours, (w * per_pair).sum() / w.sum(), x1, x2)
    empty = lossdsl.compile("cosine_embedding()")(x1=torch.zeros(0, 4), x2=torch.zeros(0, 4), y=torch.zeros(0))
    assert empty.item() == 0.0


def test_cosine_embedding_bad_labels_shape_is_e402():
    with pytest.raises(lossdsl.LossSpecError, match=r"E402.*'y'.*cosine_embedding|'y'.*E402"):
        lossdsl.compile("cosine_embedding()")(x1=torch.randn(4, 3), x2=torch.randn(4, 3), y=torch.ones(4, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [0.0, 0.5, -0.2])
@pytest.mark.parametrize("shape", [(12,), (4, 3)], ids=["N", "NK"])
def test_margin_ranking_matches_torch(shape, margin, reduction, dtype):
    torch.manual_seed(6)
    x1, x2, y = leaf(*shape, dtype=dtype), leaf(*shape, dtype=dtype), signs(*shape)
    ours = lossdsl.compile(f"margin_ranking(margin={margin}, reduction={reduction})")(x1=x1, x2=x2, y=y)
    assert_parity(ours, F.margin_ranking_loss(x1, x2, y.to(dtype), margin=margin, reduction=reduction), x1, x2)


def test_margin_ranking_mismatched_labels_is_e402():
    with pytest.raises(lossdsl.LossSpecError, match="E402"):
        lossdsl.compile("margin_ranking()")(x1=torch.randn(4), x2=torch.randn(4), y=torch.ones(5))


# -- js -----------------------------------------------------------------------------------------


def kornia_js_div_loss_2d(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """kornia.losses.js_div_loss_2d (kornia/losses/divergence.py) written out: heatmaps [B, K, H, W],
    each a distribution over H * W; KL through F.kl_div(q.log(), p), JS(target, pred), mean over B, K."""

    def kl_div_2d(p, q):
        b, k, h, w = p.shape
        return F.kl_div(q.reshape(b * k, h * w).log(), p.reshape(b * k, h * w), reduction="none").sum(-1).view(b, k)

    def js_div_2d(p, q):
        m = 0.5 * (p + q)
        return 0.5 * kl_div_2d(p, m) + 0.5 * kl_div_2d(q, m)

    return js_div_2d(target, pred).mean()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_js_probabilities_match_kornia_on_reshaped_heatmaps(dtype):
    torch.manual_seed(7)
    pred = torch.randn(2, 3, 4, 5, dtype=dtype).flatten(2).softmax(-1).view(2, 3, 4, 5).requires_grad_()
    target = torch.randn(2, 3, 4, 5, dtype=dtype).flatten(2).softmax(-1).view(2, 3, 4, 5)
    ours = lossdsl.compile("js(softmax=false)")(pred=pred.reshape(6, 20), target=target.reshape(6, 20))
    assert_parity(ours, kornia_js_div_loss_2d(pred, target), pred)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(8, 5), (3, 4, 2, 2)], ids=["NC", "NCHW"])
def test_js_of_softmax_matches_the_closed_form(shape, reduction, dtype):
    """JS of softmax(pred) over dim 1, summed over classes and further dims, as kornia's formula."""
    torch.manual_seed(8)
    pred, target = leaf(*shape, dtype=dtype, scale=2.0), torch.randn(shape, dtype=dtype).softmax(dim=1)
    ours = lossdsl.compile(f"js(reduction={reduction})")(pred=pred, target=target)
    p = pred.softmax(dim=1)
    m = 0.5 * (p + target)
    per_sample = (0.5 * F.kl_div(m.log(), target, reduction="none") + 0.5 * F.kl_div(m.log(), p, reduction="none")).flatten(1).sum(1)
    ref = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    assert_parity(ours, ref, pred)


def test_js_bounds_and_zero_mass_classes():
    """Identical distributions give 0; disjoint ones give log 2; a class empty in both adds 0, gradients finite."""
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.75, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    value = lossdsl.compile("js(softmax=false, reduction=none)")(pred=p, target=t)
    torch.testing.assert_close(value, torch.tensor([0.0, torch.log(torch.tensor(2.0)).item()], dtype=torch.float64))
    assert torch.isfinite(torch.autograd.grad(value.sum(), p)[0]).all()
    logits = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    masked = lossdsl.compile("js()")(pred=logits, target=torch.tensor([[0.5, 0.0, 0.5]]))
    assert torch.isfinite(masked) and torch.isfinite(torch.autograd.grad(masked, logits)[0]).all()


# -- jaccard, generalized_dice (MONAI) ----------------------------------------------------------


@pytest.fixture(scope="module")
def monai_losses():
    return pytest.importorskip("monai.losses")


def class_map(n: int, classes: int, h: int, w: int, absent: tuple[int, ...] = ()) -> torch.Tensor:
    """Class indices [N, 1, H, W], as MONAI's to_onehot_y takes them; ``absent`` classes never occur."""
    present = [c for c in range(classes) if c not in absent]
    return torch.tensor(present)[torch.randint(0, len(present), (n, 1, h, w))]


OVERLAP_CONFIGS = {
    "default": ("", {}),
    "no_background": ("include_background=false", {"include_background": False}),
    "smooth0": ("smooth=0", {"smooth_nr": 0.0, "smooth_dr": 0.0}),
    "smooth1": ("smooth=1.0", {"smooth_nr": 1.0, "smooth_dr": 1.0}),
    "sum": ("reduction=sum", {"reduction": "sum"}),
}


@pytest.mark.parametrize("absent", [(), (2,)], ids=["all_present", "class2_absent"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("config", list(OVERLAP_CONFIGS))
def test_jaccard_matches_monai(monai_losses, config, squared, absent):
    torch.manual_seed(9)
    args, options = OVERLAP_CONFIGS[config]
    if squared:
        args, options = ", ".join(filter(None, [args, "squared=true"])), {**options, "squared_pred": True}
    pred, target = leaf(3, 4, 5, 6, dtype=torch.float32, scale=2.0), class_map(3, 4, 5, 6, absent)
    ours = lossdsl.compile(f"jaccard({args})")(pred=pred, target=target)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True, **options)(pred, target)
    assert_parity(ours, ref, pred)


def test_jaccard_single_channel_sigmoid_matches_monai(monai_losses):
    torch.manual_seed(10)
    pred, target = leaf(4, 1, 6, 6, dtype=torch.float32), (torch.rand(4, 1, 6, 6) < 0.4).float()
    ours = lossdsl.compile("jaccard()")(pred=pred, target=target)
    assert_parity(ours, monai_losses.DiceLoss(sigmoid=True, jaccard=True)(pred, target), pred)


def test_jaccard_at_zero_smoothing_is_one_minus_soft_iou():
    torch.manual_seed(11)
    pred, target = leaf(2, 3, 4, 4, dtype=torch.float64), torch.randint(0, 3, (2, 4, 4))
    p = pred.softmax(dim=1).flatten(2)
    g = F.one_hot(target, 3).permute(0, 3, 1, 2).flatten(2).to(torch.float64)
    intersection = (p * g).sum(-1)
    iou = intersection / (p.sum(-1) + g.sum(-1) - intersection)
    assert_parity(lossdsl.compile("jaccard(smooth=0)")(pred=pred, target=target), (1 - iou).mean(), pred)


@pytest.mark.parametrize("absent", [(), (0,), (1, 3)], ids=["all_present", "background_absent", "two_absent"])
@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("config", list(OVERLAP_CONFIGS))
def test_generalized_dice_matches_monai(monai_losses, config, w_type, absent):
    torch.manual_seed(12)
    args, options = OVERLAP_CONFIGS[config]
    args = ", ".join(filter(None, [args, f"w_type={w_type}"]))
    pred, target = leaf(3, 4, 5, 6, dtype=torch.float32, scale=2.0), class_map(3, 4, 5, 6, absent)
    ours = lossdsl.compile(f"generalized_dice({args})")(pred=pred, target=target)
    ref = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type=w_type, **options)(pred, target)
    assert_parity(ours, ref, pred)


def test_generalized_dice_float64_and_sample_weight_match_the_closed_form():
    """Per sample 1 - (2 sum w I + s) / (sum w (|P| + |G|) + s), w = 1 / G^2; weighted mean over samples."""
    torch.manual_seed(13)
    pred, target = leaf(4, 3, 5, 5, dtype=torch.float64), torch.randint(0, 3, (4, 5, 5))
    weights = torch.rand(4, dtype=torch.float64)
    p = pred.softmax(dim=1).flatten(2)
    g = F.one_hot(target, 3).permute(0, 3, 1, 2).flatten(2).to(torch.float64)
    w = 1 / g.sum(-1).square()
    per_sample = 1 - (2 * (w * (p * g).sum(-1)).sum(1) + 1e-5) / ((w * (p.sum(-1) + g.sum(-1))).sum(1) + 1e-5)
    ours = lossdsl.compile("generalized_dice(sample_weight=sw)")(pred=pred, target=target, sw=weights)
    assert_parity(ours, (weights * per_sample).sum() / weights.sum(), pred)


def test_generalized_dice_empty_target_scores_zero_with_finite_gradients():
    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    value = lossdsl.compile("generalized_dice(smooth=0)")(pred=pred, target=torch.zeros(2, 1, 4, 4))
    assert value.item() == 0.0
    assert torch.isfinite(torch.autograd.grad(value, pred)[0]).all()


# -- compiled -----------------------------------------------------------------------------------

COMPILED = {
    "poisson_nll(full=true)": lambda: {"pred": torch.randn(6, 3), "target": torch.poisson(torch.full((6, 3), 2.0))},
    "gaussian_nll()": lambda: {"pred": torch.randn(6, 3), "target": torch.randn(6, 3), "var": torch.rand(6, 1)},
    "cosine_embedding(margin=0.1)": lambda: {"x1": torch.randn(6, 3), "x2": torch.randn(6, 3), "y": signs(6)},
    "margin_ranking()": lambda: {"x1": torch.randn(6), "x2": torch.randn(6), "y": signs(6)},
    "js()": lambda: {"pred": torch.randn(6, 3), "target": torch.randn(6, 3).softmax(1)},
    "jaccard()": lambda: {"pred": torch.randn(2, 3, 4, 4), "target": torch.randint(0, 3, (2, 4, 4))},
    "generalized_dice()": lambda: {"pred": torch.randn(2, 3, 4, 4), "target": torch.randint(0, 3, (2, 4, 4))},
}


@pytest.mark.parametrize("spec", list(COMPILED))
def test_new_terms_trace_fullgraph_and_match_eager(spec):
    """No host synchronisation or graph break in the forward (torch.compile(fullgraph=True))."""
    torch.manual_seed(14)
    loss_fn, inputs = lossdsl.compile(spec), COMPILED[spec]()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(**inputs), loss_fn(**inputs))


def test_js_without_softmax_on_rows_that_are_no_distributions_is_finite():
    """Found by the fuzz test: js(softmax=false) given logits took the log of a negative mixture (NaN)."""
    g = torch.Generator().manual_seed(3)
    pred = (torch.randn(16, 3, generator=g) * 3).requires_grad_()
    target = torch.randn(16, 3, generator=g).softmax(dim=1)
    loss = lossdsl.compile("js(softmax=false)")(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    probs = pred.detach().softmax(dim=1)  # on distributions the clamp changes nothing
    m = 0.5 * (probs + target)
    expected = 0.5 * ((target * (target / m).log()).sum(1) + (probs * (probs / m).log()).sum(1)).mean()
    torch.testing.assert_close(lossdsl.compile("js(softmax=false)")(probs, target), expected)
