"""ce, bce and soft_f1 at the depth their users come from (issue 13): ce's z-loss (PaLM) and
class-balanced weights (Cui et al. 2019), bce's per-label weights, the weighting convention
(torch's or mmpretrain's) and soft_f1's micro / macro / samples averages. Every option is
checked against its reference (torch's functional, the paper's closed form, scikit-learn) on
random inputs, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl

TOLERANCE = {"rtol": 1e-7, "atol": 1e-9}  # float64 throughout


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, *inputs: torch.Tensor) -> None:
    """Same value and same gradient with respect to every input."""
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref.to(ours.dtype), **TOLERANCE)
    g_ours = torch.autograd.grad(ours.sum(), inputs, retain_graph=True)
    g_ref = torch.autograd.grad(ref.sum(), inputs, retain_graph=True)
    for a, b in zip(g_ours, g_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **TOLERANCE)


def logits(*shape: int) -> torch.Tensor:
    return (3 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()


# ---------------------------------------------------------------------------------------------
# 1. z-loss: ce + z * logsumexp(logits)^2, weighed and averaged as the ce


def z_term(x: torch.Tensor) -> torch.Tensor:
    """PaLM's z-loss per target: log Z = logsumexp over the classes (dim 1), squared."""
    return torch.logsumexp(x, dim=1).square()


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 5)], ids=["NC", "NCHW"])
def test_z_loss_is_ce_plus_mean_log_z_squared(shape):
    x = logits(*shape)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    ours = lossdsl.compile("ce(z_loss=1e-4)")(pred=x, target=t)
    assert_parity(ours, F.cross_entropy(x, t) + 1e-4 * z_term(x).mean(), x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_z_loss_with_class_weights_ignore_and_smoothing(reduction):
    """Each target's z term carries its class weight and vanishes where the target is ignored;
    mean divides by the summed weights of the kept targets, as torch's weighted ce does."""
    x = logits(20, 4)
    t = torch.randint(0, 4, (20,))
    t[::3] = -100
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    keep = t != -100
    element_weight = w[t * keep] * keep
    losses = F.cross_entropy(x, t, weight=w, label_smoothing=0.1, reduction="none") + 0.01 * z_term(x) * element_weight
    ref = {"mean": losses.sum() / element_weight.sum(), "sum": losses.sum(), "none": losses}[reduction]
    spec = f"ce(weight=[0.5, 2.0, 1.0, 3.0], label_smoothing=0.1, z_loss=0.01, reduction={reduction})"
    assert_parity(lossdsl.compile(spec)(pred=x, target=t), ref, x)


def test_z_loss_with_sample_weights():
    x = logits(12, 3)
    t = torch.randint(0, 3, (12,))
    sw = torch.rand(12, dtype=torch.float64, requires_grad=True)
    losses = F.cross_entropy(x, t, reduction="none") + 1e-3 * z_term(x)
    ours = lossdsl.compile("ce(z_loss=1e-3, sample_weight=sw)")(pred=x, target=t, sw=sw)
    assert_parity(ours, (sw * losses).sum() / sw.sum(), x, sw)


def test_z_loss_on_binary_logits_is_softplus_squared():
    """Binary logits x are the two-class logits [0, x]: log Z = log(1 + e^x) = softplus(x)."""
    x = logits(30)
    t = torch.randint(0, 2, (30,))
    ref = F.binary_cross_entropy_with_logits(x, t.double()) + 0.1 * F.softplus(x).square().mean()
    assert_parity(lossdsl.compile("ce(z_loss=0.1)")(pred=x, target=t), ref, x)


def test_z_loss_on_probability_targets():
    x = logits(10, 4)
    q = torch.softmax(torch.randn(10, 4, dtype=torch.float64), dim=1)
    ref = F.cross_entropy(x, q) + 0.05 * z_term(x).mean()
    assert_parity(lossdsl.compile("ce(z_loss=0.05)")(pred=x, target=q), ref, x)


def test_z_loss_zero_is_plain_ce():
    x = logits(9, 3)
    t = torch.randint(0, 3, (9,))
    assert_parity(lossdsl.compile("ce(z_loss=0)")(pred=x, target=t), F.cross_entropy(x, t), x)


def test_z_loss_negative_is_a_spec_error():
    with pytest.raises(lossdsl.LossSpecError, match="z_loss"):
        lossdsl.compile("ce(z_loss=-1e-4)")


# ---------------------------------------------------------------------------------------------
# 2. weight=class_balanced(beta): Cui et al. (2019), (1 - beta) / (1 - beta^n_c), summing to C


def cui_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """The paper's formula, in float64, normalised to sum to the class count."""
    counts = counts.double()
    w = (1 - beta) / (1 - beta**counts)
    return w * len(counts) / w.sum()


def skewed_labels(n: int, classes: int) -> torch.Tensor:
    """Every class present, class 0 far the most frequent."""
    labels = torch.arange(n) % classes
    labels[: n // 2] = 0
    return labels[torch.randperm(n)]


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99, 0.9999])
@pytest.mark.parametrize("shape", [(40, 4), (4, 3, 5, 5)], ids=["NC", "NCHW"])
def test_class_balanced_is_torch_ce_with_cuis_weights(shape, beta):
    classes = shape[1]
    t = skewed_labels(shape[0] * int(torch.tensor(shape[2:]).prod()), classes).reshape(shape[0], *shape[2:])
    x = logits(*shape)
    loss_fn = lossdsl.compile(f"ce(weight=class_balanced({beta}))")
    ours = loss_fn(pred=x, target=t)  # training mode: counts this batch first, then weighs it
    counts = torch.bincount(t.reshape(-1), minlength=classes)
    torch.testing.assert_close(loss_fn.terms[0].class_counts, counts)
    assert_parity(ours, F.cross_entropy(x, t, weight=cui_weights(counts, beta)), x)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.999, 0.999999])
def test_class_balanced_weights_are_the_formula(beta):
    from lossdsl.library.classification import class_balanced_weight

    counts = torch.tensor([1, 7, 300, 12000, 2])
    for dtype in (torch.float32, torch.float64):
        got = class_balanced_weight(counts, beta, dtype)
        assert got.dtype == dtype
        torch.testing.assert_close(got, cui_weights(counts, beta).to(dtype))
        torch.testing.assert_close(got.sum(), torch.tensor(5.0, dtype=dtype))


def test_class_balanced_near_one_is_inverse_frequency_and_zero_is_uniform():
    from lossdsl.library.classification import class_balanced_weight

    counts = torch.tensor([10, 40, 50])
    inverse = 1 / counts.double()
    torch.testing.assert_close(class_balanced_weight(counts, 1 - 1e-9, torch.float64), inverse * 3 / inverse.sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(class_balanced_weight(counts, 0.0, torch.float64), torch.ones(3, dtype=torch.float64))


def test_class_balanced_unseen_class_weighs_as_the_rarest_seen():
    """n_c = 0 has effective number 0 ((1 - beta) / 0 = inf in the formula): it takes the rarest
    seen class's weight before the scaling to C, so every weight is finite."""
    from lossdsl.library.classification import class_balanced_weight

    counts = torch.tensor([5, 0, 20, 1])
    raw = (1 - 0.9) / (1 - 0.9 ** torch.tensor([5.0, 1.0, 20.0, 1.0], dtype=torch.float64))  # class 1 as class 3
    got = class_balanced_weight(counts, 0.9, torch.float64)
    torch.testing.assert_close(got, raw * 4 / raw.sum())
    torch.testing.assert_close(class_balanced_weight(torch.zeros(3, dtype=torch.long), 0.9, torch.float64),
                               torch.ones(3, dtype=torch.float64))


def test_class_balanced_fit_eval_and_an_absent_class():
    """fit() sets the counts from a data set; in eval mode they are frozen and a class the data
    set lacks still gets a finite weight (and a finite, torch-equal loss when it appears)."""
    labels = torch.tensor([0] * 30 + [2] * 5)  # class 1 never seen
    loss_fn = lossdsl.compile("ce(weight=class_balanced(0.99))")
    loss_fn.fit(target=labels, pred=torch.zeros(1, 3))
    loss_fn.eval()
    x = logits(6, 3)
    t = torch.tensor([0, 1, 2, 1, 0, 2])
    counts = torch.tensor([30, 5, 5])  # class 1 weighs as the rarest seen (5)
    assert_parity(loss_fn(pred=x, target=t), F.cross_entropy(x, t, weight=cui_weights(counts, 0.99)), x)
    torch.testing.assert_close(loss_fn.terms[0].class_counts, torch.tensor([30, 0, 5]))


def test_class_balanced_binary_logits_and_smoothing():
    z = logits(24)
    y = torch.zeros(24, dtype=torch.long)
    y[:5] = 1
    ours = lossdsl.compile("ce(weight=class_balanced(0.9), label_smoothing=0.1)")(pred=z, target=y)
    w = cui_weights(torch.tensor([19, 5]), 0.9)
    two_class = torch.stack([torch.zeros_like(z), z], dim=1)
    assert_parity(ours, F.cross_entropy(two_class, y, weight=w, label_smoothing=0.1), z)


def test_class_balanced_survives_state_dict():
    a = lossdsl.compile("ce(weight=class_balanced(0.9))")
    a(pred=torch.randn(10, 3), target=torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 0, 1]))
    b = lossdsl.compile("ce(weight=class_balanced(0.9))")
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.terms[0].class_counts, torch.tensor([6, 3, 1]))


def test_class_balanced_compiles_fullgraph():
    loss_fn = lossdsl.compile("ce(weight=class_balanced(0.99), z_loss=1e-4)")
    x, t = torch.randn(16, 4), skewed_labels(16, 4)
    eager = loss_fn(pred=x, target=t)
    loss_fn.fit(target=torch.tensor([], dtype=torch.long), pred=torch.zeros(1, 4))  # counts back to zero
    compiled = torch.compile(loss_fn, fullgraph=True)
    torch.testing.assert_close(compiled(pred=x, target=t), eager)


@pytest.mark.parametrize("spec, message", [
    ("ce(weight=class_balanced)", "takes its number"),
    ("ce(weight=class_balanced(1))", "less than 1"),
    ("ce(weight=class_balanced(-0.5))", "greater than or equal to 0"),
])
def test_class_balanced_spec_errors(spec, message):
    with pytest.raises(lossdsl.LossSpecError, match=message):
        lossdsl.compile(spec)


def test_class_balanced_needs_class_indices():
    with pytest.raises(lossdsl.LossSpecError, match=r"class_balanced\(0.9\) counts classes"):
        lossdsl.compile("ce(weight=class_balanced(0.9))")(pred=torch.randn(4, 3), target=torch.rand(4, 3).softmax(1))


# ---------------------------------------------------------------------------------------------
# 3. bce(weight=[...]): one weight per label of multi-label targets, beside pos_weight

LABEL_WEIGHTS = [0.5, 2.0, 1.0, 4.0]


def multi_label(*shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape).double()


@pytest.mark.parametrize("pos_weight", [None, 3.0, [1.0, 2.0, 0.5, 5.0]], ids=["none", "scalar", "per label"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_bce_label_weights_are_torchs_weight(reduction, pos_weight):
    """sum and none are exactly torch's weight= of shape [C]."""
    x, y = logits(10, 4), multi_label(10, 4)
    w = torch.tensor(LABEL_WEIGHTS, dtype=torch.float64)
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
    ref = F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction)
    spec = f"bce(weight={LABEL_WEIGHTS}, reduction={reduction}" + (f", pos_weight={pos_weight})" if pos_weight else ")")
    assert_parity(lossdsl.compile(spec)(pred=x, target=y), ref, x)


@pytest.mark.parametrize("shape", [(10, 4), (3, 5, 4)], ids=["NC", "NLC"])
def test_bce_label_weights_mean_is_torchs_by_default(shape):
    """A PyTorch user's F.binary_cross_entropy_with_logits(weight=w) is bce(weight=w): mean over elements."""
    x, y = logits(*shape), multi_label(*shape)
    w = torch.tensor(LABEL_WEIGHTS, dtype=torch.float64)
    pw = torch.tensor(2.0, dtype=torch.float64)
    ours = lossdsl.compile(f"bce(weight={LABEL_WEIGHTS}, pos_weight=2.0)")(pred=x, target=y)
    assert_parity(ours, F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw), x)


@pytest.mark.parametrize("shape", [(10, 4), (3, 5, 4)], ids=["NC", "NLC"])
def test_bce_normalize_weights_divides_by_the_summed_weights(shape):
    x, y = logits(*shape), multi_label(*shape)
    w = torch.tensor(LABEL_WEIGHTS, dtype=torch.float64)
    total = F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=torch.tensor(2.0, dtype=torch.float64), reduction="sum")
    ours = lossdsl.compile(f"bce(weight={LABEL_WEIGHTS}, pos_weight=2.0, normalize=weights)")(pred=x, target=y)
    assert_parity(ours, total / w.expand(shape).sum(), x)


@pytest.mark.parametrize("normalize", [None, "weights"])
def test_bce_label_weights_with_sample_weights_and_smoothing(normalize):
    x, y = logits(8, 4), multi_label(8, 4)
    sw = torch.rand(8, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(LABEL_WEIGHTS, dtype=torch.float64)
    element_weight = sw[:, None] * w
    losses = F.binary_cross_entropy_with_logits(x, y * 0.9 + 0.05, reduction="none")
    option = f", normalize={normalize}" if normalize else ""
    spec = f"bce(weight={LABEL_WEIGHTS}, label_smoothing=0.1, sample_weight=sw{option})"
    ours = lossdsl.compile(spec)(pred=x, target=y, sw=sw)
    # by default the sample weights alone are the denominator (4 labels each), as any term's
    denominator = element_weight.sum() if normalize == "weights" else 4 * sw.sum()
    assert_parity(ours, (element_weight * losses).sum() / denominator, x, sw)


def test_bce_equal_label_weights_scale_the_loss_unless_normalize_weights():
    x, y = logits(7, 4), multi_label(7, 4)
    ours = lossdsl.compile("bce(weight=[3, 3, 3, 3])")(pred=x, target=y)
    assert_parity(ours, 3 * F.binary_cross_entropy_with_logits(x, y), x)  # torch's weight=: a factor
    ours = lossdsl.compile("bce(weight=[3, 3, 3, 3], normalize=weights)")(pred=x, target=y)
    assert_parity(ours, F.binary_cross_entropy_with_logits(x, y), x)  # only the ratios matter


def test_bce_label_weights_empty_batch_is_zero():
    x = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    got = lossdsl.compile(f"bce(weight={LABEL_WEIGHTS})")(pred=x, target=torch.zeros(0, 4))
    assert got.item() == 0.0


def test_bce_label_weights_of_the_wrong_width_are_a_call_error():
    with pytest.raises(lossdsl.LossSpecError, match="weight has 4 entries, one per label, but pred has 3 labels"):
        lossdsl.compile(f"bce(weight={LABEL_WEIGHTS})")(pred=torch.randn(2, 3), target=torch.ones(2, 3))


def test_bce_weight_and_pos_weight_disagreeing_on_labels_is_a_spec_error():
    with pytest.raises(lossdsl.LossSpecError, match="weight and pos_weight have 2 and 3 entries"):
        lossdsl.compile("bce(weight=[1, 2], pos_weight=[1, 2, 3])")


# ---------------------------------------------------------------------------------------------
# 4. normalize=weights|count: torch's mean (divided by the summed weights) or mmpretrain's
#    (weight_reduce_loss in mmpretrain/models/losses/utils.py, avg_factor=None: mean over the
#    elements of w * loss)

CLASS_WEIGHTS = [0.5, 2.0, 1.0, 3.0]


def mmpretrain_mean(losses: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """mmpretrain's weight_reduce_loss(loss, weight, reduction="mean", avg_factor=None)."""
    if weight is not None:
        losses = losses * weight
    return losses.mean()


@pytest.mark.parametrize("shape", [(24, 4), (3, 4, 5, 5)], ids=["NC", "NCHW"])
def test_ce_normalize_weights_is_torchs_and_count_is_mmpretrains(shape):
    x = logits(*shape)
    t = torch.randint(0, 4, (shape[0], *shape[2:]))
    w = torch.tensor(CLASS_WEIGHTS, dtype=torch.float64)
    weights = lossdsl.compile(f"ce(weight={CLASS_WEIGHTS}, normalize=weights)")(pred=x, target=t)
    assert_parity(weights, F.cross_entropy(x, t, weight=w), x)
    count = lossdsl.compile(f"ce(weight={CLASS_WEIGHTS}, normalize=count)")(pred=x, target=t)
    # mmpretrain's cross_entropy: F.cross_entropy(weight=class_weight, reduction="none"), then weight_reduce_loss
    assert_parity(count, mmpretrain_mean(F.cross_entropy(x, t, weight=w, reduction="none")), x)
    default = lossdsl.compile(f"ce(weight={CLASS_WEIGHTS})")(pred=x, target=t)
    torch.testing.assert_close(default, weights)


def test_ce_normalize_count_with_sample_weights_is_mmpretrains_weight():
    """mmpretrain's weight (per sample) multiplies each loss and is not in the denominator."""
    x, t = logits(16, 4), torch.randint(0, 4, (16,))
    sw = torch.rand(16, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(CLASS_WEIGHTS, dtype=torch.float64)
    ours = lossdsl.compile(f"ce(weight={CLASS_WEIGHTS}, normalize=count, sample_weight=sw)")(pred=x, target=t, sw=sw)
    assert_parity(ours, mmpretrain_mean(F.cross_entropy(x, t, weight=w, reduction="none"), sw), x, sw)
    weights = lossdsl.compile(f"ce(weight={CLASS_WEIGHTS}, sample_weight=sw)")(pred=x, target=t, sw=sw)
    assert_parity(weights, (sw * F.cross_entropy(x, t, weight=w, reduction="none")).sum() / (sw * w[t]).sum(), x, sw)


def test_ce_normalize_count_divides_by_the_kept_targets():
    x, t = logits(20, 4), torch.randint(0, 4, (20,))
    t[::4] = -100
    keep = t != -100
    w = torch.tensor(CLASS_WEIGHTS, dtype=torch.float64)
    losses = F.cross_entropy(x, t, weight=w, label_smoothing=0.2, reduction="none")
    ours = lossdsl.compile(f"ce(weight={CLASS_WEIGHTS}, normalize=count, label_smoothing=0.2)")(pred=x, target=t)
    assert_parity(ours, losses.sum() / keep.sum(), x)


def test_ce_normalize_count_with_balanced_weights_and_z_loss():
    x, t = logits(30, 3), skewed_labels(30, 3)
    counts = torch.bincount(t, minlength=3).double()
    w = counts.sum() / (3 * counts)
    losses = F.cross_entropy(x, t, weight=w, reduction="none") + 1e-2 * z_term(x) * w[t]
    ours = lossdsl.compile("ce(weight=balanced, normalize=count, z_loss=1e-2)")(pred=x, target=t)
    assert_parity(ours, losses.mean(), x)


def test_ce_normalize_count_on_binary_logits():
    z, y = logits(18), torch.randint(0, 2, (18,))
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    two_class = torch.stack([torch.zeros_like(z), z], dim=1)
    ours = lossdsl.compile("ce(weight=[1, 3], normalize=count)")(pred=z, target=y)
    assert_parity(ours, F.cross_entropy(two_class, y, weight=w, reduction="none").mean(), z)


def test_ce_normalize_is_moot_without_weights():
    x, t = logits(10, 3), torch.randint(0, 3, (10,))
    for reduction in ("mean", "sum"):
        count = lossdsl.compile(f"ce(normalize=count, reduction={reduction})")(pred=x, target=t)
        assert_parity(count, F.cross_entropy(x, t, reduction=reduction), x)


@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_bce_normalize_count_is_torchs_weight_mean(pos_weight):
    x, y = logits(12, 4), multi_label(12, 4)
    w = torch.tensor(LABEL_WEIGHTS, dtype=torch.float64)
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
    spec = f"bce(weight={LABEL_WEIGHTS}, normalize=count" + (f", pos_weight={pos_weight})" if pos_weight else ")")
    ref = F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw)
    assert_parity(lossdsl.compile(spec)(pred=x, target=y), ref, x)


def test_bce_normalize_count_with_sample_weights_is_torchs_broadcast_weight():
    x, y = logits(9, 4), multi_label(9, 4)
    sw = torch.rand(9, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(LABEL_WEIGHTS, dtype=torch.float64)
    losses = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    ours = lossdsl.compile(f"bce(weight={LABEL_WEIGHTS}, normalize=count, sample_weight=sw)")(pred=x, target=y, sw=sw)
    # torch's weight= takes no gradient: its value here, the gradients from the same formula
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, y, weight=(sw[:, None] * w).detach()))
    assert_parity(ours, (losses * sw[:, None] * w).mean(), x, sw)
    plain = lossdsl.compile("bce(normalize=count, sample_weight=sw)")(pred=x, target=y, sw=sw)
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(x, y, weight=sw[:, None].detach().expand(9, 4)))
    assert_parity(plain, (losses * sw[:, None]).mean(), x, sw)
    default = lossdsl.compile("bce(sample_weight=sw)")(pred=x, target=y, sw=sw)  # as before: sum(w l) / sum(w)
    assert_parity(default, (sw[:, None] * F.binary_cross_entropy_with_logits(x, y, reduction="none")).sum() / (4 * sw.sum()), x, sw)


def test_normalize_takes_two_names():
    with pytest.raises(lossdsl.LossSpecError, match="E201"):
        lossdsl.compile("ce(normalize=tokens)")


# ---------------------------------------------------------------------------------------------
# 5. soft_f1(average=micro|macro|samples): scikit-learn's f1_score averages on soft counts


def soft_counts(pred: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...], weight: torch.Tensor | None = None):
    p = torch.sigmoid(pred)
    if weight is not None:  # a sample's weight scales its counts
        p, target_w = p * weight[:, None], target * weight[:, None]
    else:
        target_w = target
    tp = (p * target).sum(dims)
    return tp, p.sum(dims) - tp, target_w.sum(dims) - tp  # TP, FP, FN


def one_minus_f(tp, fp, fn, beta: float = 1.0) -> torch.Tensor:
    b2 = beta**2
    return 1 - (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)


AVERAGE_DIMS = {"macro": (0,), "micro": (0, 1), "samples": (1,)}


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("average", ["macro", "micro", "samples"])
def test_soft_f1_averages_are_the_soft_count_formula(average, beta):
    x, y = logits(12, 5), multi_label(12, 5)
    y[0] = 1  # no sample or label without positives: every F is defined
    y[:, 0] = 1
    ref = one_minus_f(*soft_counts(x, y, AVERAGE_DIMS[average]), beta=beta)
    for reduction in ("mean", "sum"):
        ours = lossdsl.compile(f"soft_f1(average={average}, beta={beta}, reduction={reduction})")(pred=x, target=y)
        assert_parity(ours, ref.mean() if reduction == "mean" else ref.sum(), x)


def test_soft_f1_default_is_macro_as_before():
    x, y = logits(10, 4), multi_label(10, 4)
    torch.testing.assert_close(lossdsl.compile("soft_f1()")(pred=x, target=y),
                               lossdsl.compile("soft_f1(average=macro)")(pred=x, target=y))
    assert_parity(lossdsl.compile("soft_f1()")(pred=x, target=y), one_minus_f(*soft_counts(x, y, (0,))).mean(), x)


@pytest.mark.parametrize("average", ["macro", "micro", "samples"])
def test_soft_f1_sample_weights(average):
    """macro and micro: a sample's weight scales its counts; samples: it weighs the sample's score
    (scikit-learn's sample_weight in both)."""
    x, y = logits(10, 4), multi_label(10, 4)
    y[:, 1] = 1
    sw = torch.rand(10, dtype=torch.float64, requires_grad=True)
    if average == "samples":
        losses = one_minus_f(*soft_counts(x, y, (1,)))
        ref = (sw * losses).sum() / sw.sum()
    else:
        ref = one_minus_f(*soft_counts(x, y, AVERAGE_DIMS[average], sw)).mean()
    ours = lossdsl.compile(f"soft_f1(average={average}, sample_weight=sw)")(pred=x, target=y, sw=sw)
    assert_parity(ours, ref, x, sw)


@pytest.mark.parametrize("beta", [1.0, 2.0])
@pytest.mark.parametrize("average", ["macro", "micro", "samples"])
def test_soft_f1_at_hard_probabilities_is_one_minus_sklearns_f_beta(average, beta):
    """Logits of +-100 make the sigmoid 0 or 1: the soft counts are scikit-learn's counts,
    empty labels and samples included (zero_division=0)."""
    from sklearn.metrics import fbeta_score

    generator = torch.Generator().manual_seed(13)
    y = torch.randint(0, 2, (40, 6), generator=generator)
    predicted = torch.randint(0, 2, (40, 6), generator=generator)
    y[:, 5] = 0
    predicted[:, 5] = 0  # a label nobody has nor predicts
    y[3], predicted[3] = 0, 0  # and such a sample
    sw = torch.rand(40, dtype=torch.float64, generator=generator)
    x = (200.0 * predicted.double() - 100.0)
    for weights in (None, sw):
        expected = 1 - fbeta_score(y.numpy(), predicted.numpy(), beta=beta, average=average, zero_division=0,
                                   sample_weight=None if weights is None else weights.numpy())
        spec = f"soft_f1(average={average}, beta={beta}" + (", sample_weight=sw)" if weights is not None else ")")
        got = lossdsl.compile(spec)(pred=x, target=y.double(), **({} if weights is None else {"sw": weights}))
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_soft_f1_binary_micro_and_macro_agree_and_samples_needs_labels():
    x, y = logits(16), torch.randint(0, 2, (16,)).double()
    ref = one_minus_f(*soft_counts(x[:, None], y[:, None], (0, 1)))
    for average in ("macro", "micro"):
        assert_parity(lossdsl.compile(f"soft_f1(average={average})")(pred=x, target=y), ref, x)
    with pytest.raises(lossdsl.LossSpecError, match="average=samples .* needs multi-label"):
        lossdsl.compile("soft_f1(average=samples)")(pred=x, target=y)


# ---------------------------------------------------------------------------------------------
# 6. docs/coming_from.md: every row of the torch section and of "### ce, bce, soft_f1" gives the
#    peer's number (value and gradients); the table and this list name the same (peer, spec) pairs.

import re  # noqa: E402
from pathlib import Path  # noqa: E402

W4 = torch.tensor(CLASS_WEIGHTS, dtype=torch.float64)
L4 = torch.tensor(LABEL_WEIGHTS, dtype=torch.float64)
PW4 = torch.tensor([1.0, 2.0, 0.5, 5.0], dtype=torch.float64)


def _classes(n: int = 12, c: int = 4) -> dict[str, torch.Tensor]:
    return {"pred": logits(n, c), "target": torch.randint(0, c, (n,))}


def _ignored() -> dict[str, torch.Tensor]:
    inputs = _classes()
    inputs["target"][::3] = -1
    return inputs


def _log_probabilities() -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Log-probabilities of logits x: the gradients compared are x's (the one to log_p itself
    differs by softmax(log_p), which log_softmax's backward removes)."""
    x = logits(12, 4)
    return {"log_p": F.log_softmax(x, 1), "target": torch.randint(0, 4, (12,))}, [x]


def _probabilities() -> dict[str, torch.Tensor]:
    return {"pred": logits(12, 4), "target": torch.softmax(torch.randn(12, 4, dtype=torch.float64), dim=1)}


def _multi_label() -> dict[str, torch.Tensor]:
    return {"pred": logits(12, 4), "target": multi_label(12, 4)}


def _pair(**extra) -> dict[str, torch.Tensor]:
    return {"pred": logits(12, 3), "target": torch.randn(12, 3, dtype=torch.float64), **extra}


def _sample_weighted() -> dict[str, torch.Tensor]:
    return {**_classes(), "sw": torch.rand(12, dtype=torch.float64, requires_grad=True)}


def _embeddings(*names: str, y: str | None = None) -> dict[str, torch.Tensor]:
    inputs = {name: torch.randn(12, 5, dtype=torch.float64, requires_grad=True) for name in names}
    if y is not None:
        inputs[y] = torch.randint(0, 2, (12,)).double() * 2 - 1
    return inputs


# mmpretrain/models/losses/cross_entropy_loss.py and utils.py, their code inlined (mmpretrain
# pulls in mmcv and mmengine: too heavy for CI).
def mm_weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()
    return loss.sum() / avg_factor if reduction == "mean" else loss


def mm_cross_entropy(pred, label, weight=None, avg_factor=None, class_weight=None):
    loss = F.cross_entropy(pred, label, weight=class_weight, reduction="none")
    return mm_weight_reduce_loss(loss, weight=weight, avg_factor=avg_factor)


def mm_soft_cross_entropy(pred, label, class_weight=None):
    loss = -label * F.log_softmax(pred, dim=-1)
    if class_weight is not None:
        loss = loss * class_weight
    return mm_weight_reduce_loss(loss.sum(dim=-1))


def mm_binary_cross_entropy(pred, label, class_weight=None, pos_weight=None):
    if class_weight is not None:
        class_weight = class_weight.repeat(pred.size(0), 1)
    loss = F.binary_cross_entropy_with_logits(pred, label.float().to(pred.dtype), weight=class_weight,
                                              pos_weight=pos_weight, reduction="none")
    return mm_weight_reduce_loss(loss)


def _cui(counts: list[int], beta: float) -> torch.Tensor:
    return cui_weights(torch.tensor(counts), beta)


def _class_balanced_inputs() -> dict[str, torch.Tensor]:
    return {"pred": logits(12, 3), "target": torch.tensor([0] * 8 + [1] * 3 + [2])}


def _hard_multi_label() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hard = torch.randint(0, 2, (20, 4), generator=generator)
    return {"pred": 200.0 * hard.double() - 100.0, "target": torch.randint(0, 2, (20, 4), generator=generator).double()}


def _sklearn_f1(average: str):
    def reference(pred, target):
        from sklearn.metrics import f1_score

        value = f1_score(target.numpy(), (pred > 0).numpy().astype(int), average=average, zero_division=0)
        return torch.tensor(1 - value, dtype=torch.float64)
    return reference


TORCH_ROWS = [
    ("F.cross_entropy(x, y)", "ce()", _classes, lambda pred, target: F.cross_entropy(pred, target)),
    ("F.cross_entropy(x, y, weight=w)", "ce(weight=[0.5, 2.0, 1.0, 3.0])", _classes,
     lambda pred, target: F.cross_entropy(pred, target, weight=W4)),
    ("F.cross_entropy(x, y, ignore_index=-1)", "ce(ignore_index=-1)", _ignored,
     lambda pred, target: F.cross_entropy(pred, target, ignore_index=-1)),
    ("F.cross_entropy(x, y, label_smoothing=0.1)", "ce(label_smoothing=0.1)", _classes,
     lambda pred, target: F.cross_entropy(pred, target, label_smoothing=0.1)),
    ("F.cross_entropy(x, q)", "ce()", _probabilities, lambda pred, target: F.cross_entropy(pred, target)),
    ('F.cross_entropy(x, y, reduction="none")', "ce(reduction=none)", _classes,
     lambda pred, target: F.cross_entropy(pred, target, reduction="none")),
    ("F.nll_loss(F.log_softmax(x, 1), y)", "ce()", _classes,
     lambda pred, target: F.nll_loss(F.log_softmax(pred, 1), target)),
    ("nn.NLLLoss(weight=w, ignore_index=-1)(F.log_softmax(x, 1), y)", "ce(weight=[0.5, 2.0, 1.0, 3.0], ignore_index=-1)",
     _ignored, lambda pred, target: torch.nn.NLLLoss(weight=W4, ignore_index=-1)(F.log_softmax(pred, 1), target)),
    ("F.nll_loss(log_p, y)", "ce(pred=log_p)",
     _log_probabilities,
     lambda log_p, target: F.nll_loss(log_p, target)),
    ("F.binary_cross_entropy_with_logits(x, y)", "bce()", _multi_label,
     lambda pred, target: F.binary_cross_entropy_with_logits(pred, target)),
    ("F.binary_cross_entropy_with_logits(x, y, pos_weight=p)", "bce(pos_weight=[1.0, 2.0, 0.5, 5.0])", _multi_label,
     lambda pred, target: F.binary_cross_entropy_with_logits(pred, target, pos_weight=PW4)),
    ("F.binary_cross_entropy_with_logits(x, y, weight=w)", "bce(weight=[0.5, 2.0, 1.0, 4.0])",
     _multi_label, lambda pred, target: F.binary_cross_entropy_with_logits(pred, target, weight=L4)),
    ('F.binary_cross_entropy_with_logits(x, y, weight=w, reduction="sum")', "bce(weight=[0.5, 2.0, 1.0, 4.0], reduction=sum)",
     _multi_label, lambda pred, target: F.binary_cross_entropy_with_logits(pred, target, weight=L4, reduction="sum")),
    ("F.binary_cross_entropy(torch.sigmoid(x), y)", "bce()", _multi_label,
     lambda pred, target: F.binary_cross_entropy(torch.sigmoid(pred), target)),
    ("F.mse_loss(x, y)", "mse()", _pair, lambda pred, target: F.mse_loss(pred, target)),
    ("F.l1_loss(x, y)", "mae()", _pair, lambda pred, target: F.l1_loss(pred, target)),
    ("F.huber_loss(x, y, delta=0.5)", "huber(delta=0.5)", _pair, lambda pred, target: F.huber_loss(pred, target, delta=0.5)),
    ("F.smooth_l1_loss(x, y, beta=0.5)", "smooth_l1(beta=0.5)", _pair,
     lambda pred, target: F.smooth_l1_loss(pred, target, beta=0.5)),
    ("F.poisson_nll_loss(x, k, log_input=False, full=True)", "poisson_nll(log_input=false, full=true)",
     lambda: {"pred": (torch.rand(12, 3, dtype=torch.float64) * 4 + 0.1).requires_grad_(),
              "target": torch.randint(0, 6, (12, 3)).double()},
     lambda pred, target: F.poisson_nll_loss(pred, target, log_input=False, full=True)),
    ("F.gaussian_nll_loss(x, y, var, full=True)", "gaussian_nll(var=var, full=true)",
     lambda: _pair(var=(torch.rand(12, 3, dtype=torch.float64) + 0.1).requires_grad_()),
     lambda pred, target, var: F.gaussian_nll_loss(pred, target, var, full=True)),
    ("F.cosine_embedding_loss(a, b, y, margin=0.5)", "cosine_embedding(x1=a, x2=b, y=y, margin=0.5)",
     lambda: _embeddings("a", "b", y="y"), lambda a, b, y: F.cosine_embedding_loss(a, b, y, margin=0.5)),
    ("F.margin_ranking_loss(a, b, y, margin=0.1)", "margin_ranking(x1=a, x2=b, y=y, margin=0.1)",
     lambda: {"a": logits(12), "b": logits(12), "y": torch.randint(0, 2, (12,)).double() * 2 - 1},
     lambda a, b, y: F.margin_ranking_loss(a, b, y, margin=0.1)),
    ("F.triplet_margin_loss(a, p, n, margin=0.5, p=1)", "triplet(margin=0.5, p=1)",
     lambda: _embeddings("anchor", "positive", "negative"),
     lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative, margin=0.5, p=1)),
    ('F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")', "kl(p=t, q=s)",
     lambda: {"t": logits(12, 4), "s": logits(12, 4)},
     lambda t, s: F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")),
    ("F.multi_margin_loss(x, y)", "hinge()", _classes, lambda pred, target: F.multi_margin_loss(pred, target)),
    ("F.multi_margin_loss(x, y, p=2, margin=0.5)", "hinge(squared=true, margin=0.5)", _classes,
     lambda pred, target: F.multi_margin_loss(pred, target, p=2, margin=0.5)),
]

CLASSIFICATION_ROWS = [
    ("CrossEntropyLoss()", "ce()", _classes, lambda pred, target: mm_cross_entropy(pred, target)),
    ("CrossEntropyLoss(class_weight=w)", "ce(weight=[0.5, 2.0, 1.0, 3.0], normalize=count)", _classes,
     lambda pred, target: mm_cross_entropy(pred, target, class_weight=W4)),
    ("CrossEntropyLoss()(x, y, weight=sw)", "ce(normalize=count, sample_weight=sw)", _sample_weighted,
     lambda pred, target, sw: mm_cross_entropy(pred, target, weight=sw)),
    ("CrossEntropyLoss()(x, y, avg_factor=64)", "ce(reduction=sum) / 64", _classes,
     lambda pred, target: mm_cross_entropy(pred, target, avg_factor=64)),
    ("CrossEntropyLoss(loss_weight=2.0)", "2.0 * ce()", _classes, lambda pred, target: 2.0 * mm_cross_entropy(pred, target)),
    ("CrossEntropyLoss(use_soft=True, class_weight=w)", "ce(weight=[0.5, 2.0, 1.0, 3.0])", _probabilities,
     lambda pred, target: mm_soft_cross_entropy(pred, target, class_weight=W4)),
    ("CrossEntropyLoss(use_sigmoid=True)", "bce()", _multi_label,
     lambda pred, target: mm_binary_cross_entropy(pred, target)),
    ("CrossEntropyLoss(use_sigmoid=True, class_weight=w)", "bce(weight=[0.5, 2.0, 1.0, 4.0], normalize=count)",
     _multi_label, lambda pred, target: mm_binary_cross_entropy(pred, target, class_weight=L4)),
    ("CrossEntropyLoss(use_sigmoid=True, pos_weight=p)", "bce(pos_weight=[1.0, 2.0, 0.5, 5.0])", _multi_label,
     lambda pred, target: mm_binary_cross_entropy(pred, target, pos_weight=PW4)),
    ("nn.CrossEntropyLoss(label_smoothing=0.1)", "ce(label_smoothing=0.1)", _probabilities,
     lambda pred, target: torch.nn.CrossEntropyLoss(label_smoothing=0.1)(pred, target)),
    ("class-balanced weights (Cui et al. 2019), beta=0.999", "ce(weight=class_balanced(0.999))", _class_balanced_inputs,
     lambda pred, target: F.cross_entropy(pred, target, weight=_cui([8, 3, 1], 0.999))),
    ("z-loss (PaLM), 1e-4 * log(Z)^2", "ce(z_loss=1e-4)", _classes,
     lambda pred, target: F.cross_entropy(pred, target) + 1e-4 * z_term(pred).mean()),
    ('1 - f1_score(y, y_hat, average="macro")', "soft_f1()", _hard_multi_label, _sklearn_f1("macro")),
    ('1 - f1_score(y, y_hat, average="micro")', "soft_f1(average=micro)", _hard_multi_label, _sklearn_f1("micro")),
    ('1 - f1_score(y, y_hat, average="samples")', "soft_f1(average=samples)", _hard_multi_label, _sklearn_f1("samples")),
]


@pytest.mark.parametrize("peer, spec, make_inputs, reference", TORCH_ROWS + CLASSIFICATION_ROWS,
                         ids=[row[0] for row in TORCH_ROWS + CLASSIFICATION_ROWS])
def test_coming_from_row_gives_the_peers_number(peer, spec, make_inputs, reference):
    inputs = make_inputs()
    inputs, leaves = inputs if isinstance(inputs, tuple) else (inputs, [t for t in inputs.values() if t.requires_grad])
    loss_fn = lossdsl.compile(spec)
    ours = loss_fn(**inputs)
    ref = reference(**{name: inputs[name] for name in loss_fn.inputs})
    if ref.requires_grad:
        assert_parity(ours, ref, *leaves)
    else:  # scikit-learn's number, at hard 0/1 probabilities: the value
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def _table_rows(text: str, heading: str) -> set[tuple[str, str]]:
    """(peer, spec) of each row under ``heading``, up to the next heading of its level or above."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading) + 1
    stops = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", text[start:], re.M)]
    body = text[start:start + stops[0]] if stops else text[start:]
    rows = set()
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and cells[1].startswith("`"):
            rows.add((re.match(r"`([^`]*)`", cells[0]).group(1), re.match(r"`([^`]*)`", cells[1]).group(1)))
    return rows


def test_coming_from_rows_are_the_tested_ones():
    text = (Path(__file__).parent.parent / "docs" / "coming_from.md").read_text(encoding="utf-8")
    assert _table_rows(text, "## torch (`torch.nn.functional`)") == {(p, s) for p, s, *_ in TORCH_ROWS}
    assert _table_rows(text, "### ce, bce, soft_f1") == {(p, s) for p, s, *_ in CLASSIFICATION_ROWS}


# ---------------------------------------------------------------------------------------------
# The new options under torch.compile(fullgraph=True) (no host synchronisation, no graph break),
# in half precision, and the class-balanced weights as a property over counts and beta

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.mark.parametrize("spec, make_inputs", [
    ("ce(weight=[0.5, 2.0, 1.0, 3.0], normalize=count, z_loss=1e-3, sample_weight=sw)", _sample_weighted),
    ("bce(weight=[0.5, 2.0, 1.0, 4.0], normalize=count, pos_weight=2.0)", _multi_label),
    ("soft_f1(average=samples)", _multi_label),
    ("soft_f1(average=micro)", _multi_label),
], ids=["ce count z", "bce weight count", "soft_f1 samples", "soft_f1 micro"])
def test_new_options_compile_fullgraph(spec, make_inputs):
    inputs = {name: t.detach() for name, t in make_inputs().items()}
    loss_fn = lossdsl.compile(spec)
    eager = loss_fn(**inputs)
    torch.testing.assert_close(torch.compile(loss_fn, fullgraph=True)(**inputs), eager)


@pytest.mark.parametrize("spec, make_inputs", [
    ("ce(weight=class_balanced(0.99), z_loss=1e-4, normalize=count)", _class_balanced_inputs),
    (f"bce(weight={LABEL_WEIGHTS})", _multi_label),
    (f"bce(weight={LABEL_WEIGHTS}, normalize=count)", _multi_label),
    ("soft_f1(average=samples)", _multi_label),
])
def test_new_options_in_half_precision_match_float32(spec, make_inputs):
    inputs = {name: t.detach() for name, t in make_inputs().items()}
    half = {name: t.half() if t.is_floating_point() else t for name, t in inputs.items()}
    single = {name: t.float() if t.is_floating_point() else t for name, t in half.items()}
    got = lossdsl.compile(spec)(**half)
    assert got.dtype == torch.float16 and torch.isfinite(got)
    torch.testing.assert_close(got.float(), lossdsl.compile(spec)(**single), rtol=2e-3, atol=2e-3)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 10**7), min_size=1, max_size=12), beta=st.floats(0, 0.999999))
def test_class_balanced_weights_are_finite_positive_and_sum_to_c(counts, beta):
    from lossdsl.library.classification import class_balanced_weight

    counts_t = torch.tensor(counts)
    got = class_balanced_weight(counts_t, beta, torch.float32)
    assert torch.isfinite(got).all() and (got > 0).all()
    torch.testing.assert_close(got.sum(), torch.tensor(float(len(counts))), rtol=1e-5, atol=1e-5)
    seen = counts_t > 0
    if seen.sum() > 1:  # among the seen classes, the formula's ratios
        expected = cui_weights(counts_t[seen], beta)
        ratio = got[seen].double() / expected
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-4, atol=0)


def test_class_balanced_from_the_builder_and_back():
    from lossdsl import T

    spec = T.ce(weight=T.call("class_balanced", 0.99), normalize="count", z_loss=1e-4)
    assert str(spec) == "ce(weight=class_balanced(0.99), normalize=count, z_loss=0.0001)"
    assert lossdsl.parse(str(spec)) == spec.spec
    x, t = logits(12, 3), skewed_labels(12, 3)
    torch.testing.assert_close(spec.compile()(pred=x, target=t),
                               lossdsl.compile("ce(weight=class_balanced(0.99), normalize=count, z_loss=1e-4)")(pred=x, target=t))


def _fresh_reference_path(loss_fn):
    import types

    loss_fn.forward = types.MethodType(lossdsl.LossModule.forward, loss_fn)  # the table-walking path
    return loss_fn


# First calls lossdsl refuses (E402), each one whose logits alone would size class_counts (an index
# out of range: on the CPU, where reading the targets costs no synchronisation).
_REFUSED_FIRST_CALLS = {
    "target_shape": lambda: {"pred": logits(4, 3), "target": torch.tensor([0, 1, 2])},
    "binary_target_shape": lambda: {"pred": logits(4), "target": torch.zeros(4, 2)},
    "probability_shape": lambda: {"pred": logits(4, 3), "target": torch.rand(4, 2)},
    "one_class": lambda: {"pred": logits(4, 1, 2), "target": torch.zeros(4, 2, dtype=torch.long)},
    "float_logits": lambda: {"pred": torch.zeros(4, 3, dtype=torch.long), "target": torch.tensor([0, 1, 2, 0])},
    "scalar_logits": lambda: {"pred": torch.tensor(0.5), "target": torch.tensor(1)},
    "index_out_of_range": lambda: {"pred": logits(4, 3), "target": torch.tensor([0, 1, 2, 7])},
    "negative_index": lambda: {"pred": logits(2, 3, 2), "target": torch.tensor([[0, -2], [1, 1]])},
}


@pytest.mark.parametrize("path", ["straight_line", "reference", "compiled_call"])
@pytest.mark.parametrize("refused", sorted(_REFUSED_FIRST_CALLS))
@pytest.mark.parametrize("weight", ["balanced", "class_balanced(0.99)"])
def test_a_refused_first_call_leaves_balanced_counts_as_they_were(weight, refused, path):
    # The refused call's logits would size class_counts (3 classes, or 2); the next calls have 2
    # classes: values and state must be a fresh module's, as if the refused call never was.
    spec = f"ce(weight={weight})"
    loss_fn, fresh = lossdsl.compile(spec), lossdsl.compile(spec)
    if path == "reference":
        loss_fn, fresh = _fresh_reference_path(loss_fn), _fresh_reference_path(fresh)
    term = loss_fn.terms[0]
    # The term's own __call__ (its lazy hook, as torch.compile runs it) raises torch's own IndexError
    # for an index out of range; the module turns it into E402.
    with pytest.raises((lossdsl.LossSpecError, IndexError)) as refusal:
        if path == "compiled_call":
            term(*_REFUSED_FIRST_CALLS[refused]().values())
        else:
            loss_fn(**_REFUSED_FIRST_CALLS[refused]())
    if path != "compiled_call":
        assert refusal.value.diagnostics[0].code == "E402"
    assert term.class_counts.numel() == 0  # still unsized
    binary_target = torch.tensor([0, 1, 1, 1, 0, 1])
    later = [
        {"pred": logits(6), "target": binary_target},
        {"pred": logits(6), "target": torch.tensor([1, 1, 0, 1, 1, 1])},
    ]
    for inputs in later:
        torch.testing.assert_close(loss_fn(**inputs), fresh(**inputs), rtol=0, atol=0)
    torch.testing.assert_close(term.class_counts, torch.tensor([3, 9]))  # the later targets' classes, counted
    assert loss_fn.state_dict().keys() == fresh.state_dict().keys()
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(loss_fn.state_dict()[key], value, rtol=0, atol=0)


def test_a_torch_error_mid_count_leaves_the_counts_as_they_were():
    # A class index out of range fails inside the count (E402 from torch's IndexError): the counts
    # the call added before the bad index must not stay, or the next batch is weighed wrongly.
    loss_fn, fresh = lossdsl.compile("ce(weight=balanced)"), lossdsl.compile("ce(weight=balanced)")
    first = {"pred": logits(4, 3), "target": torch.tensor([0, 1, 2, 1])}
    torch.testing.assert_close(loss_fn(**first), fresh(**first), rtol=0, atol=0)
    with pytest.raises(lossdsl.LossSpecError):
        loss_fn(pred=logits(4, 3), target=torch.tensor([0, 1, 2, 7]))
    torch.testing.assert_close(loss_fn.terms[0].class_counts, torch.tensor([1, 2, 1]))
    second = {"pred": logits(5, 3), "target": torch.tensor([2, 2, 0, 1, 2])}
    torch.testing.assert_close(loss_fn(**second), fresh(**second), rtol=0, atol=0)
    torch.testing.assert_close(loss_fn.terms[0].class_counts, torch.tensor([2, 3, 4]))


def test_a_torch_error_mid_count_leaves_padded_counts_unkept():
    # Logits of more classes than the counts hold pad them (the general form, here with smoothing);
    # a call refused in the count must not keep the padded counts.
    spec = "ce(weight=balanced, label_smoothing=0.1)"
    loss_fn, fresh = lossdsl.compile(spec), lossdsl.compile(spec)
    first = {"pred": logits(4, 3), "target": torch.tensor([0, 1, 2, 1])}
    torch.testing.assert_close(loss_fn(**first), fresh(**first), rtol=0, atol=0)
    with pytest.raises(lossdsl.LossSpecError):
        loss_fn(pred=logits(4, 5), target=torch.tensor([0, 4, 3, 9]))
    torch.testing.assert_close(loss_fn.terms[0].class_counts, torch.tensor([1, 2, 1]))
    second = {"pred": logits(5, 5), "target": torch.tensor([4, 2, 0, 1, 3])}
    torch.testing.assert_close(loss_fn(**second), fresh(**second), rtol=0, atol=0)
    torch.testing.assert_close(loss_fn.terms[0].class_counts, torch.tensor([2, 3, 2, 1, 1]))


def test_a_refused_first_call_does_not_keep_its_signature_off_the_specialised_path():
    # The refused call has the later calls' signature (3-class logits, int64 labels): the forward
    # it fell back to, with the counts unsized, must not stay cached for them (review finding).
    loss_fn, fresh = lossdsl.compile("ce(weight=balanced)"), lossdsl.compile("ce(weight=balanced)")
    with pytest.raises(lossdsl.LossSpecError):
        loss_fn(pred=logits(4, 3), target=torch.tensor([0, 1, 2, 7]))
    valid = {"pred": logits(4, 3), "target": torch.tensor([0, 1, 2, 1])}
    torch.testing.assert_close(loss_fn(**valid), fresh(**valid), rtol=0, atol=0)
    names = [[f.__qualname__ for f in functions] for functions in (*loss_fn._specialised.values(), *fresh._specialised.values())]
    assert len(names) == 2 and names[0] == names[1] and "forward" not in names[0][0]
