"""Per-sample losses and accumulation: ``reduction=none`` on every term that averages over samples
(against torch's ``reduction="none"``, or the formula written out), ``LossModule.per_sample``
(against hand-written per-sample torch code), the batch-level terms' refusals, and float32
accumulation of sums and counts for half-precision inputs (against the same loss in float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl

f64 = torch.float64


def leaf(*shape: int, scale: float = 1.0, gen: torch.Generator | None = None) -> torch.Tensor:
    return (scale * torch.randn(*shape, dtype=f64, generator=gen)).requires_grad_()


def labels(num_classes: int, *shape: int, gen: torch.Generator | None = None) -> torch.Tensor:
    return torch.randint(0, num_classes, shape, generator=gen)


def diagnostic(spec: str) -> lossdsl.errors.Diagnostic:
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec)
    return info.value.diagnostics[0]


# ---------------------------------------------------------------------------------------------
# reduction=none: each term against torch's reduction="none" (or the closed form)
# ---------------------------------------------------------------------------------------------

def _ce_inputs(g):
    target = labels(4, 8, gen=g)
    target[[1, 5]] = -100  # ignored: torch gives 0 there
    return {"pred": leaf(8, 4, gen=g), "target": target}


def _ce_pixel_inputs(g):
    target = labels(3, 4, 5, 6, gen=g)
    target[0, 0, :3] = -100
    return {"pred": leaf(4, 3, 5, 6, gen=g), "target": target}


def _binary_ce_reference(x):
    """Binary logits z are the two-class logits [0, z] of F.cross_entropy."""
    z = x["pred"]
    return torch.stack([torch.zeros_like(z), z], dim=1)


def _contrastive(x, margin=1.0):
    squared = (x["a"] - x["b"]).square().sum(1)
    same = x["same"].to(f64)
    return same * squared + (1 - same) * F.relu(margin - squared.sqrt()).square()


def _sigmoid_focal(x, gamma=2.0, alpha=0.25):
    p, y = torch.sigmoid(x["pred"]), x["target"]
    p_t = p * y + (1 - p) * (1 - y)
    bce = F.binary_cross_entropy_with_logits(x["pred"], y, reduction="none")
    return bce * (1 - p_t) ** gamma * (alpha * y + (1 - alpha) * (1 - y))


def _softmax_focal(x, gamma=2.0):
    log_p = F.log_softmax(x["pred"], dim=1).gather(1, x["target"].unsqueeze(1)).squeeze(1)
    return -(1 - log_p.exp()) ** gamma * log_p


def _kl_normal(x):
    mu, logvar = x["mu"], x["logvar"]
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)


# spec (with reduction=none), inputs(generator), reference(inputs): the unreduced losses.
CASES = {
    "ce": ("ce(reduction=none)", _ce_inputs, lambda x: F.cross_entropy(x["pred"], x["target"], reduction="none")),
    "ce_weighted_smoothed": (
        "ce(weight=[1.0, 2.0, 0.5, 3.0], label_smoothing=0.1, reduction=none)",
        _ce_inputs,
        lambda x: F.cross_entropy(x["pred"], x["target"], weight=torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=f64),
                                  label_smoothing=0.1, reduction="none"),
    ),
    "ce_pixels": ("ce(reduction=none)", _ce_pixel_inputs,
                  lambda x: F.cross_entropy(x["pred"], x["target"], reduction="none")),
    "ce_probabilities": (
        "ce(reduction=none)",
        lambda g: {"pred": leaf(8, 4, gen=g), "target": torch.softmax(torch.randn(8, 4, dtype=f64, generator=g), 1)},
        lambda x: F.cross_entropy(x["pred"], x["target"], reduction="none"),
    ),
    "ce_binary": (
        "ce(weight=[1.0, 3.0], reduction=none)",
        lambda g: {"pred": leaf(8, gen=g), "target": labels(2, 8, gen=g)},
        lambda x: F.cross_entropy(_binary_ce_reference(x), x["target"], weight=torch.tensor([1.0, 3.0], dtype=f64),
                                  reduction="none"),
    ),
    "bce": (
        "bce(pos_weight=[1.0, 4.0, 2.5], reduction=none)",
        lambda g: {"pred": leaf(8, 3, gen=g), "target": labels(2, 8, 3, gen=g).to(f64)},
        lambda x: F.binary_cross_entropy_with_logits(x["pred"], x["target"], reduction="none",
                                                     pos_weight=torch.tensor([1.0, 4.0, 2.5], dtype=f64)),
    ),
    "focal_sigmoid": (
        "focal(gamma=2.0, alpha=0.25, reduction=none)",
        lambda g: {"pred": leaf(8, 3, gen=g), "target": labels(2, 8, 3, gen=g).to(f64)},
        _sigmoid_focal,
    ),
    "focal_softmax": (
        "focal(reduction=none)",
        lambda g: {"pred": leaf(8, 4, gen=g), "target": labels(4, 8, gen=g)},
        _softmax_focal,
    ),
    "hinge_binary": (
        "hinge(margin=0.5, squared=true, reduction=none)",
        lambda g: {"pred": leaf(8, gen=g), "target": labels(2, 8, gen=g)},
        lambda x: F.relu(0.5 - (2 * x["target"].to(f64) - 1) * x["pred"]).square(),
    ),
    "hinge_multiclass": (
        "hinge(reduction=none)",
        lambda g: {"pred": leaf(8, 4, gen=g), "target": labels(4, 8, gen=g)},
        lambda x: F.multi_margin_loss(x["pred"], x["target"], reduction="none"),
    ),
    "mse": ("mse(reduction=none)", lambda g: {"pred": leaf(8, 3, gen=g), "target": leaf(8, 3, gen=g)},
            lambda x: F.mse_loss(x["pred"], x["target"], reduction="none")),
    "mae": ("mae(reduction=none)", lambda g: {"pred": leaf(8, 3, gen=g), "target": leaf(8, 3, gen=g)},
            lambda x: F.l1_loss(x["pred"], x["target"], reduction="none")),
    "huber": ("huber(0.5, reduction=none)", lambda g: {"pred": leaf(8, 3, gen=g), "target": leaf(8, 3, gen=g)},
              lambda x: F.huber_loss(x["pred"], x["target"], delta=0.5, reduction="none")),
    "smooth_l1": (
        "smooth_l1(beta=0.5, reduction=none)",
        lambda g: {"pred": leaf(8, 3, gen=g), "target": leaf(8, 3, gen=g)},
        lambda x: F.smooth_l1_loss(x["pred"], x["target"], beta=0.5, reduction="none"),
    ),
    "log_cosh": ("log_cosh(reduction=none)", lambda g: {"pred": leaf(8, 3, gen=g), "target": leaf(8, 3, gen=g)},
                 lambda x: torch.log(torch.cosh(x["pred"] - x["target"]))),
    "quantile": (
        "quantile(q=[0.1, 0.5, 0.9], reduction=none)",
        lambda g: {"pred": leaf(8, 3, gen=g), "target": leaf(8, gen=g)},
        lambda x: torch.maximum(
            torch.tensor([0.1, 0.5, 0.9], dtype=f64) * (x["target"].unsqueeze(1) - x["pred"]),
            (torch.tensor([0.1, 0.5, 0.9], dtype=f64) - 1) * (x["target"].unsqueeze(1) - x["pred"]),
        ),
    ),
    "kl_normal": ("kl_normal(reduction=none)", lambda g: {"mu": leaf(8, 3, gen=g), "logvar": leaf(8, 3, gen=g)},
                  _kl_normal),
    "kl": (
        "kl(p=teacher, q=student, reduction=none)",
        lambda g: {"teacher": leaf(8, 5, gen=g), "student": leaf(8, 5, gen=g)},
        lambda x: F.kl_div(F.log_softmax(x["student"], 1), F.log_softmax(x["teacher"], 1), log_target=True,
                           reduction="none").sum(1),
    ),
    "contrastive": (
        "contrastive(reduction=none)",
        lambda g: {"a": leaf(8, 3, gen=g), "b": leaf(8, 3, gen=g), "same": labels(2, 8, gen=g)},
        _contrastive,
    ),
    "triplet": (
        "triplet(margin=0.5, reduction=none)",
        lambda g: {"anchor": leaf(8, 3, gen=g), "positive": leaf(8, 3, gen=g), "negative": leaf(8, 3, gen=g)},
        lambda x: F.triplet_margin_loss(x["anchor"], x["positive"], x["negative"], margin=0.5, reduction="none"),
    ),
    "soft_bound": ("soft_bound(y <= 0.5, reduction=none)", lambda g: {"y": leaf(8, 3, gen=g)},
                   lambda x: F.relu(x["y"] - 0.5).square()),
}


def _leaves(inputs: dict) -> list[torch.Tensor]:
    return [t for t in inputs.values() if t.requires_grad]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("name", sorted(CASES))
@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=5, deadline=None)
def test_reduction_none_matches_torch(name: str, weighted: bool, seed: int) -> None:
    spec, make_inputs, reference = CASES[name]
    g = torch.Generator().manual_seed(seed)
    inputs = make_inputs(g)
    first = next(iter(inputs.values()))
    weight = torch.rand(first.shape[0], dtype=f64, generator=g) if weighted else None
    if weighted:
        spec = spec.replace("reduction=none", "reduction=none, sample_weight=w")
    ours = lossdsl.compile(spec)(**inputs, **({"w": weight} if weighted else {}))
    expected = reference(inputs)
    if weighted:  # each sample's losses times its weight, as torch's class weights in reduction="none"
        expected = expected * weight.reshape(-1, *[1] * (expected.dim() - 1))
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected)
    upstream = torch.randn(expected.shape, dtype=f64, generator=g)  # a random reducer
    wrt = _leaves(inputs)
    for a, b in zip(torch.autograd.grad((ours * upstream).sum(), wrt), torch.autograd.grad((expected * upstream).sum(), wrt)):
        torch.testing.assert_close(a, b)


def test_reduction_none_keeps_torch_ignore_zeros_and_its_mean_is_ce():
    """Ignored targets are 0, and the kept ones average to ce()'s own mean."""
    x = _ce_inputs(torch.Generator().manual_seed(3))
    losses = lossdsl.compile("ce(reduction=none)")(**x)
    assert losses[[1, 5]].eq(0).all()
    kept = x["target"] != -100
    torch.testing.assert_close(losses[kept].mean(), lossdsl.compile("ce()")(**x))


def test_reduction_none_of_an_empty_batch_is_empty():
    for spec, inputs in [("mse(reduction=none)", {"pred": torch.zeros(0, 3), "target": torch.zeros(0, 3)}),
                         ("ce(reduction=none)", {"pred": torch.zeros(0, 4), "target": torch.zeros(0, dtype=torch.long)})]:
        assert lossdsl.compile(spec)(**inputs).shape == (0, 3)[: inputs["target"].dim()]


def test_reduction_none_counts_balanced_classes_in_training():
    """ce(weight=balanced, reduction=none) weighs each loss as the mean form does, counts included."""
    g = torch.Generator().manual_seed(5)
    x, t = leaf(12, 3, gen=g), labels(3, 12, gen=g)
    none, mean = lossdsl.compile("ce(weight=balanced, reduction=none)"), lossdsl.compile("ce(weight=balanced)")
    losses = none(x, t)
    counts = torch.bincount(t, minlength=3).to(f64)
    weight = counts.sum() / (3 * counts)
    torch.testing.assert_close(losses, F.cross_entropy(x, t, weight=weight, reduction="none"))
    torch.testing.assert_close(losses.sum() / weight[t].sum(), mean(x, t))
    assert torch.equal(none.terms[0].class_counts, mean.terms[0].class_counts)


@pytest.mark.parametrize("spec", [
    "soft_f1(reduction=none)",
    "fairness(dp_gap, group=g, reduction=none)",
    "fairness(group_loss(mse), group=g, reduction=none)",
    "l1(reduction=none)",
    "l2(reduction=none)",
])
def test_batch_level_terms_refuse_reduction_none(spec: str) -> None:
    found = diagnostic(spec)
    assert found.code == "E204"
    assert f"{spec.split('(')[0]}() has no per-sample form" in found.message
    assert "reduction=none is for terms that average over samples" in (found.hint or "")


def test_a_constraint_takes_no_per_sample_term():
    found = diagnostic("let per = mse(reduction=none)\nsubject to per <= 1\nloss = mae()")
    assert found.code == "E302"
    assert "mse() has reduction=none" in found.message


@pytest.mark.parametrize("spec", [
    "ce(reduction=none) + mse(pred=y, target=z, reduction=none)",
    "let per = mse(reduction=none)\nloss = mae() - 2 * per",
])
def test_a_per_sample_loss_adds_to_no_other_loss(spec: str) -> None:
    """[N] and [N, C, H, W] losses would broadcast (or, for N = C, silently misalign)."""
    found = diagnostic(spec)
    assert found.code == "E302"
    assert "has reduction=none" in found.message and "per_sample" in (found.hint or "")


def test_a_per_sample_loss_takes_weights_and_schedules():
    g = torch.Generator().manual_seed(9)
    x, t = leaf(6, 3, gen=g), labels(3, 6, gen=g)
    loss_fn = lossdsl.compile("param lam = 0.5\nloss = lam * warmup(4) * ce(reduction=none) / 2").step(1)
    torch.testing.assert_close(loss_fn(x, t), 0.5 * 0.25 * F.cross_entropy(x, t, reduction="none") / 2)


def test_per_sample_terms_take_reduction_none_and_the_rest_do_not():
    from lossdsl.registry import REGISTRY

    takes = {name for name, t in REGISTRY.items() if "reduction" in t.params.model_fields
             and "none" in t.params.options("reduction")}
    assert takes == {"ce", "bce", "focal", "hinge", "mse", "mae", "huber", "smooth_l1", "log_cosh", "quantile",
                     "kl_normal", "kl", "contrastive", "triplet", "soft_bound",
                     "poisson_nll", "gaussian_nll", "cosine_embedding", "margin_ranking", "js",
                     "dice", "tversky", "jaccard", "generalized_dice", "asl", "token_ce", "linear_ce", "reinforce",
                     "ctc"}


# ---------------------------------------------------------------------------------------------
# LossModule.per_sample
# ---------------------------------------------------------------------------------------------

SPEC = """
param lam = 0.5
let data = ce()
loss = data + lam * mse(pred=y, target=z) + warmup(10) * kl_normal(mu=mu, logvar=lv)
"""


def _spec_inputs(n: int, g: torch.Generator) -> dict:
    return {"pred": leaf(n, 4, gen=g), "target": labels(4, n, gen=g), "y": leaf(n, 3, gen=g), "z": leaf(n, 3, gen=g),
            "mu": leaf(n, 2, gen=g), "lv": leaf(n, 2, gen=g)}


def _hand_written(x: dict, lam: float, step: int) -> torch.Tensor:
    """The same objective per sample, in torch: each term's mean over the sample's own elements."""
    kl = -0.5 * (1 + x["lv"] - x["mu"].square() - x["lv"].exp()).sum(1)
    return (F.cross_entropy(x["pred"], x["target"], reduction="none")
            + lam * F.mse_loss(x["y"], x["z"], reduction="none").mean(1)
            + min(step / 10, 1.0) * kl)


@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), lam=st.floats(0, 3), step=st.integers(0, 20))
@settings(max_examples=25, deadline=None)
def test_per_sample_matches_hand_written_torch_and_averages_to_the_loss(n, seed, lam, step):
    """Mean-reduced terms, samples of equal size, no ignored targets, no sample weights: the loss
    is the mean over samples of each sample's weighted sum of its terms' means, so
    ``per_sample(...).mean()`` is the module's value."""
    g = torch.Generator().manual_seed(seed)
    x = _spec_inputs(n, g)
    loss_fn = lossdsl.compile(SPEC, params={"lam": lam}).step(step)
    per_sample = loss_fn.per_sample(**x)
    expected = _hand_written(x, lam, step)
    assert per_sample.shape == (n,)
    torch.testing.assert_close(per_sample, expected)
    wrt = _leaves(x)
    upstream = torch.randn(n, dtype=f64, generator=g)
    ours = torch.autograd.grad((per_sample * upstream).sum(), wrt, retain_graph=True)
    for a, b in zip(ours, torch.autograd.grad((expected * upstream).sum(), wrt)):
        torch.testing.assert_close(a, b)
    loss = loss_fn.eval()(**x)
    torch.testing.assert_close(per_sample.mean(), loss)
    for a, b in zip(torch.autograd.grad(per_sample.mean(), wrt), torch.autograd.grad(loss, wrt)):
        torch.testing.assert_close(a, b)


def test_per_sample_changes_no_state():
    g = torch.Generator().manual_seed(1)
    x = _spec_inputs(6, g)
    loss_fn = lossdsl.compile("ce(weight=balanced) + warmup(10) * mse(pred=y, target=z)").train()
    loss_fn(**x)
    counts, step = loss_fn.terms[0].class_counts.clone(), int(loss_fn.step_count)
    loss_fn.per_sample(**x)
    assert torch.equal(loss_fn.terms[0].class_counts, counts) and int(loss_fn.step_count) == step
    assert loss_fn.training and loss_fn.terms[0].training
    assert loss_fn(**x).dim() == 0  # the forward reduces as before: per_sample left no mode behind


def test_per_sample_of_pixels_averages_each_sample_over_its_kept_targets():
    """Ignored pixels leave a sample's mean (the identity with the module's mean then fails: ce's
    mean divides by the kept targets of the whole batch); an all-ignored sample is 0."""
    g = torch.Generator().manual_seed(2)
    x = _ce_pixel_inputs(g)
    x["target"][1] = -100
    per_sample = lossdsl.compile("ce()").per_sample(**x)
    losses = F.cross_entropy(x["pred"], x["target"], reduction="none").flatten(1)
    kept = (x["target"] != -100).flatten(1).to(f64)
    expected = losses.sum(1) / kept.sum(1).clamp_min(1)
    torch.testing.assert_close(per_sample, expected)
    assert per_sample[1] == 0


def test_per_sample_with_sample_weights_and_sums():
    """A term's sample weight multiplies its per-sample value (so sum(w * l) / sum(w), the weighted
    mean, is per_sample.sum() / w.sum()); a sum-reduced term gives each sample's sum, so a spec of
    sums is per_sample(...).sum()."""
    g = torch.Generator().manual_seed(4)
    x = _spec_inputs(7, g)
    w = torch.rand(7, dtype=f64, generator=g)
    weighted = lossdsl.compile("mse(pred=y, target=z, sample_weight=w)")
    per_sample = weighted.per_sample(**x, w=w)
    torch.testing.assert_close(per_sample, w * F.mse_loss(x["y"], x["z"], reduction="none").mean(1))
    torch.testing.assert_close(per_sample.sum() / w.sum(), weighted(**x, w=w))
    sums = lossdsl.compile("ce(reduction=sum) + mse(pred=y, target=z, reduction=sum) + sum(abs(y - z))")
    per_sample = sums.per_sample(**x)
    expected = (F.cross_entropy(x["pred"], x["target"], reduction="none")
                + F.mse_loss(x["y"], x["z"], reduction="none").sum(1) + (x["y"] - x["z"]).abs().sum(1))
    torch.testing.assert_close(per_sample, expected)
    torch.testing.assert_close(per_sample.sum(), sums(**x))


def test_per_sample_of_expressions_and_soft_bounds():
    g = torch.Generator().manual_seed(6)
    x = _spec_inputs(5, g)
    loss_fn = lossdsl.compile("mean(abs(y - z)) + 2 * soft_bound(y <= 0.5) - ce(label_smoothing=0.1) / 4")
    expected = ((x["y"] - x["z"]).abs().mean(1) + 2 * F.relu(x["y"] - 0.5).square().mean(1)
                - F.cross_entropy(x["pred"], x["target"], label_smoothing=0.1, reduction="none") / 4)
    torch.testing.assert_close(loss_fn.per_sample(**x), expected)
    torch.testing.assert_close(loss_fn.per_sample(**x).mean(), loss_fn(**x))


@pytest.mark.parametrize("spec, named", [
    ("mse() + 0.1 * fairness(dp_gap, group=g)", "fairness() at <spec>:1:15"),
    ("mse() + soft_f1(pred=p)", "soft_f1() at"),
])
def test_per_sample_of_a_batch_level_term_names_it(spec, named):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(spec).per_sample(pred=torch.randn(4), target=torch.randn(4))
    assert info.value.diagnostics[0].code == "E403"
    assert named in str(info.value) and "no per-sample form" in str(info.value)


def test_per_sample_of_a_constrained_loss_names_the_constraint():
    loss_fn = lossdsl.compile("subject to mae() <= 0.1 as tight\nloss = mse()")
    with pytest.raises(lossdsl.LossSpecError, match="the constraint 'tight'"):
        loss_fn.per_sample(torch.randn(4), torch.randn(4))


def test_per_sample_of_terms_with_different_batches_is_e402():
    with pytest.raises(lossdsl.LossSpecError, match="has 3 samples but mse"):
        lossdsl.compile("mse() + mae(pred=a, target=b)").per_sample(
            torch.randn(4), torch.randn(4), a=torch.randn(3), b=torch.randn(3))


# ---------------------------------------------------------------------------------------------
# float32 accumulation for half-precision inputs
# ---------------------------------------------------------------------------------------------

N = 90_000  # beyond float16's largest value, 65,504: a sum of N ones, or a count of N, is inf there
WIDE = 140_000  # for sums of about N / 2 (probabilities, 0/1 masks)


def _half_cases(g: torch.Generator) -> list[tuple[str, dict]]:
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    w = torch.rand(N, generator=g)
    return [
        ("ce(weight=balanced)", {"pred": r(N, 3), "target": labels(3, N, gen=g)}),
        ("ce()", {"pred": r(N), "target": labels(2, N, gen=g)}),  # binary logits, int64 targets
        ("ce()", {"pred": r(N, 4), "target": labels(4, N, gen=g)}),
        ("ce(weight=[1.0, 2.0, 3.0, 4.0])", {"pred": r(N, 4), "target": labels(4, N, gen=g)}),
        ("ce(label_smoothing=0.1, sample_weight=w)", {"pred": r(N, 4), "target": labels(4, N, gen=g), "w": w}),
        ("ce(ignore_index=2)", {"pred": r(4, 3, 150, 150), "target": labels(3, 4, 150, 150, gen=g)}),  # N pixels
        ("mse(sample_weight=w)", {"pred": r(N), "target": r(N), "w": w}),
        ("mse()", {"pred": r(N), "target": r(N)}),
        ("bce()", {"pred": r(N, 2), "target": labels(2, N, 2, gen=g)}),
        ("bce(sample_weight=w)", {"pred": r(N), "target": labels(2, N, gen=g).float(), "w": w}),
        ("focal(sample_weight=w)", {"pred": r(N), "target": labels(2, N, gen=g).float(), "w": w}),
        ("soft_f1()", {"pred": r(WIDE), "target": labels(2, WIDE, gen=g)}),
        ("dice()", {"pred": r(2, 1, 374, 374), "target": labels(2, 2, 374, 374, gen=g)}),
        ("tversky()", {"pred": r(2, 3, 374, 374), "target": labels(3, 2, 374, 374, gen=g)}),
        ("kl(p=a, q=b, sample_weight=w)", {"a": r(N, 3), "b": r(N, 3), "w": w}),
        ("kl_normal(mu=a, logvar=b, sample_weight=w)", {"a": r(N, 3), "b": r(N, 3), "w": w}),
        ("hinge(sample_weight=w)", {"pred": r(N, 3), "target": labels(3, N, gen=g), "w": w}),
        ("hinge()", {"pred": r(N, 3), "target": labels(3, N, gen=g)}),
        ("quantile(0.3, sample_weight=w)", {"pred": r(N), "target": r(N), "w": w}),
        ("contrastive(sample_weight=w)", {"a": r(N, 3), "b": r(N, 3), "same": labels(2, N, gen=g), "w": w}),
        ("triplet(sample_weight=w)", {"anchor": r(N, 3), "positive": r(N, 3), "negative": r(N, 3), "w": w}),
        ("soft_bound(y <= 0.5, sample_weight=w)", {"y": r(N), "w": w}),
        ("mean(square(y - 0.5))", {"y": r(WIDE)}),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_sums_and_counts_accumulate_in_float32(dtype):
    """Each loss on float16/bfloat16 inputs against the same loss on the same (rounded) values in
    float64. Each element's loss is computed in the inputs' dtype, so it is off by a few units in
    the last place: relative error eps = finfo(dtype).eps each, averaged, and the result rounded
    once more: the value is within 4 eps. The gradients pass through a few roundings per element,
    and a float16 gradient of a mean over N ~ 1e5 samples (~1e-5) lies below the smallest normal
    number (6.1e-5), where the spacing is 2^-24: the gradient is within 16 eps of float64's in
    norm, plus 2 spacings per element. Rounding triplet's distances moves a share ~eps of the
    triplets across the margin, where the hinge's gradient jumps: sqrt(eps) in norm there."""
    eps = torch.finfo(dtype).eps
    failures = []
    for spec, inputs in _half_cases(torch.Generator().manual_seed(0)):
        half = {k: (v.to(dtype).requires_grad_() if v.is_floating_point() and k != "w" else
                    v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
        wide = {k: (v.detach().to(f64).requires_grad_() if v.requires_grad else
                    v.to(f64) if v.is_floating_point() else v) for k, v in half.items()}
        ours, reference = lossdsl.compile(spec)(**half), lossdsl.compile(spec)(**wide)
        assert ours.dtype == dtype, spec
        if not torch.isfinite(ours) or abs(ours.item() - reference.item()) > 4 * eps * abs(reference.item()):
            failures.append(f"{spec}: {ours.item()} vs {reference.item()}")
            continue
        wrt = [k for k, v in half.items() if v.requires_grad]
        grads = torch.autograd.grad(ours, [half[k] for k in wrt])
        expected = torch.autograd.grad(reference, [wide[k] for k in wrt])
        for name, got, want in zip(wrt, grads, expected):
            error = (got.to(f64) - want).norm().item()
            # Subnormal float16 gradients are off by up to 2 spacings 2^-24 each; the hinge of
            # triplet flips a share ~eps of the triplets, which is sqrt(eps) of the gradient's norm.
            bound = (2 * math.sqrt(eps) if spec.startswith("triplet") else 16 * eps) * want.norm().item()
            bound += 2 * 2**-24 * math.sqrt(want.numel())
            if not error <= bound:
                failures.append(f"{spec}: gradient of {name} off by {error:.3g} > {bound:.3g}")
    assert not failures, failures


def test_half_precision_reduction_none_keeps_the_dtype():
    x = torch.randn(N, 3).half()
    t = labels(3, N)
    losses = lossdsl.compile("ce(reduction=none)")(x, t)
    assert losses.dtype == torch.float16
    torch.testing.assert_close(losses.double(), F.cross_entropy(x.double(), t, reduction="none"),
                               rtol=4 * torch.finfo(torch.float16).eps, atol=0.0)


def test_float16_counts_of_balanced_weights_survive_many_batches():
    """The running counts pass 65,536 after a few batches: the weights stay finite and equal float64's."""
    loss_fn, reference = lossdsl.compile("ce(weight=balanced)"), lossdsl.compile("ce(weight=balanced)")
    g = torch.Generator().manual_seed(8)
    for _ in range(4):
        x, t = torch.randn(30_000, 3, generator=g).half(), labels(3, 30_000, gen=g)
        ours, expected = loss_fn(x, t), reference(x.double(), t)
    assert int(loss_fn.terms[0].class_counts.sum()) == 120_000
    assert abs(ours.item() - expected.item()) <= 4 * torch.finfo(torch.float16).eps * expected.item()


# ---------------------------------------------------------------------------------------------
# ce on language-model logits
# ---------------------------------------------------------------------------------------------

def test_language_model_layout_names_the_fix():
    loss_fn = lossdsl.compile("ce()")
    pred, target = torch.randn(2, 5, 7), labels(7, 2, 5)
    with pytest.raises(lossdsl.LossSpecError) as info:
        loss_fn(pred, target)
    message = str(info.value)
    assert info.value.diagnostics[0].code == "E402"
    assert "pred.transpose(1, 2)" in message and "pred.reshape(-1, 7)" in message and "target.reshape(-1)" in message
    # Both fixes it names give torch's loss.
    expected = F.cross_entropy(pred.reshape(-1, 7), target.reshape(-1))
    torch.testing.assert_close(loss_fn(pred.transpose(1, 2), target), expected)
    torch.testing.assert_close(loss_fn(pred.reshape(-1, 7), target.reshape(-1)), expected)


def test_other_shape_errors_do_not_suggest_the_transpose():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("ce()")(torch.randn(2, 5, 7), labels(5, 2, 3))
    assert "transpose" not in str(info.value)


def test_per_sample_of_a_class_weighted_ce_is_each_samples_own_loss():
    """per_sample is the term on each sample alone: F.cross_entropy(weight=w) of a batch of one, where
    the class weight cancels; ce(weight=w, reduction=none) is torch's w[y] * loss (documented)."""
    g = torch.Generator().manual_seed(5)
    pred, target = torch.randn(6, 3, dtype=f64, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = torch.tensor([1.0, 10.0, 100.0], dtype=f64)
    per_sample = lossdsl.compile("ce(weight=[1.0, 10.0, 100.0])").per_sample(pred, target)
    alone = torch.stack([F.cross_entropy(pred[i:i + 1], target[i:i + 1], weight=weight) for i in range(6)])
    torch.testing.assert_close(per_sample, alone)
    unreduced = lossdsl.compile("ce(weight=[1.0, 10.0, 100.0], reduction=none)")(pred, target)
    torch.testing.assert_close(unreduced, F.cross_entropy(pred, target, weight=weight, reduction="none"))
