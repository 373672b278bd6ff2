"""Seeded rollouts of a whole meta-batch at once.

All tasks of a meta-batch are rolled out together, one policy forward per time step for every
``[task, trajectory]`` pair (the per-task parameters go through ``vmap``). 2D navigation steps as
one torch tensor; MuJoCo families step a pool of gymnasium environments in lockstep.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from mamlkit.rl.envs.navigation import BatchedNavigation2D, Navigation2DEnv
from mamlkit.rl.envs.registry import check_env_name, make_env
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.policy import Params, batched_policy_forward, check_policy_spaces, gaussian_log_prob


class TaskSampler:
    """Draws tasks of one family and rolls out per-task policies on them.

    ``env_name`` is a :func:`~mamlkit.rl.envs.make_env` name; ``horizon`` defaults to the
    family's (100 for ``nav2d``, 200 for MuJoCo, as in the paper).
    """

    def __init__(self, env_name: str, horizon: int | None = None) -> None:
        self.env_name = check_env_name(env_name)
        self.template = make_env(env_name)
        default = int(getattr(self.template, "horizon", 100))
        self.horizon = default if horizon is None else int(horizon)
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.observation_space: gym.spaces.Box = self.template.observation_space
        self.action_space: gym.spaces.Box = self.template.action_space
        self._pool: list[gym.Env] = []

    @property
    def observation_dim(self) -> int:
        """Size of a flat observation."""
        return int(np.prod(self.observation_space.shape))

    @property
    def action_dim(self) -> int:
        """Size of a flat action."""
        return int(np.prod(self.action_space.shape))

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` tasks of the family, drawn with ``rng``."""
        return self.template.sample_tasks(n, rng)

    def check_policy(self, policy: nn.Module) -> None:
        """Raise a ValueError unless ``policy`` fits this family's observation and action spaces."""
        check_policy_spaces(policy, self.observation_space, self.action_space)

    @torch.no_grad()
    def sample(
        self,
        policy: nn.Module,
        params: Params,
        tasks: list[dict[str, Any]],
        trajectories: int,
        seed: int,
    ) -> Episodes:
        """``trajectories`` rollouts per task; ``params[name]`` is ``[len(tasks), ...]``.

        Everything random (action noise, MuJoCo reset noise) comes from ``seed``.
        """
        if trajectories < 1:
            raise ValueError(f"trajectories per task must be >= 1, got {trajectories}")
        for name, value in params.items():
            if value.shape[0] != len(tasks):
                raise ValueError(
                    f"parameter {name!r} has {value.shape[0]} task copies for {len(tasks)} tasks; "
                    "expand the parameters with expand_params(params, len(tasks))"
                )
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        if isinstance(self.template, Navigation2DEnv):
            return self._sample_navigation(policy, params, tasks, trajectories, generator)
        return self._sample_pool(policy, params, tasks, trajectories, generator, int(seed))

    def _act(
        self, policy: nn.Module, params: Params, obs: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        mean, log_std = batched_policy_forward(policy, params, obs)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        action = mean + torch.exp(log_std) * noise
        return action, gaussian_log_prob(mean, log_std, action)

    def _sample_navigation(
        self,
        policy: nn.Module,
        params: Params,
        tasks: list[dict[str, Any]],
        trajectories: int,
        generator: torch.Generator,
    ) -> Episodes:
        dtype = next(iter(params.values())).dtype
        device = next(iter(params.values())).device
        world = BatchedNavigation2D.from_tasks(tasks, trajectories, dtype=dtype)
        world.goals = world.goals.to(device)
        world.state = world.state.to(device)
        world.alive = world.alive.to(device)
        obs, acts, rews, masks, logps = [], [], [], [], []
        for _ in range(self.horizon):
            observation = world.observe()
            action, logp = self._act(policy, params, observation, generator)
            reward, mask = world.step(action)
            obs.append(observation)
            acts.append(action)
            rews.append(reward)
            masks.append(mask.to(dtype))
            logps.append(logp)
        return Episodes(
            torch.stack(obs, 2),
            torch.stack(acts, 2),
            torch.stack(rews, 2),
            torch.stack(masks, 2),
            torch.stack(logps, 2) * torch.stack(masks, 2),
            list(tasks),
        )

    def _sample_pool(
        self,
        policy: nn.Module,
        params: Params,
        tasks: list[dict[str, Any]],
        trajectories: int,
        generator: torch.Generator,
        seed: int,
    ) -> Episodes:
        num_tasks = len(tasks)
        count = num_tasks * trajectories
        while len(self._pool) < count:
            self._pool.append(make_env(self.env_name))
        envs = self._pool[:count]
        seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=count)
        first = next(iter(params.values()))
        dtype, device = first.dtype, first.device
        current = np.zeros((count, self.observation_dim), dtype=np.float64)
        for i, env in enumerate(envs):
            env.set_task(tasks[i // trajectories])
            observation, _ = env.reset(seed=int(seeds[i]))
            current[i] = np.asarray(observation, dtype=np.float64).reshape(-1)
        alive = np.ones(count, dtype=bool)
        shape = (num_tasks, trajectories)
        obs, acts, rews, masks, logps = [], [], [], [], []
        for _ in range(self.horizon):
            observation = torch.as_tensor(current, dtype=dtype, device=device).view(*shape, -1)
            action, logp = self._act(policy, params, observation, generator)
            flat_action = action.reshape(count, -1).cpu().numpy().astype(np.float64)
            reward = np.zeros(count)
            mask = alive.copy()
            for i in np.flatnonzero(alive):
                next_obs, r, terminated, _, _ = envs[i].step(flat_action[i])
                reward[i] = r
                current[i] = np.asarray(next_obs, dtype=np.float64).reshape(-1)
                if terminated:
                    alive[i] = False
            mask_t = torch.as_tensor(mask, dtype=dtype, device=device).view(shape)
            obs.append(observation * mask_t.unsqueeze(-1))
            acts.append(action * mask_t.unsqueeze(-1))
            rews.append(torch.as_tensor(reward, dtype=dtype, device=device).view(shape))
            masks.append(mask_t)
            logps.append(logp * mask_t)
        return Episodes(
            torch.stack(obs, 2),
            torch.stack(acts, 2),
            torch.stack(rews, 2),
            torch.stack(masks, 2),
            torch.stack(logps, 2),
            list(tasks),
        )
