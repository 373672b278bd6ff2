"""Reptile: the delivered gradient is theta - phi, and an SGD step is the paper's update."""

from __future__ import annotations

import copy

import pytest
import torch
from algorithm_checks import mlp, regression_batch

from mamlkit import TaskBatch
from mamlkit.algorithms import Reptile


def _phi_by_definition(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                       optimizer: str) -> list[torch.Tensor]:
    """k steps of torch.optim on a copy of the model: the task-adapted weights phi."""
    task_model = copy.deepcopy(model)
    if optimizer == "sgd":
        opt = torch.optim.SGD(task_model.parameters(), lr=lr)
    else:
        opt = torch.optim.Adam(task_model.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(task_model(x), y).backward()
        opt.step()
    return [p.detach() for p in task_model.parameters()]


def _definition_update(model, batch: TaskBatch, steps: int, lr: float, optimizer: str, data: str):
    diffs = None
    for t in range(batch.num_tasks):
        if data == "support+query":
            x = torch.cat([batch.support_x[t], batch.query_x[t]])
            y = torch.cat([batch.support_y[t], batch.query_y[t]])
        else:
            x, y = batch.support_x[t], batch.support_y[t]
        phi = _phi_by_definition(model, x, y, steps, lr, optimizer)
        d = [theta.detach() - p for theta, p in zip(model.parameters(), phi)]
        diffs = d if diffs is None else [a + b for a, b in zip(diffs, d)]
    return [d / batch.num_tasks for d in diffs]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("data", ["support+query", "support"])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_gradient_is_mean_of_theta_minus_phi(optimizer: str, data: str, batching: str) -> None:
    model = mlp()
    batch = regression_batch(tasks=3)
    learner = Reptile(model, inner_lr=0.05, inner_steps=4, inner_optimizer=optimizer, inner_data=data,
                      batching=batching)
    learner.zero_grad()
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    expected = _definition_update(model, batch, 4, 0.05, optimizer, data)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)
    assert loss.item() == pytest.approx(metrics["query_loss"])


def test_outer_sgd_step_is_the_papers_update() -> None:
    """theta <- theta + eps * mean(phi - theta) with torch.optim.SGD(lr=eps)."""
    model = mlp()
    batch = regression_batch(tasks=4)
    eps = 0.7
    theta = [p.detach().clone() for p in model.parameters()]
    expected_step = _definition_update(model, batch, 3, 0.02, "sgd", "support+query")
    learner = Reptile(model, inner_lr=0.02, inner_steps=3)
    opt = torch.optim.SGD(learner.parameters(), lr=eps)
    opt.zero_grad()
    learner.meta_loss(batch)[0].backward()
    opt.step()
    for p, t, d in zip(model.parameters(), theta, expected_step):
        torch.testing.assert_close(p.detach(), t - eps * d, rtol=1e-12, atol=1e-12)


def test_non_adapted_parameters_get_zero_gradient() -> None:
    model = mlp()
    learner = Reptile(model, inner_lr=0.05, inner_steps=2, adapt="2")
    learner.meta_loss(regression_batch())[0].backward()
    assert torch.all(model[0].weight.grad == 0) and torch.any(model[2].weight.grad != 0)


def test_bad_options_name_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        Reptile(mlp(), inner_optimizer="rmsprop")
    with pytest.raises(ValueError, match="choose one of"):
        Reptile(mlp(), inner_data="query")
    with pytest.raises(ValueError, match="drop first_order"):
        Reptile(mlp(), first_order=True)
    with pytest.raises(ValueError, match="adam_betas"):
        Reptile(mlp(), adam_betas=(1.0, 0.9))
