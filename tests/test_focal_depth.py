"""focal's class reduction against MONAI (issue 13): ``monai.losses.FocalLoss(use_softmax=True)``
averages its one-hot ``[N, C, ...]`` losses over classes too, lossdsl sums over them by default;
``class_reduction=mean`` gives MONAI's number. Values and gradients on random inputs (MONAI's
tests/test_focal_loss.py exercises the same arguments)."""

from __future__ import annotations

import pytest
import torch
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
