"""Gaussian MLP policy, functional log-probs, linear baseline and GAE."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mamlkit.rl.advantages import (
    baseline_features,
    discounted_returns,
    fit_linear_baseline,
    gae,
    normalize_per_task,
)
from mamlkit.rl.policy import (
    GaussianMLPPolicy,
    batched_policy_forward,
    check_policy_spaces,
    expand_params,
    gaussian_kl,
    log_prob,
    policy_forward,
    policy_params,
)


def test_policy_architecture_is_the_papers() -> None:
    policy = GaussianMLPPolicy(2, 2)
    widths = [m.out_features for m in policy.mean if isinstance(m, torch.nn.Linear)]
    assert widths == [100, 100, 2]
    assert any(isinstance(m, torch.nn.ReLU) for m in policy.mean)
    mean, log_std = policy(torch.zeros(5, 2))
    assert mean.shape == log_std.shape == (5, 2)
    assert torch.all(log_std == 0.0)  # init std 1


def test_functional_log_prob_matches_torch_normal() -> None:
    policy = GaussianMLPPolicy(3, 2, (8, 8)).double()
    params = {n: p + 0.1 for n, p in policy_params(policy).items()}
    obs, actions = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    mean, log_std = policy_forward(policy, params, obs)
    expected = Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    assert torch.allclose(log_prob(policy, params, obs, actions), expected)
    # the module's own parameters are untouched by the functional call
    own_mean, _ = policy(obs)
    assert not torch.allclose(own_mean, mean)


def test_gaussian_kl_matches_torch() -> None:
    m1, m2 = torch.randn(4, 3), torch.randn(4, 3)
    s1, s2 = torch.randn(4, 3) * 0.3, torch.randn(4, 3) * 0.3
    expected = kl_divergence(Normal(m1, s1.exp()), Normal(m2, s2.exp())).sum(-1)
    assert torch.allclose(gaussian_kl(m1, s1, m2, s2), expected, atol=1e-6)


def test_batched_forward_uses_each_tasks_parameters() -> None:
    policy = GaussianMLPPolicy(2, 2, (8, 8))
    params = expand_params(policy_params(policy), 3)
    params = {n: p + torch.randn_like(p) * 0.1 for n, p in params.items()}
    obs = torch.randn(3, 5, 2)
    mean, _ = batched_policy_forward(policy, params, obs)
    for t in range(3):
        one, _ = policy_forward(policy, {n: p[t] for n, p in params.items()}, obs[t])
        assert torch.allclose(mean[t], one, atol=1e-6)


def test_policy_action_space_mismatch_is_reported() -> None:
    obs_space = gym.spaces.Box(-1, 1, shape=(2,))
    act_space = gym.spaces.Box(-1, 1, shape=(2,))
    with pytest.raises(ValueError, match=r"action space has shape \(2,\).*action_dim=2"):
        check_policy_spaces(GaussianMLPPolicy(2, 3), obs_space, act_space)
    with pytest.raises(ValueError, match="observation_dim=2"):
        check_policy_spaces(GaussianMLPPolicy(5, 2), obs_space, act_space)
    with pytest.raises(ValueError, match=r"must return \(action_mean, log_std\)"):
        check_policy_spaces(torch.nn.Linear(2, 2), obs_space, act_space)
    check_policy_spaces(GaussianMLPPolicy(2, 2), obs_space, act_space)


def test_linear_baseline_is_exact_on_a_linear_target() -> None:
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 4, 10, 3, generator=gen, dtype=torch.float64)
    masks = torch.ones(2, 4, 10, dtype=torch.float64)
    masks[0, 1, 6:] = 0.0
    feats = baseline_features(obs, masks)
    assert feats.shape[-1] == 2 * 3 + 4
    true_coeffs = torch.randn(2, feats.shape[-1], generator=gen, dtype=torch.float64)
    targets = torch.einsum("tnhf,tf->tnh", feats, true_coeffs)
    coeffs = fit_linear_baseline(feats, targets, masks, reg_coeff=1e-12)
    fitted = torch.einsum("tnhf,tf->tnh", feats, coeffs)
    assert torch.allclose(fitted * masks, targets * masks, atol=1e-8)


def test_returns_and_gae_respect_masks() -> None:
    rewards = torch.tensor([[[1.0, 2.0, 3.0, 9.0]]])
    masks = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])  # episode ended after 3 steps
    returns = discounted_returns(rewards, masks, gamma=0.5)
    assert torch.allclose(returns, torch.tensor([[[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0]]]))
    values = torch.tensor([[[0.5, 1.0, 0.2, 7.0]]]) * masks
    assert torch.allclose(gae(rewards, values, masks, 0.5, 1.0), (returns - values) * masks)
    # lambda = 0: one-step TD errors, the last step bootstraps from 0
    td = gae(rewards, values, masks, 0.5, 0.0)
    assert torch.allclose(td[0, 0, :3], torch.tensor([1 + 0.5 - 0.5, 2 + 0.1 - 1.0, 3 - 0.2]))


def test_normalize_per_task() -> None:
    adv = torch.randn(3, 4, 5) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1) + 5.0
    masks = torch.ones(3, 4, 5)
    out = normalize_per_task(adv, masks)
    assert torch.allclose(out.mean((1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std((1, 2), unbiased=False), torch.ones(3), atol=1e-3)
    assert np.isfinite(out.numpy()).all()
