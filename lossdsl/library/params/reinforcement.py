"""Policy-gradient objectives from log-probabilities: REINFORCE with a baseline and actor-critic.

Their parameters and declarations, without torch: the checks read these. The modules that compute
the terms are in ``lossdsl.library.reinforcement``, imported on first use (``TermDef.module``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, NonNegativeFloat, model_validator

from ...declarations import (
    INPUT,
    MAX_LOSS_WEIGHT,
    Fit,
    InputOf,
    Kinds,
    ReductionParam,
    SampleWeight,
    TermParams,
    declare,
)


def _optional_input(kinds: tuple[str, ...], description: str):
    return Annotated[str | None, INPUT, Kinds(kinds), Field(description=description)]


class ReinforceParams(TermParams):
    log_prob: InputOf("real", "logits") = Field(
        "log_prob", description="the log-probability of each taken action under the policy [N] (differentiable)")
    returns: InputOf("weight", "real") = Field("returns", description="the return that followed each action [N]")
    baseline: _optional_input(
        ("weight", "real"), "the input holding a baseline subtracted from the returns [N] (a critic's value, say); "
        "treated as a constant") = None
    batch_baseline: bool = Field(False, description="subtract the batch's mean return instead (no baseline input)")
    reduction: ReductionParam = "mean"
    sample_weight: SampleWeight = None

    @model_validator(mode="after")
    def _one_baseline(self) -> ReinforceParams:
        if self.baseline is not None and self.batch_baseline:
            raise ValueError("give either baseline=NAME or batch_baseline=true, not both")
        return self


class ActorCriticParams(TermParams):
    log_prob: InputOf("real", "logits") = Field(
        "log_prob", description="the log-probability of each taken action under the policy [N] (differentiable)")
    value: InputOf("real") = Field("value", description="the critic's value estimate of each state [N] (or [N, 1])")
    returns: InputOf("weight", "real") = Field("returns", description="the return (or TD(lambda) target) of each state [N]")
    advantages: _optional_input(
        ("weight", "real"), "the input holding precomputed advantages [N] (GAE, say), treated as constants; "
        "default: returns - value, value detached") = None
    entropy: _optional_input(("real",), "the input holding the policy's entropy at each state [N]") = None
    logits: _optional_input(
        ("logits",), "the input holding the action logits [N, A], whose softmax's entropy is used (no entropy input)") = None
    value_coef: NonNegativeFloat = Field(0.5, le=MAX_LOSS_WEIGHT, description="weight of the value loss mse(value, returns)")
    entropy_coef: NonNegativeFloat = Field(
        0.01, le=MAX_LOSS_WEIGHT, description="weight of the entropy bonus (the loss adds -entropy_coef * mean entropy)")

    @model_validator(mode="after")
    def _one_entropy(self) -> ActorCriticParams:
        if self.entropy is not None and self.logits is not None:
            raise ValueError("give either entropy=NAME or logits=NAME, not both")
        return self


def _actor_critic_layouts(params: ActorCriticParams) -> tuple[dict, ...]:
    return ({"logits": Fit(("N", "C"), ("logits",))} if params.logits is not None else {},)


declare(
    "reinforce",
    ReinforceParams,
    "REINFORCE with a baseline: -(returns - baseline) * log_prob, the advantage a constant.",
    example="reinforce(log_prob=lp, returns=g, batch_baseline=true)",
    implementation="lossdsl.library.reinforcement:Reinforce",
    per_sample=True,
)


declare(
    "actor_critic",
    ActorCriticParams,
    "Actor-critic (A2C) objective: policy gradient + value_coef * value MSE - entropy_coef * entropy.",
    example="actor_critic(log_prob=lp, value=v, returns=g, logits=z)",
    shapes=_actor_critic_layouts,
    implementation="lossdsl.library.reinforcement:ActorCritic",
)
