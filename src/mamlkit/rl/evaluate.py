"""The paper's Figure 5 protocol: average return after 0, 1, 2, 3 policy-gradient steps on new
tasks (Finn et al. 2017, Sec. 5.3), as means over tasks with 95% confidence intervals."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamlkit.evaluate import Estimate, mean_ci
from mamlkit.rl.advantages import compute_advantages
from mamlkit.rl.maml_trpo import inner_update
from mamlkit.rl.policy import expand_params, policy_params
from mamlkit.rl.sampler import TaskSampler


def adaptation_returns(
    policy: nn.Module,
    sampler: TaskSampler,
    tasks: list[dict[str, Any]],
    steps: int,
    inner_lr: float,
    trajectories: int,
    seed: int,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
) -> Tensor:
    """Mean return per task after ``0..steps`` inner policy-gradient steps, ``[steps + 1, tasks]``.

    Every step samples ``trajectories`` fresh rollouts per task with the current adapted
    policy, scores them, and (except after the last) takes one REINFORCE step with the linear
    baseline and step size ``inner_lr``, as in meta-training.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    sampler.check_policy(policy)
    seeds = np.random.SeedSequence(seed).generate_state(steps + 1)
    params = expand_params(policy_params(policy), len(tasks))
    curve = []
    for k in range(steps + 1):
        episodes = sampler.sample(policy, params, tasks, trajectories, int(seeds[k]))
        curve.append(episodes.returns().mean(1))
        if k == steps:
            break
        advantages = compute_advantages(episodes, gamma, gae_lambda)
        with torch.enable_grad():
            leaf = {n: p.detach().requires_grad_() for n, p in params.items()}
            new, _ = inner_update(policy, leaf, episodes, advantages, inner_lr, False)
        params = {n: p.detach() for n, p in new.items()}
    return torch.stack(curve)


def summarize_returns(curve: Tensor) -> list[Estimate]:
    """One mean ± 95% CI (over tasks) per number of steps."""
    return [mean_ci(row) for row in curve]
