"""Batched, seeded rollouts of whole meta-batches."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mamlkit.rl.policy import GaussianMLPPolicy, expand_params, log_prob, policy_params
from mamlkit.rl.sampler import TaskSampler


def _setup(name: str, tasks: int, horizon: int | None = None):
    sampler = TaskSampler(name, horizon)
    policy = GaussianMLPPolicy(sampler.observation_dim, sampler.action_dim, (8, 8))
    task_list = sampler.sample_tasks(tasks, np.random.default_rng(0))
    return sampler, policy, task_list, expand_params(policy_params(policy), tasks)


def test_nav2d_episodes_shapes_seeding_and_log_probs() -> None:
    sampler, policy, tasks, params = _setup("nav2d", 3)
    episodes = sampler.sample(policy, params, tasks, trajectories=4, seed=5)
    assert episodes.observations.shape == (3, 4, 100, 2)
    assert episodes.actions.shape == (3, 4, 100, 2)
    assert episodes.rewards.shape == episodes.masks.shape == (3, 4, 100)
    assert torch.all(episodes.observations[:, :, 0] == 0)  # every episode starts at the origin
    assert torch.all(episodes.rewards <= 0)
    again = sampler.sample(policy, params, tasks, trajectories=4, seed=5)
    other = sampler.sample(policy, params, tasks, trajectories=4, seed=6)
    assert torch.equal(episodes.actions, again.actions)
    assert not torch.equal(episodes.actions, other.actions)
    recomputed = log_prob(policy, policy_params(policy), episodes.observations, episodes.actions)
    assert torch.allclose(recomputed * episodes.masks, episodes.log_probs, atol=1e-5)


def test_parameter_copies_must_match_task_count() -> None:
    sampler, policy, tasks, _ = _setup("nav2d", 3)
    with pytest.raises(ValueError, match="expand_params"):
        sampler.sample(policy, expand_params(policy_params(policy), 2), tasks, 2, seed=0)


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None,
                    reason="mujoco is not installed (pip install 'gymnasium[mujoco]')")
def test_mujoco_episodes_step_with_masks() -> None:
    sampler, policy, tasks, params = _setup("ant-vel", 2, horizon=6)
    episodes = sampler.sample(policy, params, tasks, trajectories=2, seed=0)
    assert episodes.observations.shape == (2, 2, 6, 105)
    assert episodes.actions.shape == (2, 2, 6, 8)
    masks = episodes.masks
    assert torch.all(masks[..., 1:] <= masks[..., :-1])  # once ended, stays ended
    assert torch.isfinite(episodes.rewards).all()
    again = sampler.sample(policy, params, tasks, trajectories=2, seed=0)
    assert torch.equal(episodes.rewards, again.rewards)
