"""Reinforcement-learning terms against their closed forms, values and gradients.

``reinforce``: L = mean(-(G - b) * log_prob), so dL/dlog_prob_i = -(G_i - b_i) / N and nothing
reaches b. ``actor_critic``: stable-baselines3's A2C loss (stable_baselines3/a2c/a2c.py, A2C.train):
L = -mean(A * log_prob) + vf * mean((v - G)^2) - ent * mean(H), A = G - v detached, so
dL/dv_i = 2 vf (v_i - G_i) / N (none from the policy term) and, for H the entropy of softmax(z),
dL/dz_i = ent / N * p_i * (log p_i + H_i).
"""

from __future__ import annotations

import pytest
import torch

import lossdsl


def _batch(n: int = 6, actions: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, actions, generator=g)
    log_prob = logits.log_softmax(1)[torch.arange(n), torch.randint(0, actions, (n,), generator=g)]
    return (log_prob.clone().requires_grad_(), torch.randn(n, generator=g), torch.randn(n, generator=g).requires_grad_(),
            logits.requires_grad_())


# -- reinforce ------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["none", "input", "batch"])
def test_reinforce_is_minus_advantage_times_log_prob_with_its_closed_form_gradient(baseline):
    log_prob, returns, b, _ = _batch()
    n = len(returns)
    spec, inputs = "reinforce()", {"log_prob": log_prob, "returns": returns}
    if baseline == "input":
        spec, inputs = "reinforce(baseline=b)", {**inputs, "b": b}
        advantage = returns - b.detach()
    elif baseline == "batch":
        spec, advantage = "reinforce(batch_baseline=true)", returns - returns.mean()
    else:
        advantage = returns
    loss = lossdsl.compile(spec)(**inputs)
    torch.testing.assert_close(loss, -(advantage * log_prob.detach()).sum() / n)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, -advantage / n)
    assert b.grad is None  # the baseline is a constant here


def test_reinforce_none_sum_and_sample_weight():
    log_prob, returns, _, _ = _batch(seed=1)
    w = torch.rand(6) + 0.5
    each = -returns * log_prob.detach()
    torch.testing.assert_close(lossdsl.compile("reinforce(reduction=none)")(log_prob=log_prob, returns=returns), each)
    torch.testing.assert_close(lossdsl.compile("reinforce(reduction=sum)")(log_prob=log_prob, returns=returns), each.sum())
    weighted = lossdsl.compile("reinforce(sample_weight=w)")(log_prob=log_prob, returns=returns, w=w)
    torch.testing.assert_close(weighted, (w * each).sum() / w.sum())


def test_reinforce_refuses_two_baselines_at_check_time():
    with pytest.raises(lossdsl.LossSpecError, match="either baseline=NAME or batch_baseline=true"):
        lossdsl.compile("reinforce(baseline=b, batch_baseline=true)")


def test_reinforce_shapes_that_differ_are_e402_naming_the_input():
    with pytest.raises(lossdsl.LossSpecError, match="input 'returns' of reinforce.*differs from log_prob") as caught:
        lossdsl.compile("reinforce()")(log_prob=torch.randn(4), returns=torch.randn(5))
    assert caught.value.diagnostics[0].code == "E402"


# -- actor_critic ---------------------------------------------------------------------------------


def test_actor_critic_defaults_are_a2c_with_its_closed_form_gradients():
    log_prob, returns, value, _ = _batch(seed=2)
    n = len(returns)
    loss = lossdsl.compile("actor_critic()")(log_prob=log_prob, value=value, returns=returns)
    lp, v = log_prob.detach(), value.detach()
    advantages = returns - v
    # policy + 0.5 * value MSE + 0.01 * (-entropy), entropy estimated as -log_prob (SB3's fallback)
    expected = -(advantages * lp).mean() + 0.5 * ((v - returns) ** 2).mean() + 0.01 * lp.mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, (-advantages + 0.01) / n)
    torch.testing.assert_close(value.grad, 0.5 * 2 * (v - returns) / n)


def test_actor_critic_entropy_of_the_logits():
    log_prob, returns, value, logits = _batch(seed=3)
    n = len(returns)
    loss = lossdsl.compile("actor_critic(logits=z, value_coef=0.25, entropy_coef=0.1)")(
        log_prob=log_prob, value=value, returns=returns, z=logits)
    p = logits.detach().softmax(1)
    entropy = -(p * p.log()).sum(1)
    lp, v = log_prob.detach(), value.detach()
    expected = -((returns - v) * lp).mean() + 0.25 * ((v - returns) ** 2).mean() - 0.1 * entropy.mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(logits.grad, 0.1 / n * p * (p.log() + entropy[:, None]))
    torch.testing.assert_close(log_prob.grad, -(returns - v) / n)


def test_actor_critic_entropy_input_and_advantages_input():
    log_prob, returns, value, _ = _batch(seed=4)
    entropy = torch.rand(6, requires_grad=True)
    advantages = torch.randn(6)
    loss = lossdsl.compile("actor_critic(advantages=adv, entropy=h)")(
        log_prob=log_prob, value=value, returns=returns, adv=advantages, h=entropy)
    v = value.detach()
    expected = -(advantages * log_prob.detach()).mean() + 0.5 * ((v - returns) ** 2).mean() - 0.01 * entropy.detach().mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(entropy.grad, torch.full((6,), -0.01 / 6))
    torch.testing.assert_close(log_prob.grad, -advantages / 6)


def test_the_policy_gradient_does_not_reach_the_value_through_the_advantage():
    log_prob, returns, value, _ = _batch(seed=5)
    loss = lossdsl.compile("actor_critic(value_coef=0, entropy_coef=0)")(log_prob=log_prob, value=value, returns=returns)
    loss.backward()
    assert torch.equal(value.grad, torch.zeros(6))  # the policy term alone: value is a constant in it
    assert log_prob.grad.abs().sum() > 0


def test_actor_critic_takes_a_critic_head_of_shape_n_by_1():
    log_prob, returns, value, _ = _batch(seed=6)
    spec = lossdsl.compile("actor_critic()")
    torch.testing.assert_close(spec(log_prob=log_prob, value=value[:, None], returns=returns),
                               spec(log_prob=log_prob, value=value, returns=returns))


@pytest.mark.parametrize(("spec", "inputs", "message"), [
    ("actor_critic()", {"value": torch.randn(5)}, "input 'value' of actor_critic.*differs from log_prob"),
    ("actor_critic(logits=z)", {"z": torch.randn(6)}, "input 'z' of actor_critic.*action logits \\[N, A\\]"),
    ("actor_critic()", {"log_prob": torch.randn(6, 2)}, "input 'log_prob'.*one log-probability per sample"),
])
def test_actor_critic_bad_inputs_are_e402(spec, inputs, message):
    given = {"log_prob": torch.randn(6), "value": torch.randn(6), "returns": torch.randn(6), **inputs}
    with pytest.raises(lossdsl.LossSpecError, match=message) as caught:
        lossdsl.compile(spec)(**given)
    assert caught.value.diagnostics[0].code == "E402"


def test_actor_critic_refuses_two_entropies_at_check_time():
    with pytest.raises(lossdsl.LossSpecError, match="either entropy=NAME or logits=NAME"):
        lossdsl.compile("actor_critic(entropy=h, logits=z)")


@pytest.mark.parametrize("spec", ["reinforce(batch_baseline=true)", "actor_critic(logits=z)"])
def test_rl_terms_trace_fullgraph_and_match_eager(spec):
    log_prob, returns, value, logits = _batch(seed=7)
    inputs = {"log_prob": log_prob, "returns": returns}
    if spec.startswith("actor"):
        inputs |= {"value": value, "z": logits}
    loss_fn = lossdsl.compile(spec)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(**inputs), loss_fn(**inputs))


def test_reinforce_per_sample_and_with_a_baseline_input_is_each_samples_loss():
    log_prob, returns, b, _ = _batch(seed=8)
    per_sample = lossdsl.compile("reinforce(baseline=b)").per_sample(log_prob=log_prob, returns=returns, b=b)
    torch.testing.assert_close(per_sample, -(returns - b.detach()) * log_prob.detach())
