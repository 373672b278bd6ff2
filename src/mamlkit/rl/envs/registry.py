"""Name -> task-family environment, for configs and the command line."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

ENV_NAMES = ("nav2d", "halfcheetah-vel", "halfcheetah-dir", "ant-vel", "ant-dir")


def _factories() -> dict[str, Callable[[], gym.Env]]:
    from mamlkit.rl.envs.navigation import Navigation2DEnv

    def mujoco(cls_name: str) -> Callable[[], gym.Env]:
        def build() -> gym.Env:
            try:
                import mujoco  # noqa: F401
            except ImportError as error:
                raise ImportError(
                    f"environment needs MuJoCo, which is not installed ({error}); "
                    "install it with: pip install 'gymnasium[mujoco]'"
                ) from error
            from mamlkit.rl.envs import locomotion

            return getattr(locomotion, cls_name)()

        return build

    return {
        "nav2d": Navigation2DEnv,
        "halfcheetah-vel": mujoco("HalfCheetahVelEnv"),
        "halfcheetah-dir": mujoco("HalfCheetahDirEnv"),
        "ant-vel": mujoco("AntVelEnv"),
        "ant-dir": mujoco("AntDirEnv"),
    }


def check_env_name(name: str) -> str:
    """``name`` if it is a known task family, else a ValueError listing the known ones."""
    if name not in ENV_NAMES:
        raise ValueError(
            f"unknown RL environment {name!r}; choose one of: {', '.join(ENV_NAMES)}"
        )
    return name


def make_env(name: str) -> gym.Env:
    """A fresh single-task environment of the task family ``name``.

    Known names: ``nav2d`` (2D point navigation), ``halfcheetah-vel``, ``halfcheetah-dir``,
    ``ant-vel``, ``ant-dir`` (Finn et al. 2017, Sec. 5.3). Every environment has
    ``sample_tasks(n, rng)`` and ``set_task(task)``.
    """
    return _factories()[check_env_name(name)]()
