"""Policy-gradient objectives from log-probabilities: REINFORCE with a baseline and actor-critic."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from .. import parity
from ..registry import Term, implements
from .params.reinforcement import ActorCriticParams, ReinforceParams


# -- reinforce -------------------------------------------------------------------------------------


def _reinforce_reference(batch_baseline: bool = False):
    """-(returns - b) * log_prob averaged, b detached: the closed form in plain torch."""

    def reference(log_prob: torch.Tensor, returns: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if batch_baseline:
            b = returns.mean()
        advantage = returns if b is None else returns - b
        return (-advantage.detach() * log_prob).mean()

    return reference


def _log_probs(n: int, actions: int) -> parity.Maker:
    """log-softmax of random logits at random actions: log-probabilities, all negative."""

    def make(g: torch.Generator) -> torch.Tensor:
        logits = torch.randn(n, actions, generator=g)
        taken = torch.randint(0, actions, (n,), generator=g)
        return logits.log_softmax(dim=1)[torch.arange(n), taken]

    return make


def _reinforce_cases(s: parity.Sizes) -> list[parity.Case]:
    n, a = s.n, s.classes
    plain = parity.inputs(log_prob=_log_probs(n, a), returns=parity.randn(n))
    with_baseline = parity.inputs(log_prob=_log_probs(n, a), returns=parity.randn(n), b=parity.randn(n))
    return [
        parity.Case("reinforce()", parity.shape(n), plain, _reinforce_reference(), grad=("log_prob",)),
        parity.Case("reinforce(batch_baseline=true)", parity.shape(n), plain, _reinforce_reference(batch_baseline=True),
                    grad=("log_prob",), variant="batch baseline"),
        parity.Case("reinforce(baseline=b)", parity.shape(n), with_baseline, _reinforce_reference(),
                    grad=("log_prob",), variant="baseline"),
    ]


@implements("reinforce", cases=_reinforce_cases)
class Reinforce(Term):
    """Williams' REINFORCE: the mean of ``-(returns - baseline) * log_prob``, whose gradient is the
    policy gradient ``-E[(G - b) * grad log pi(a|s)]``.

    - ``log_prob`` is the log-probability of the action taken (``dist.log_prob(action)``, or
      ``logits.log_softmax(-1).gather(-1, action)``), ``returns`` the return that followed it; both
      of one shape, ``[N]`` (or ``[N, T]`` per step). Gradients flow into ``log_prob`` only: the
      advantage ``returns - baseline`` is detached, so a baseline from a critic gets no gradient
      here (train it with ``mse(value, returns)``, or use ``actor_critic``).
    - ``baseline=NAME``: an input of the same shape; ``batch_baseline=true``: the batch's mean
      return (one sample is then its own baseline, and its loss is 0); neither: no baseline.
    - ``reduction=none`` gives ``-(returns - baseline) * log_prob`` per sample; ``sample_weight``
      weighs samples as everywhere (importance weights, say).
    """

    per_sample = True

    def __init__(self, params: ReinforceParams):
        super().__init__()
        self.batch_baseline = params.batch_baseline
        self.reduction = params.reduction
        self.has_baseline = params.baseline is not None

    def forward(self, log_prob: torch.Tensor, returns: torch.Tensor, *rest: torch.Tensor | None,
                parts: bool = False) -> torch.Tensor:
        baseline = rest[0] if self.has_baseline else None
        sample_weight = rest[-1] if len(rest) > self.has_baseline else None
        self.expect_float(0, log_prob)
        self.expect_float(1, returns)
        n = self.batch_size(0, log_prob, "[N]")
        self.expect_same_shape(1, 0, returns, log_prob)
        advantage = returns
        if baseline is not None:
            self.expect_float(2, baseline)
            self.expect_same_shape(2, 0, baseline, log_prob)
            advantage = returns - baseline
        elif self.batch_baseline:
            advantage = returns - returns.mean()
        if sample_weight is not None:
            sample_weight = self.expect_sample_weight(2 + self.has_baseline, sample_weight, n, log_prob.dtype)
        return self.reduce(-advantage.detach().to(log_prob.dtype) * log_prob, sample_weight, parts)


# -- actor_critic ----------------------------------------------------------------------------------


def _actor_critic_reference(value_coef: float = 0.5, entropy_coef: float = 0.01, from_logits: bool = False):
    """stable-baselines3's A2C.train (stable_baselines3/a2c/a2c.py) in plain torch: policy_loss +
    ent_coef * entropy_loss + vf_coef * value_loss, with advantages = returns - value (detached)."""

    def reference(log_prob: torch.Tensor, value: torch.Tensor, returns: torch.Tensor,
                  logits: torch.Tensor | None = None) -> torch.Tensor:
        advantages = (returns - value).detach()
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(returns, value)
        if from_logits:
            entropy = torch.distributions.Categorical(logits=logits).entropy()
            entropy_loss = -entropy.mean()
        else:
            entropy_loss = -(-log_prob).mean()  # SB3's approximation when the distribution has no entropy
        return policy_loss + entropy_coef * entropy_loss + value_coef * value_loss

    return reference


def _actor_critic_cases(s: parity.Sizes) -> list[parity.Case]:
    n, a = s.n, s.classes
    make = parity.inputs(log_prob=_log_probs(n, a), value=parity.randn(n), returns=parity.randn(n))
    with_logits = parity.inputs(log_prob=_log_probs(n, a), value=parity.randn(n), returns=parity.randn(n),
                                logits=parity.randn(n, a))
    return [
        parity.Case("actor_critic()", parity.shape(n), make, _actor_critic_reference(), grad=("log_prob", "value"),
                    note="stable-baselines3 A2C's loss in plain torch"),
        parity.Case("actor_critic(logits=logits, value_coef=0.25, entropy_coef=0.1)", parity.shape(n, a), with_logits,
                    _actor_critic_reference(0.25, 0.1, from_logits=True), grad=("log_prob", "value", "logits"),
                    note="stable-baselines3 A2C's loss in plain torch", variant="entropy of logits"),
    ]


@implements("actor_critic", cases=_actor_critic_cases)
class ActorCritic(Term):
    """``policy + value_coef * value_loss + entropy_coef * entropy_loss``, as stable-baselines3's A2C:

    - ``policy = -mean(advantages * log_prob)``, with ``advantages = returns - value`` computed
      from a detached ``value`` (the critic learns from the value loss only, never through the
      policy term), or the ``advantages`` input (GAE, say), detached too.
    - ``value_loss = mean((value - returns)^2)`` (``F.mse_loss``); ``value`` may be ``[N, 1]``.
    - ``entropy_loss = -mean(entropy)``: the ``entropy`` input, else the entropy of
      ``softmax(logits)`` from the ``logits`` input ``[N, A]``, else ``-mean(-log_prob)``, the
      sample estimate stable-baselines3 falls back to for distributions without a closed form.
    - Defaults ``value_coef=0.5`` (stable-baselines3's ``vf_coef``) and ``entropy_coef=0.01`` (the
      A3C paper's and OpenAI baselines' ``ent_coef``; stable-baselines3's A2C and PPO default to
      ``ent_coef=0.0``: write ``entropy_coef=0`` for its number).
    - All inputs are ``[N]`` (one per state-action); the three parts are means over N. No
      ``sample_weight``: the value is over the whole batch, as stable-baselines3's.
    - ``lossdsl verify``'s gradcheck reports a mismatch with respect to ``value``: the detached
      advantage is a stop-gradient, which finite differences cannot see (by design, as in A2C).
    """

    def __init__(self, params: ActorCriticParams):
        super().__init__()
        self.value_coef, self.entropy_coef = params.value_coef, params.entropy_coef
        self.has_advantages = params.advantages is not None
        self.entropy_from = "entropy" if params.entropy is not None else "logits" if params.logits is not None else None

    def forward(self, log_prob: torch.Tensor, value: torch.Tensor, returns: torch.Tensor,
                *rest: torch.Tensor) -> torch.Tensor:
        for position, tensor in enumerate((log_prob, value, returns, *rest)):
            self.expect_float(position, tensor)
        n = self.batch_size(0, log_prob, "[N]")
        if log_prob.shape != (n,):
            self.fail(0, f"expected one log-probability per sample [N], got shape {tuple(log_prob.shape)}")
        if value.shape == (n, 1):  # a critic head's output, flattened as stable-baselines3 does
            value = value[:, 0]
        self.expect_same_shape(1, 0, value, log_prob)
        self.expect_same_shape(2, 0, returns, log_prob)
        advantages = (returns - value).detach()
        if self.has_advantages:
            advantages = rest[0].detach()
            self.expect_same_shape(3, 0, advantages, log_prob)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(value, returns)
        position = 3 + self.has_advantages
        if self.entropy_from == "entropy":
            entropy = rest[-1]
            self.expect_same_shape(position, 0, entropy, log_prob)
        elif self.entropy_from == "logits":
            logits = rest[-1]
            if logits.dim() != 2 or logits.shape[0] != n:
                self.fail(position, f"expected action logits [N, A] with N = {n}, got shape {tuple(logits.shape)}")
            log_p = logits.log_softmax(dim=1)
            entropy = -(log_p.exp() * log_p).sum(dim=1)
        else:
            entropy = -log_prob
        return policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy.mean()
