"""Divergences: ``kl_normal`` (the VAE term), ``kl`` and ``js`` between categorical distributions.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.divergence``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from pydantic import Field

from ...declarations import InputOf, ReductionParam, SampleWeight, TermParams, declare


class KLNormalParams(TermParams):
    mu: InputOf("real", "embedding") = Field("mu", description="the input holding posterior means [N, D] ([N]: D = 1)")
    logvar: InputOf("real", "embedding") = Field("logvar", description="the input holding posterior log-variances, of mu's shape")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


class KLParams(TermParams):
    p: InputOf("logits") = Field(description="logits of P, the reference distribution [N, C] (e.g. a teacher)")
    q: InputOf("logits") = Field(description="logits of Q, the approximating distribution [N, C] (e.g. the student)")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


class JSParams(TermParams):
    pred: InputOf("logits", "probs") = Field("pred", description="logits [N, C, ...], made a distribution over C by a "
                                             "softmax; with softmax=false, that distribution itself")
    target: InputOf("probs") = Field("target", description="the target distribution over C, of pred's shape")
    softmax: bool = Field(True, description="apply a softmax over dim 1 to pred; false: pred holds probabilities "
                          "(kornia's js_div_loss_2d takes probabilities)")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None


declare(
    "kl_normal",
    KLNormalParams,
    "KL divergence of N(mu, exp(logvar)) from N(0, I), summed over latent dimensions.",
    example="kl_normal(mu=mu, logvar=logvar)",
    implementation="lossdsl.library.divergence:KLNormal",
    per_sample=True,
)


declare(
    "kl",
    KLParams,
    "KL(P || Q) between categorical distributions given as logits, averaged over the batch.",
    example="kl(p=teacher, q=student)",
    shapes={"p": ("N", "C"), "q": ("N", "C")},
    implementation="lossdsl.library.divergence:KL",
    per_sample=True,
)


declare(
    "js",
    JSParams,
    "Jensen-Shannon divergence between softmax(pred) and a target distribution, kornia's js_div_loss_2d formula.",
    example="js(pred=student, target=teacher_probs)",
    shapes={"pred": ("N", "C"), "target": ("N", "C")},
    implementation="lossdsl.library.divergence:JS",
    per_sample=True,
)
