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
