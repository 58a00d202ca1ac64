"""Regression terms: ``mse``, ``mae``, ``huber``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..registry import Input, Reduction, Term, TermParams, register


class RegressionParams(TermParams):
    pred: Input = Field("pred", description="the input holding predictions")
    target: Input = Field("target", description="the input holding targets, of pred's shape")
    reduction: Reduction = Field("mean", description="mean or sum over elements")


class HuberParams(RegressionParams):
    positional = ("delta",)
    delta: float = Field(1.0, gt=0, description="where the loss turns from quadratic to linear")


class _Pointwise(Term):
    """A torch functional loss on ``pred`` and ``target`` of one shape."""

    def __init__(self, params: RegressionParams):
        super().__init__()
        self.reduction = params.reduction

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.expect_float(0, pred)
        self.expect_same_shape(1, 0, target, pred)
        if pred.numel() == 0:  # torch's mean of nothing is NaN; an empty batch adds nothing
            return pred.sum()
        return self.compute(pred, target.to(pred.dtype))


@register("mse", RegressionParams, "Mean squared error, as F.mse_loss.")
class MSE(_Pointwise):
    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target, reduction=self.reduction)


@register("mae", RegressionParams, "Mean absolute error, as F.l1_loss.")
class MAE(_Pointwise):
    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred, target, reduction=self.reduction)


@register("huber", HuberParams, "Huber loss, quadratic within delta and linear beyond, as F.huber_loss.")
class Huber(_Pointwise):
    def __init__(self, params: HuberParams):
        super().__init__(params)
        self.delta = params.delta

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(pred, target, reduction=self.reduction, delta=self.delta)
