"""Bad input to the engine gets one clear error naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mamlkit import MAML, TaskBatch
from mamlkit.algorithms import make_algorithm


def _batch(**shapes) -> TaskBatch:
    spec = {"support_x": (2, 5, 1), "support_y": (2, 5, 1), "query_x": (2, 5, 1),
            "query_y": (2, 5, 1), **shapes}
    return TaskBatch(**{k: torch.randn(v) for k, v in spec.items()})


@pytest.mark.parametrize("shapes, message", [
    ({"support_y": (2, 4, 1)}, "support_x has 5 examples per task but support_y has 4"),
    ({"query_x": (3, 5, 1)}, "disagree on the number of tasks"),
    ({"query_x": (2, 5, 2)}, "same input space"),
    ({"query_y": (2, 5, 3)}, "targets must match"),
    ({"support_x": (5,)}, r"expected \[tasks, examples, ...\]"),
])
def test_mismatched_support_and_query_shapes(shapes, message) -> None:
    with pytest.raises(ValueError, match=message):
        _batch(**shapes)


def test_loss_that_is_not_a_scalar_per_task() -> None:
    learner = MAML(nn.Linear(1, 1), loss=lambda out, y: (out - y) ** 2)
    with pytest.raises(ValueError, match="loss must return a scalar tensor per task"):
        learner.meta_loss(_batch())


def test_negative_inner_steps_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 0"):
        MAML(nn.Linear(1, 1), inner_steps=-1)
    with pytest.raises(ValueError, match="must be a positive number"):
        MAML(nn.Linear(1, 1), inner_lr=0.0)
    with pytest.raises(ValueError, match="missing"):
        MAML(nn.Linear(1, 1), inner_lr={"weight": 0.1})


def test_model_input_mismatch_is_explained() -> None:
    learner = MAML(nn.Linear(3, 1))
    with pytest.raises(ValueError, match="model cannot run on this task batch's inputs"):
        learner.meta_loss(_batch())


def test_mse_output_shape_mismatch() -> None:
    learner = MAML(nn.Linear(1, 2))
    with pytest.raises(ValueError, match="for the MSE loss they must match"):
        learner.meta_loss(_batch())


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="Unknown loss 'l3'"):
        MAML(nn.Linear(1, 1), loss="l3")
    with pytest.raises(ValueError, match="Unknown batching"):
        MAML(nn.Linear(1, 1), batching="threads")
    with pytest.raises(ValueError, match="matches no parameter"):
        MAML(nn.Linear(1, 1), adapt="head")
    with pytest.raises(ValueError, match="Unknown algorithm 'mamll'"):
        make_algorithm("mamll", nn.Linear(1, 1))
