"""Every bad input of the RL package is rejected with a message that names the problem."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest
import torch

from mamlkit import LoopConfig
from mamlkit.rl.advantages import compute_advantages
from mamlkit.rl.envs.navigation import BatchedNavigation2D, Navigation2DEnv, sample_goals
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.evaluate import adaptation_returns
from mamlkit.rl.maml_trpo import MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy, expand_params, policy_params
from mamlkit.rl.sampler import TaskSampler
from mamlkit.rl.step import RLStep
from mamlkit.rl.train import RLSettings, train_rl
from mamlkit.rl.trpo import TRPOSettings


def _episodes(**override: torch.Tensor) -> Episodes:
    parts = dict(observations=torch.zeros(2, 3, 4, 2), actions=torch.zeros(2, 3, 4, 2),
                 rewards=torch.zeros(2, 3, 4), masks=torch.ones(2, 3, 4),
                 log_probs=torch.zeros(2, 3, 4))
    parts.update(override)
    return Episodes(**parts)


def _sampler() -> TaskSampler:
    return TaskSampler("nav2d", horizon=3)


CASES: list[tuple[str, Callable[[], object], str]] = [
    ("goal shape", lambda: Navigation2DEnv().set_task({"goal": (0.1, 0.2, 0.3)}),
     "must have shape (2,)"),
    ("no tasks", lambda: sample_goals(0, np.random.default_rng(0)), "number of tasks must be >= 1"),
    ("batched goals", lambda: BatchedNavigation2D(torch.zeros(3), 2), "goals must be [tasks, 2]"),
    ("policy dims", lambda: GaussianMLPPolicy(0, 2), "observation_dim and action_dim must be >= 1"),
    ("init std", lambda: GaussianMLPPolicy(2, 2, init_std=0.0), "init_std must be > 0"),
    ("episode rewards", lambda: _episodes(rewards=torch.zeros(2, 3)),
     "rewards must be [tasks, trajectories, horizon]"),
    ("episode obs", lambda: _episodes(observations=torch.zeros(2, 3, 5, 2)),
     "observations must be"),
    ("episode masks", lambda: _episodes(masks=torch.ones(2, 3, 5)), "masks must have shape"),
    ("horizon", lambda: TaskSampler("nav2d", horizon=0), "horizon must be >= 1"),
    ("trajectories", lambda: _sampler().sample(
        GaussianMLPPolicy(2, 2, (4, 4)),
        expand_params(policy_params(GaussianMLPPolicy(2, 2, (4, 4))), 1),
        [{"goal": (0.0, 0.0)}], 0, seed=0), "trajectories per task must be >= 1"),
    ("gamma", lambda: compute_advantages(_episodes(), gamma=1.5), "gamma and gae_lambda"),
    ("cg iters", lambda: TRPOSettings(cg_iters=0), "cg_iters and ls_max_steps must be >= 1"),
    ("damping", lambda: TRPOSettings(cg_damping=-1.0), "cg_damping must be >= 0"),
    ("backtrack", lambda: TRPOSettings(ls_backtrack_ratio=1.0), "ls_backtrack_ratio"),
    ("inner steps", lambda: MAMLTRPO(GaussianMLPPolicy(2, 2, (4, 4)), _sampler(),
                                     inner_steps=-1), "inner_steps must be >= 0"),
    ("maml trajectories", lambda: MAMLTRPO(GaussianMLPPolicy(2, 2, (4, 4)), _sampler(),
                                           trajectories=0), "trajectories must be >= 1"),
    ("eval steps", lambda: adaptation_returns(GaussianMLPPolicy(2, 2, (4, 4)), _sampler(),
                                              [{"goal": (0.1, 0.1)}], -1, 0.1, 2, 0),
     "steps must be >= 0"),
    ("pretrain", lambda: RLSettings(pretrain_iterations=-1), "0 skips the pretrained baseline"),
    ("inner lr", lambda: RLSettings(inner_lr=-0.1), "RLSettings.inner_lr must be > 0"),
    ("eval steps config", lambda: RLSettings(eval_steps=-1), "RLSettings.eval_steps must be >= 0"),
    ("unknown setting", lambda: RLSettings.from_dict({"meta_iterations": 3}),
     "device are LoopConfig settings"),
    ("step meta-batch", lambda: RLStep(MAMLTRPO(GaussianMLPPolicy(2, 2, (4, 4)), _sampler()), 0),
     "meta_batch_size must be >= 1"),
]


@pytest.mark.parametrize(("name", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_reported(name: str, call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_device_without_cuda_is_reported() -> None:
    with pytest.raises(ValueError, match="CUDA is not available; use device='cpu'"):
        train_rl(RLSettings(), LoopConfig(device="cuda"), "/tmp/unused-run")


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None,
                    reason="mujoco is not installed (pip install 'gymnasium[mujoco]')")
def test_locomotion_task_errors() -> None:
    from mamlkit.rl.envs import make_env

    env = make_env("halfcheetah-vel")
    with pytest.raises(ValueError, match="has no 'velocity'"):
        env.set_task({"direction": 1})
    with pytest.raises(ValueError, match="number of tasks must be >= 1"):
        env.sample_tasks(0, np.random.default_rng(0))
