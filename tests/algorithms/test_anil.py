"""ANIL: MAML's gradient with only the head adapting, with the body run once per task."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import bn_cnn, flat_grad, image_batch, meta_loss_fd, mlp, regression_batch
from torch import nn

from mamlkit import MAML
from mamlkit.algorithms import ANIL


class CountingBody(nn.Module):
    """A body that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.layer(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = CountingBody()
        self.classifier = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_same_gradient_as_maml_with_the_head_adapting(first_order: bool, batching: str) -> None:
    model = mlp()
    batch = regression_batch()
    maml = MAML(model, inner_lr=0.3, inner_steps=3, adapt="2", first_order=first_order, batching=batching)
    anil = ANIL(model, inner_lr=0.3, inner_steps=3, first_order=first_order, batching=batching)
    assert anil.adapted_names == ("2.weight", "2.bias")
    torch.testing.assert_close(flat_grad(anil, batch), flat_grad(maml, batch), rtol=1e-10, atol=1e-12)


def test_second_order_gradient_matches_finite_differences() -> None:
    learner = ANIL(mlp(), inner_lr=0.3, inner_steps=2)
    batch = regression_batch()
    torch.testing.assert_close(flat_grad(learner, batch), meta_loss_fd(learner, batch), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_body_runs_once_per_split_not_once_per_step(batching: str) -> None:
    model = Net().double()
    batch = regression_batch(tasks=2)
    steps = 5
    anil = ANIL(model, inner_lr=0.1, inner_steps=steps, batching=batching)
    anil.meta_loss(batch)  # first call also checks the head once
    model.body.calls = 0
    anil.meta_loss(batch)
    per_task = 1 if batching == "vmap" else batch.num_tasks
    assert model.body.calls == 2 * per_task  # support once + query once
    maml = MAML(model, inner_lr=0.1, inner_steps=steps, adapt="classifier", batching=batching)
    maml.meta_loss(batch)
    model.body.calls = 0
    maml.meta_loss(batch)
    assert model.body.calls == (steps + 1) * per_task
    model.body.calls = 0
    anil.adapt(batch.support_x[0], batch.support_y[0], steps=10)
    assert model.body.calls == 1


def test_head_by_name_and_default_last_linear() -> None:
    assert ANIL(Net()).head_name == "classifier"
    assert ANIL(Net(), head="classifier").adapted_names == ("classifier.weight", "classifier.bias")
    cnn = bn_cnn()
    learner = ANIL(cnn, inner_lr=0.4, loss="cross_entropy")
    assert learner.head_name == "5"
    loss, metrics = learner.meta_loss(image_batch())
    assert torch.isfinite(loss) and "query_accuracy" in metrics


def test_bad_heads_are_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match="not a submodule"):
        ANIL(Net(), head="decoder")
    with pytest.raises(ValueError, match="no Linear"):
        ANIL(nn.Sequential(nn.Conv1d(1, 1, 1), nn.Flatten()))
    with pytest.raises(ValueError, match="instead of adapt"):
        ANIL(Net(), adapt="classifier")
    with pytest.raises(ValueError, match="head to be the last module"):
        learner = ANIL(nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 1), nn.Tanh()).double(), head="1")
        learner.meta_loss(regression_batch())


class TwiceHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 1)
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head(self.body(x)))


def test_heads_without_parameters_or_applied_twice_are_rejected() -> None:
    with pytest.raises(ValueError, match="no parameters to adapt"):
        ANIL(nn.Sequential(nn.Linear(2, 1), nn.Tanh()).double(), head="1")
    learner = ANIL(TwiceHead().double(), head="head")
    with pytest.raises(ValueError, match="ran 2 times"):
        learner.meta_loss(regression_batch())

