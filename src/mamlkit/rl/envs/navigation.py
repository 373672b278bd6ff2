"""2D navigation, the point-robot task family of MAML's RL experiments (Finn et al. 2017, Sec. 5.3).

A point starts at the origin and moves by velocity commands clipped to ``[-0.1, 0.1]`` per axis;
each task is a goal drawn uniformly from ``[-0.5, 0.5]^2``. The observation is the position, the
reward is the negative Euclidean distance to the goal (as in the paper's released code), and an
episode ends when the point is within 0.01 of the goal or after 100 steps.

Two forms share these rules: :class:`Navigation2DEnv`, a plain single-task gymnasium environment,
and :class:`BatchedNavigation2D`, the same dynamics stepped for ``[tasks, trajectories]`` points
at once in torch, which is what the sampler uses because the physics is one addition.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

GOAL_LOW = -0.5
GOAL_HIGH = 0.5
MAX_ACTION = 0.1
SUCCESS_RADIUS = 0.01
HORIZON = 100


def check_goal(task: dict[str, Any]) -> np.ndarray:
    """The task's goal as a float array, after checking it is a 2D point inside the goal square."""
    if "goal" not in task:
        raise ValueError(
            f"2D navigation task {task!r} has no 'goal'; pass a task from sample_tasks(), "
            "e.g. {'goal': (0.1, -0.3)}"
        )
    goal = np.asarray(task["goal"], dtype=np.float64)
    if goal.shape != (2,):
        raise ValueError(f"2D navigation goal must have shape (2,), got {goal.shape}; pass (x, y)")
    if not np.all(np.isfinite(goal)) or np.any(goal < GOAL_LOW) or np.any(goal > GOAL_HIGH):
        raise ValueError(
            f"2D navigation goal {goal.tolist()} is outside the task distribution's bounds "
            f"[{GOAL_LOW}, {GOAL_HIGH}]^2; choose a goal inside that square"
        )
    return goal


def sample_goals(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` tasks with goals uniform in ``[-0.5, 0.5]^2``."""
    if n < 1:
        raise ValueError(f"number of tasks must be >= 1, got {n}")
    goals = rng.uniform(GOAL_LOW, GOAL_HIGH, size=(n, 2))
    return [{"goal": (float(x), float(y))} for x, y in goals]


class Navigation2DEnv(gym.Env):
    """Single-task 2D navigation as a gymnasium environment (Finn et al. 2017, Sec. 5.3).

    Call :meth:`set_task` with a task from :meth:`sample_tasks` before :meth:`reset`.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    horizon = HORIZON

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-MAX_ACTION, MAX_ACTION, shape=(2,), dtype=np.float32)
        self._goal = np.zeros(2)
        self._state = np.zeros(2)
        self._steps = 0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` tasks (goals uniform in ``[-0.5, 0.5]^2``) drawn with ``rng``."""
        return sample_goals(n, rng)

    def set_task(self, task: dict[str, Any]) -> None:
        """Make ``task`` (``{'goal': (x, y)}``) the current goal; out-of-bounds goals raise."""
        self._goal = check_goal(task)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Put the point back at the origin."""
        super().reset(seed=seed)
        self._state = np.zeros(2)
        self._steps = 0
        return self._state.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by the clipped action; reward is minus the distance to the goal afterwards."""
        move = np.clip(np.asarray(action, dtype=np.float64), -MAX_ACTION, MAX_ACTION)
        self._state = self._state + move
        self._steps += 1
        distance = float(np.linalg.norm(self._state - self._goal))
        terminated = distance < SUCCESS_RADIUS
        truncated = self._steps >= self.horizon and not terminated
        return self._state.astype(np.float32), -distance, terminated, truncated, {}


class BatchedNavigation2D:
    """2D navigation for ``[tasks, trajectories]`` points at once, in torch.

    ``goals`` is ``[tasks, 2]``. :meth:`step` takes raw actions ``[tasks, trajectories, 2]`` and
    returns the reward and the "was alive" mask of that step; a point that reached its goal stays
    put and its later steps are masked out, matching :class:`Navigation2DEnv`.
    """

    observation_dim = 2
    action_dim = 2
    horizon = HORIZON

    def __init__(self, goals: Tensor, trajectories: int) -> None:
        if goals.ndim != 2 or goals.shape[1] != 2:
            raise ValueError(f"goals must be [tasks, 2], got {tuple(goals.shape)}")
        self.goals = goals
        self.trajectories = trajectories
        shape = (goals.shape[0], trajectories)
        self.state = goals.new_zeros(*shape, 2)
        self.alive = torch.ones(shape, dtype=torch.bool, device=goals.device)

    @classmethod
    def from_tasks(
        cls, tasks: list[dict[str, Any]], trajectories: int, dtype: torch.dtype = torch.float32
    ) -> BatchedNavigation2D:
        """Build from task dicts (each checked against the goal square)."""
        goals = torch.tensor(np.stack([check_goal(t) for t in tasks]), dtype=dtype)
        return cls(goals, trajectories)

    def observe(self) -> Tensor:
        """Current positions, ``[tasks, trajectories, 2]``."""
        return self.state.clone()

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """Apply clipped ``action``; return ``(reward, mask)``, both ``[tasks, trajectories]``."""
        mask = self.alive.clone()
        move = action.clamp(-MAX_ACTION, MAX_ACTION) * mask.unsqueeze(-1)
        self.state = self.state + move
        distance = torch.linalg.vector_norm(self.state - self.goals.unsqueeze(1), dim=-1)
        self.alive = self.alive & (distance >= SUCCESS_RADIUS)
        reward = -distance * mask
        return reward, mask
