"""Task-family environments: reward, clipping, horizon, task bounds and the name registry."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mamlkit.rl.envs import ENV_NAMES, BatchedNavigation2D, Navigation2DEnv, make_env

HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None
needs_mujoco = pytest.mark.skipif(not HAS_MUJOCO, reason="mujoco is not installed "
                                  "(pip install 'gymnasium[mujoco]')")


def test_nav2d_reward_is_negative_distance_after_clipped_move() -> None:
    env = Navigation2DEnv()
    env.set_task({"goal": (0.3, -0.2)})
    obs, _ = env.reset(seed=0)
    assert np.allclose(obs, 0.0)
    obs, reward, terminated, truncated, _ = env.step(np.array([5.0, -0.05]))
    assert np.allclose(obs, [0.1, -0.05])  # x clipped to 0.1, y unchanged
    assert reward == pytest.approx(-np.hypot(0.3 - 0.1, -0.2 + 0.05))
    assert not terminated and not truncated


def test_nav2d_terminates_at_goal_and_truncates_at_horizon() -> None:
    env = Navigation2DEnv()
    env.set_task({"goal": (0.1, 0.0)})
    env.reset()
    _, reward, terminated, _, _ = env.step(np.array([0.1, 0.0]))
    assert terminated and reward == pytest.approx(0.0)
    env.set_task({"goal": (0.5, 0.5)})
    env.reset()
    flags = [env.step(np.array([-0.1, -0.1]))[3] for _ in range(100)]
    assert flags[-1] and not any(flags[:-1])


def test_batched_nav2d_matches_single_env() -> None:
    tasks = Navigation2DEnv().sample_tasks(3, np.random.default_rng(1))
    world = BatchedNavigation2D.from_tasks(tasks, trajectories=2, dtype=torch.float64)
    actions = torch.randn(20, 3, 2, 2, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64) * 0.2
    batched = [world.step(a)[0] for a in actions]
    for t, task in enumerate(tasks):
        env = Navigation2DEnv()
        env.set_task(task)
        env.reset()
        for h, a in enumerate(actions):
            _, reward, _, _, _ = env.step(a[t, 1].numpy())
            assert batched[h][t, 1].item() == pytest.approx(reward, abs=1e-12)


@pytest.mark.parametrize("name", ["nav2d"] + (list(ENV_NAMES[1:]) if HAS_MUJOCO else []))
def test_sampled_tasks_are_inside_bounds(name: str) -> None:
    env = make_env(name)
    tasks = env.sample_tasks(50, np.random.default_rng(0))
    assert len(tasks) == 50
    for task in tasks:
        env.set_task(task)  # raises if out of bounds


@pytest.mark.parametrize(
    ("name", "task", "message"),
    [
        ("nav2d", {"goal": (0.7, 0.0)}, "outside the task distribution's bounds"),
        ("nav2d", {"target": (0.1, 0.1)}, "has no 'goal'"),
        ("halfcheetah-vel", {"velocity": 2.5}, "outside the task distribution's bounds [0, 2.0]"),
        ("halfcheetah-vel", {"velocity": -0.1}, "outside the task distribution's bounds"),
        ("halfcheetah-dir", {"direction": 0.5}, "pass -1 (backward) or +1 (forward)"),
        ("ant-vel", {"velocity": 3.5}, "[0, 3.0]"),
        ("ant-dir", {"goal": 1}, "has no 'direction'"),
    ],
)
def test_out_of_bounds_task_raises(name: str, task: dict, message: str) -> None:
    if name != "nav2d" and not HAS_MUJOCO:
        pytest.skip("mujoco is not installed (pip install 'gymnasium[mujoco]')")
    env = make_env(name)
    with pytest.raises(ValueError) as info:
        env.set_task(task)
    assert message in str(info.value)


def test_unknown_env_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown RL environment 'walker'.*nav2d, halfcheetah-vel"):
        make_env("walker")


@needs_mujoco
def test_halfcheetah_vel_reward_is_velocity_error_minus_control_cost() -> None:
    env = make_env("halfcheetah-vel")
    env.set_task({"velocity": 1.5})
    env.reset(seed=0)
    action = np.array([0.5, -2.0, 0.3, 0.0, 1.0, -0.4])  # -2.0 is clipped to -1.0
    obs, reward, terminated, truncated, info = env.step(action)
    clipped = np.clip(action, -1.0, 1.0)
    expected = -abs(info["x_velocity"] - 1.5) - 0.05 * np.sum(clipped**2)
    assert obs.shape == (17,)
    assert reward == pytest.approx(expected)
    assert not terminated and not truncated
    steps = 1
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(6))
        steps += 1
    assert steps == 200


@needs_mujoco
def test_ant_rewards_include_contact_and_survive_terms() -> None:
    for name, task, forward in [
        ("ant-vel", {"velocity": 2.0}, lambda v: -abs(v - 2.0) + 1.0),
        ("ant-dir", {"direction": -1}, lambda v: -v),
    ]:
        env = make_env(name)
        env.set_task(task)
        env.reset(seed=1)
        action = np.full(8, 0.5)
        _, reward, _, _, info = env.step(action)
        contact = np.clip(env.unwrapped.data.cfrc_ext, -1, 1)
        expected = (forward(info["x_velocity"]) - 0.005 * np.sum(action**2)
                    - 0.0005 * np.sum(contact**2) + 0.05)
        assert reward == pytest.approx(expected)


@needs_mujoco
def test_halfcheetah_dir_reward_sign_follows_direction() -> None:
    rewards = {}
    for direction in (-1, 1):
        env = make_env("halfcheetah-dir")
        env.set_task({"direction": direction})
        env.reset(seed=3)
        _, reward, _, _, info = env.step(np.zeros(6))
        rewards[direction] = (reward, info["x_velocity"])
    assert rewards[1][0] == pytest.approx(rewards[1][1])
    assert rewards[-1][0] == pytest.approx(-rewards[-1][1])
