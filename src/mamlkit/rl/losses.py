"""Per-task policy-gradient objectives of MAML-RL (Finn et al. 2017, Sec. 3.2 and 5.3).

Every function takes per-task parameters ``[tasks, ...]`` and returns one value per task
(``[tasks]``), averaging over that task's valid steps, so that summing over tasks and
differentiating gives each task's own gradient in the matching slice of the parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from mamlkit.rl.episodes import Episodes
from mamlkit.rl.policy import Params, batched_policy_forward, gaussian_kl, gaussian_log_prob


def masked_task_mean(values: Tensor, masks: Tensor) -> Tensor:
    """Mean of ``values`` over each task's valid ``[trajectory, step]`` entries, ``[tasks]``."""
    return (values * masks).sum((1, 2)) / masks.sum((1, 2)).clamp_min(1.0)


def episode_distribution(
    policy: nn.Module, params: Params, episodes: Episodes
) -> tuple[Tensor, Tensor]:
    """Per-task policy mean and log std at every stored observation, ``[T, N, H, act]`` each."""
    tasks, trajectories, horizon, obs_dim = episodes.observations.shape
    flat_obs = episodes.observations.reshape(tasks, trajectories * horizon, obs_dim)
    mean, log_std = batched_policy_forward(policy, params, flat_obs)
    shape = (tasks, trajectories, horizon, mean.shape[-1])
    return mean.reshape(shape), log_std.reshape(shape)


def reinforce_loss(
    policy: nn.Module, params: Params, episodes: Episodes, advantages: Tensor
) -> Tensor:
    """Inner-loop vanilla policy-gradient loss ``-mean(log pi(a|s) * A)`` per task, ``[tasks]``.

    As in MAML's released code, the loss has no term for the dependence of the sampling
    distribution on the parameters (no DiCE correction).
    """
    mean, log_std = episode_distribution(policy, params, episodes)
    logp = gaussian_log_prob(mean, log_std, episodes.actions)
    return -masked_task_mean(logp * advantages, episodes.masks)


def surrogate_terms(
    mean: Tensor,
    log_std: Tensor,
    old_mean: Tensor,
    old_log_std: Tensor,
    episodes: Episodes,
    advantages: Tensor,
) -> tuple[Tensor, Tensor]:
    """TRPO surrogate ``-mean(pi/pi_old * A)`` and ``mean KL(pi_old || pi)``, each ``[tasks]``.

    ``mean``/``log_std`` are the new policy's outputs at the episodes' observations,
    ``old_mean``/``old_log_std`` (detached) those of the policy that sampled the episodes.
    """
    logp = gaussian_log_prob(mean, log_std, episodes.actions)
    old_logp = gaussian_log_prob(old_mean, old_log_std, episodes.actions)
    ratio = (logp - old_logp).exp()
    surrogate = -masked_task_mean(ratio * advantages, episodes.masks)
    kl = masked_task_mean(gaussian_kl(old_mean, old_log_std, mean, log_std), episodes.masks)
    return surrogate, kl


def surrogate_and_kl(
    policy: nn.Module,
    params: Params,
    episodes: Episodes,
    advantages: Tensor,
    old_mean: Tensor,
    old_log_std: Tensor,
) -> tuple[Tensor, Tensor]:
    """:func:`surrogate_terms` of ``policy`` evaluated with per-task ``params``."""
    mean, log_std = episode_distribution(policy, params, episodes)
    return surrogate_terms(mean, log_std, old_mean, old_log_std, episodes, advantages)
