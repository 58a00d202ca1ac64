"""Regression terms: ``mse``, ``mae``, ``huber``, ``smooth_l1``, ``log_cosh``, ``quantile``,

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.regression``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ...declarations import (
    Input,
    InputOf,
    Layout,
    ReductionParam,
    SampleWeight,
    TermParams,
    same_shape_layouts,
    declare,
)


class RegressionParams(TermParams):
    pred: Input = Field("pred", description="the input holding predictions")
    target: Input = Field("target", description="the input holding targets, of pred's shape")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


class HuberParams(RegressionParams):
    positional = ("delta",)
    delta: float = Field(1.0, gt=0, description="where the loss turns from quadratic to linear")


class SmoothL1Params(RegressionParams):
    positional = ("beta",)
    beta: float = Field(1.0, ge=0, description="where the loss turns from quadratic to linear; 0 gives mae")


def _pointwise_layouts(params: RegressionParams) -> tuple[Layout, ...]:
    return same_shape_layouts("pred", "target")


Quantile = Annotated[float, Field(gt=0, lt=1)]


class QuantileParams(TermParams):
    positional = ("q",)
    pred: Input = Field("pred", description="predictions [N, ...], or [N, ..., Q] with one column per quantile")
    target: Input = Field("target", description="targets [N, ...]")
    q: Quantile | Annotated[tuple[Quantile, ...], Field(min_length=1)] = Field(
        0.5, description="the quantile in (0, 1), or a list of them (one pred column each)"
    )
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


def _quantile_layouts(params: QuantileParams) -> tuple[Layout, ...]:
    """A list of Q quantiles takes one pred column each: pred [..., Q] beside targets [...]."""
    if not isinstance(params.q, tuple):
        return same_shape_layouts("pred", "target")
    columns = len(params.q)
    return ({"pred": ("N", columns), "target": ("N",)}, {"pred": ("N", "C", columns), "target": ("N", "C")})


class PoissonNLLParams(RegressionParams):
    pred: Input = Field("pred", description="log-rates (log_input=true) or rates (log_input=false), of target's shape")
    target: Input = Field("target", description="observed counts, of pred's shape")
    log_input: bool = Field(True, description="pred holds log-rates: the loss is exp(pred) - target * pred; "
                            "false: rates, pred - target * log(pred + eps)")
    full: bool = Field(False, description="add Stirling's approximation of log(target!) where target > 1")
    eps: float = Field(1e-8, gt=0, description="added to pred inside the log when log_input is false")


class GaussianNLLParams(RegressionParams):
    pred: Input = Field("pred", description="predicted means [N, ...]")
    target: Input = Field("target", description="targets, of pred's shape")
    var: InputOf("real", "weight") = Field(
        "var", description="predicted variances: of pred's shape, or with a last dimension of 1 (or none) for "
        "one variance per sample (torch's homoscedastic forms)")
    full: bool = Field(False, description="add the constant log(2 pi) / 2")
    eps: float = Field(1e-6, gt=0, description="variances are clamped to at least eps (the gradient passes through, as torch's)")


def _gaussian_nll_layouts(params: GaussianNLLParams) -> tuple[Layout, ...]:
    return same_shape_layouts("pred", "target", "var") + ({"pred": ("N", "C"), "target": ("N", "C"), "var": ("N", 1)},)


declare(
    "mse",
    RegressionParams,
    "Mean squared error, as F.mse_loss.",
    example="mse(pred=aux_pred, target=aux_target)",
    shapes=_pointwise_layouts,
    implementation="lossdsl.library.regression:MSE",
    per_sample=True,
)


declare(
    "mae",
    RegressionParams,
    "Mean absolute error, as F.l1_loss.",
    example="mae(reduction=sum)",
    shapes=_pointwise_layouts,
    implementation="lossdsl.library.regression:MAE",
    per_sample=True,
)


declare(
    "huber",
    HuberParams,
    "Huber loss, quadratic within delta and linear beyond, as F.huber_loss.",
    example="huber(0.5)",
    shapes=_pointwise_layouts,
    implementation="lossdsl.library.regression:Huber",
    per_sample=True,
)


declare(
    "smooth_l1",
    SmoothL1Params,
    "Smooth L1 loss, as F.smooth_l1_loss.",
    example="smooth_l1(beta=0.5)",
    shapes=_pointwise_layouts,
    implementation="lossdsl.library.regression:SmoothL1",
    per_sample=True,
)


declare(
    "log_cosh",
    RegressionParams,
    "log(cosh(pred - target)): quadratic near zero, linear far away.",
    example="log_cosh()",
    shapes=_pointwise_layouts,
    implementation="lossdsl.library.regression:LogCosh",
    per_sample=True,
)


declare(
    "quantile",
    QuantileParams,
    "Pinball loss max(q r, (q - 1) r) of the residual r = target - pred; several quantiles at once.",
    example="quantile(q=[0.1, 0.5, 0.9])",
    shapes=_quantile_layouts,
    implementation="lossdsl.library.regression:QuantileLoss",
    per_sample=True,
)


declare(
    "poisson_nll",
    PoissonNLLParams,
    "Poisson negative log-likelihood of counts, as F.poisson_nll_loss (log_input, full, eps).",
    example="poisson_nll(log_input=false, full=true)",
    shapes=_pointwise_layouts,
    implementation="lossdsl.library.regression:PoissonNLL",
    per_sample=True,
)


declare(
    "gaussian_nll",
    GaussianNLLParams,
    "Gaussian negative log-likelihood with predicted variances, as F.gaussian_nll_loss (full, eps).",
    example="gaussian_nll(var=var, full=true)",
    shapes=_gaussian_nll_layouts,
    implementation="lossdsl.library.regression:GaussianNLL",
    per_sample=True,
)
