"""Sinusoid and line task families: distributions, shapes, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from mamlkit.tasks.regression import Linear, Sinusoid


def test_sinusoid_follows_the_paper_distribution() -> None:
    tasks = Sinusoid(shots=10, queries=15, seed=0)
    batch = tasks.sample(4000)
    assert batch.support_x.shape == (4000, 10, 1) and batch.query_y.shape == (4000, 15, 1)
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and abs(amp.mean().item() - 2.55) < 0.1
    assert 0 <= phase.min() and phase.max() <= math.pi
    assert batch.support_x.abs().max() <= 5.0
    expected = amp.view(-1, 1, 1) * torch.sin(batch.query_x - phase.view(-1, 1, 1))
    torch.testing.assert_close(batch.query_y, expected)


def test_lines_are_lines() -> None:
    batch = Linear(shots=2, queries=5, seed=3).sample(10)
    slope, intercept = batch.info["slope"], batch.info["intercept"]
    torch.testing.assert_close(batch.support_y,
                               slope.view(-1, 1, 1) * batch.support_x + intercept.view(-1, 1, 1))


def test_seeded_sampling_and_state_restore() -> None:
    a, b = Sinusoid(seed=5), Sinusoid(seed=5)
    assert torch.equal(a.sample(3).support_x, b.sample(3).support_x)
    state = a.state_dict()
    first = a.sample(3)
    a.load_state_dict(state)
    assert torch.equal(a.sample(3).query_y, first.query_y)
    fixed = a.fixed_tasks(5, seed=9)
    assert torch.equal(fixed.support_y, Sinusoid(seed=123).fixed_tasks(5, seed=9).support_y)


@pytest.mark.parametrize("kwargs, message", [
    ({"shots": 0}, "shots must be >= 1"),
    ({"queries": 0}, "queries must be >= 1"),
    ({"x_range": (1.0, -1.0)}, "low < high"),
])
def test_bad_task_settings_are_rejected(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Sinusoid(**kwargs)
