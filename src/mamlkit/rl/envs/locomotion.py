"""MuJoCo locomotion task families of MAML's RL experiments (Finn et al. 2017, Sec. 5.3).

Each is a gymnasium wrapper around gymnasium's ``HalfCheetah-v5`` or ``Ant-v5`` whose reward is
redefined per task, with the constants of the paper's released code and its PyTorch port
(``pytorch-maml-rl``):

* goal velocity: ``-|v_x - v_goal|`` (+1 for the ant), ``v_goal ~ U[0, 2]`` (cheetah) or
  ``U[0, 3]`` (ant);
* forward/backward: ``direction * v_x`` with ``direction`` uniform in ``{-1, +1}``;

minus a control cost ``0.05 * |a|^2`` (cheetah) or ``0.005 * |a|^2`` (ant); the ant also pays a
contact cost ``0.0005 * |clip(cfrc_ext, -1, 1)|^2``, earns a survive bonus of 0.05 and ends when
its torso leaves ``z in [0.2, 1.0]``. Actions are clipped to the action space before the
simulator sees them. The horizon is 200 steps, as in the paper.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

HORIZON = 200


class LocomotionTaskEnv(gym.Wrapper):
    """Base of the locomotion task families: one MuJoCo robot, reward set by the current task.

    Subclasses name the robot (``env_id``), the task key and its bounds, and the reward terms.
    """

    env_id: str = ""
    task_key: str = ""
    horizon: int = HORIZON

    def __init__(self, **env_kwargs: Any) -> None:
        env = gym.make(
            self.env_id, max_episode_steps=self.horizon, disable_env_checker=True, **env_kwargs
        )
        super().__init__(env)
        self._task: dict[str, Any] = self.default_task()
        low = np.asarray(self.action_space.low, dtype=np.float64)
        high = np.asarray(self.action_space.high, dtype=np.float64)
        self._action_low, self._action_high = low, high

    # --- task distribution -------------------------------------------------------------
    def default_task(self) -> dict[str, Any]:
        """The task used before :meth:`set_task` is called."""
        raise NotImplementedError

    def check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """``task`` normalised to plain floats, or a ValueError naming the bound it breaks."""
        raise NotImplementedError

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` tasks drawn from the family's distribution with ``rng``."""
        raise NotImplementedError

    def set_task(self, task: dict[str, Any]) -> None:
        """Make ``task`` current (checked against the distribution's bounds)."""
        self._task = self.check_task(task)

    @property
    def task(self) -> dict[str, Any]:
        """The current task."""
        return dict(self._task)

    # --- reward ----------------------------------------------------------------------------
    def task_reward(self, x_velocity: float) -> float:
        """The task-dependent part of the reward."""
        raise NotImplementedError

    def extra_costs(self, action: np.ndarray) -> float:
        """Control (and contact) costs minus bonuses, subtracted from the task reward."""
        raise NotImplementedError

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step the robot with the clipped action and return the task's reward."""
        clipped = np.clip(np.asarray(action, dtype=np.float64), self._action_low, self._action_high)
        obs, _, terminated, truncated, info = self.env.step(clipped.astype(np.float32))
        x_velocity = float(info["x_velocity"])
        forward = self.task_reward(x_velocity)
        reward = forward - self.extra_costs(clipped)
        info = dict(info, task_reward=forward, task=self.task)
        return obs, float(reward), bool(terminated), bool(truncated), info


def _check_velocity(task: dict[str, Any], high: float, family: str) -> dict[str, Any]:
    if "velocity" not in task:
        raise ValueError(
            f"{family} task {task!r} has no 'velocity'; pass e.g. {{'velocity': 1.0}}"
        )
    velocity = float(task["velocity"])
    if not np.isfinite(velocity) or not 0.0 <= velocity <= high:
        raise ValueError(
            f"{family} goal velocity {velocity} is outside the task distribution's bounds "
            f"[0, {high}]; choose a velocity in that range"
        )
    return {"velocity": velocity}


def _check_direction(task: dict[str, Any], family: str) -> dict[str, Any]:
    if "direction" not in task:
        raise ValueError(f"{family} task {task!r} has no 'direction'; pass {{'direction': 1}}")
    direction = float(task["direction"])
    if direction not in (-1.0, 1.0):
        raise ValueError(
            f"{family} direction {task['direction']!r} is not one of the task distribution's "
            "values {-1, +1}; pass -1 (backward) or +1 (forward)"
        )
    return {"direction": direction}


def _sample_directions(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    if n < 1:
        raise ValueError(f"number of tasks must be >= 1, got {n}")
    return [{"direction": float(d)} for d in rng.choice([-1.0, 1.0], size=n)]


def _sample_velocities(n: int, rng: np.random.Generator, high: float) -> list[dict[str, Any]]:
    if n < 1:
        raise ValueError(f"number of tasks must be >= 1, got {n}")
    return [{"velocity": float(v)} for v in rng.uniform(0.0, high, size=n)]


class _HalfCheetahCosts(LocomotionTaskEnv):
    env_id = "HalfCheetah-v5"
    ctrl_cost_weight = 0.05

    def extra_costs(self, action: np.ndarray) -> float:
        """Control cost ``0.05 * |a|^2``."""
        return self.ctrl_cost_weight * float(np.sum(np.square(action)))


class _AntCosts(LocomotionTaskEnv):
    env_id = "Ant-v5"
    ctrl_cost_weight = 0.005
    contact_cost_weight = 0.0005
    survive_bonus = 0.05

    def extra_costs(self, action: np.ndarray) -> float:
        """Control cost ``0.005 |a|^2`` + contact cost ``0.0005 |clip(cfrc_ext)|^2`` - 0.05."""
        contact = np.clip(self.env.unwrapped.data.cfrc_ext, -1.0, 1.0)
        return (
            self.ctrl_cost_weight * float(np.sum(np.square(action)))
            + self.contact_cost_weight * float(np.sum(np.square(contact)))
            - self.survive_bonus
        )


class HalfCheetahVelEnv(_HalfCheetahCosts):
    """HalfCheetah goal velocity: reward ``-|v_x - v_goal| - 0.05 |a|^2``, ``v_goal ~ U[0, 2]``."""

    task_key = "velocity"
    max_velocity = 2.0

    def default_task(self) -> dict[str, Any]:
        """Goal velocity 1.0."""
        return {"velocity": 1.0}

    def check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """Checks ``0 <= velocity <= 2``."""
        return _check_velocity(task, self.max_velocity, "halfcheetah-vel")

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` goal velocities uniform in ``[0, 2]``."""
        return _sample_velocities(n, rng, self.max_velocity)

    def task_reward(self, x_velocity: float) -> float:
        """``-|v_x - v_goal|``."""
        return -abs(x_velocity - self._task["velocity"])


class HalfCheetahDirEnv(_HalfCheetahCosts):
    """HalfCheetah forward/backward: reward ``direction * v_x - 0.05 |a|^2``."""

    task_key = "direction"

    def default_task(self) -> dict[str, Any]:
        """Forward."""
        return {"direction": 1.0}

    def check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """Checks ``direction in {-1, +1}``."""
        return _check_direction(task, "halfcheetah-dir")

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` directions uniform in ``{-1, +1}``."""
        return _sample_directions(n, rng)

    def task_reward(self, x_velocity: float) -> float:
        """``direction * v_x``."""
        return self._task["direction"] * x_velocity


class AntVelEnv(_AntCosts):
    """Ant goal velocity: reward ``-|v_x - v_goal| + 1`` minus costs, ``v_goal ~ U[0, 3]``."""

    task_key = "velocity"
    max_velocity = 3.0

    def default_task(self) -> dict[str, Any]:
        """Goal velocity 1.0."""
        return {"velocity": 1.0}

    def check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """Checks ``0 <= velocity <= 3``."""
        return _check_velocity(task, self.max_velocity, "ant-vel")

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` goal velocities uniform in ``[0, 3]``."""
        return _sample_velocities(n, rng, self.max_velocity)

    def task_reward(self, x_velocity: float) -> float:
        """``-|v_x - v_goal| + 1``."""
        return -abs(x_velocity - self._task["velocity"]) + 1.0


class AntDirEnv(_AntCosts):
    """Ant forward/backward: reward ``direction * v_x`` minus costs."""

    task_key = "direction"

    def default_task(self) -> dict[str, Any]:
        """Forward."""
        return {"direction": 1.0}

    def check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """Checks ``direction in {-1, +1}``."""
        return _check_direction(task, "ant-dir")

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` directions uniform in ``{-1, +1}``."""
        return _sample_directions(n, rng)

    def task_reward(self, x_velocity: float) -> float:
        """``direction * v_x``."""
        return self._task["direction"] * x_velocity
