"""Linear feature baseline and generalized advantage estimation for policy gradients.

The baseline is rllab's (used by MAML's released code, Finn et al. 2017): a ridge regression of
the discounted return on ``[obs, obs^2, t, t^2, t^3, 1]`` (observations clipped to ``[-10, 10]``,
``t = step / 100``), fitted per task on that task's own trajectories. Advantages are GAE
(Schulman et al. 2016); ``lambda = 1`` gives return minus baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamlkit.rl.episodes import Episodes


def discounted_returns(rewards: Tensor, masks: Tensor, gamma: float) -> Tensor:
    """``sum_k gamma^k r_{h+k}`` over the remaining valid steps, ``[..., horizon]``."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for h in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., h] + gamma * running) * masks[..., h]
        out[..., h] = running
    return out


def baseline_features(observations: Tensor, masks: Tensor) -> Tensor:
    """rllab's linear-baseline features ``[obs, obs^2, t, t^2, t^3, 1]``, zero where masked."""
    obs = observations.clamp(-10.0, 10.0)
    horizon = observations.shape[-2]
    steps = torch.arange(horizon, dtype=obs.dtype, device=obs.device) / 100.0
    steps = steps.expand(*observations.shape[:-1]).unsqueeze(-1)
    ones = torch.ones_like(steps)
    feats = torch.cat([obs, obs.pow(2), steps, steps.pow(2), steps.pow(3), ones], dim=-1)
    return feats * masks.unsqueeze(-1)


def fit_linear_baseline(
    features: Tensor, targets: Tensor, masks: Tensor, reg_coeff: float = 1e-5
) -> Tensor:
    """Per-task ridge regression coefficients ``[tasks, features]``.

    ``features`` is ``[tasks, trajectories, horizon, F]``, ``targets`` and ``masks``
    ``[tasks, trajectories, horizon]``. Solves ``(X^T X + reg I) w = X^T y`` over the task's
    valid steps; like rllab, retries with ten times the ridge term if the solve is not finite.
    """
    tasks, feature_dim = features.shape[0], features.shape[-1]
    x = (features * masks.unsqueeze(-1)).reshape(tasks, -1, feature_dim)
    y = (targets * masks).reshape(tasks, -1, 1)
    xtx = x.transpose(1, 2) @ x
    xty = x.transpose(1, 2) @ y
    eye = torch.eye(feature_dim, dtype=x.dtype, device=x.device)
    reg = reg_coeff
    for _ in range(5):
        coeffs = torch.linalg.solve(xtx + reg * eye, xty)
        if torch.isfinite(coeffs).all():
            return coeffs.squeeze(-1)
        reg *= 10.0
    raise FloatingPointError(
        "linear baseline fit is not finite even with a ridge term of "
        f"{reg:g}; check the observations for inf/nan values"
    )


def linear_baseline_values(episodes: Episodes, gamma: float, reg_coeff: float = 1e-5) -> Tensor:
    """Baseline value of every step, ``[tasks, trajectories, horizon]``, fitted per task."""
    feats = baseline_features(episodes.observations, episodes.masks)
    returns = discounted_returns(episodes.rewards, episodes.masks, gamma)
    coeffs = fit_linear_baseline(feats, returns, episodes.masks, reg_coeff)
    values = torch.einsum("tnhf,tf->tnh", feats, coeffs)
    return values * episodes.masks


def gae(rewards: Tensor, values: Tensor, masks: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimates; steps after the episode ended bootstrap from 0."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    horizon = rewards.shape[-1]
    for h in range(horizon - 1, -1, -1):
        next_value = values[..., h + 1] if h + 1 < horizon else torch.zeros_like(running)
        delta = rewards[..., h] + gamma * next_value - values[..., h]
        running = (delta + gamma * lam * running) * masks[..., h]
        out[..., h] = running
    return out


def normalize_per_task(advantages: Tensor, masks: Tensor, eps: float = 1e-8) -> Tensor:
    """Advantages shifted and scaled to mean 0, std 1 over each task's valid steps."""
    dims = tuple(range(1, advantages.ndim))
    count = masks.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (advantages * masks).sum(dims, keepdim=True) / count
    var = ((advantages - mean).pow(2) * masks).sum(dims, keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + eps) * masks


def compute_advantages(
    episodes: Episodes, gamma: float = 0.99, gae_lambda: float = 1.0, normalize: bool = True
) -> Tensor:
    """Per-step advantages ``[tasks, trajectories, horizon]`` with the per-task linear baseline."""
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= gae_lambda <= 1.0:
        raise ValueError(f"gamma and gae_lambda must be in [0, 1], got {gamma}, {gae_lambda}")
    values = linear_baseline_values(episodes, gamma)
    adv = gae(episodes.rewards, values, episodes.masks, gamma, gae_lambda)
    return normalize_per_task(adv, episodes.masks) if normalize else adv
