"""Unmodified modules with BatchNorm, Dropout and LayerNorm give correct meta-gradients."""

from __future__ import annotations

import pytest
import torch
from gradcheck import analytic_meta_gradient, finite_difference_meta_gradient
from torch import nn

from mamlkit import MAML, TaskBatch


def _bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3 * 2 * 2, 3),
    ).double()


def _image_batch(tasks: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(tasks, 12, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(4).expand(tasks, 12).contiguous()
    return TaskBatch(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:])


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("steps", [1, 5])
def test_batchnorm_meta_gradient_matches_finite_differences(batching: str, steps: int) -> None:
    """Second order through nn.BatchNorm2d is exact, also under vmap (pytorch/functorch#534)."""
    learner = MAML(_bn_cnn(), inner_lr=0.3, inner_steps=steps, loss="cross_entropy",
                   batching=batching)
    batch = _image_batch()
    torch.testing.assert_close(analytic_meta_gradient(learner, batch),
                               finite_difference_meta_gradient(learner, batch), rtol=1e-5, atol=1e-8)


def test_transductive_batchnorm_never_touches_running_statistics() -> None:
    model = _bn_cnn()
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone())
    learner = MAML(model, inner_lr=0.3, loss="cross_entropy", batching="vmap")
    batch = _image_batch()
    learner.meta_loss(batch)[0].backward()
    learner.adapt(batch.support_x[0], batch.support_y[0], steps=2)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])


def test_transductive_batchnorm_uses_batch_statistics_in_eval_mode_too() -> None:
    model = _bn_cnn().eval()
    learner = MAML(model, loss="cross_entropy")
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64) * 5 + 3
    out = learner.predict(learner.meta_params(), x)
    model.train()
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(out, expected)


def test_dropout_under_vmap_draws_independent_masks_per_task() -> None:
    model = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5), nn.Linear(64, 1))
    learner = MAML(model, inner_lr=0.1, batching="vmap")
    x = torch.ones(1, 8, 4).expand(6, 8, 4).contiguous()
    y = torch.zeros(6, 8, 1)
    batch = TaskBatch(x, y, x, y)
    losses, _ = learner.batched_objective(batch)
    assert len(set(losses.tolist())) == 6  # identical tasks, different dropout masks


@pytest.mark.parametrize("norm", [nn.LayerNorm(8), nn.GroupNorm(2, 8)], ids=["layer", "group"])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_layer_and_group_norm_meta_gradients_match_finite_differences(norm, batching) -> None:
    """PyTorch's fused layer/group norm give wrong second order under vmap; ours must not."""
    model = nn.Sequential(nn.Linear(2, 8), norm, nn.GELU(), nn.Linear(8, 1)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 2, generator=g, dtype=torch.float64)
    batch = TaskBatch(x[:, :5], x[:, :5, :1], x[:, 5:], x[:, 5:, :1])
    learner = MAML(model, inner_lr=0.1, inner_steps=2, batching=batching)
    torch.testing.assert_close(analytic_meta_gradient(learner, batch),
                               finite_difference_meta_gradient(learner, batch), rtol=1e-5, atol=1e-8)


def test_adapt_builds_no_graph_and_predicts() -> None:
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
    learner = MAML(model, inner_lr=0.05)
    x = torch.linspace(-1, 1, 10).unsqueeze(-1)
    y = 3 * x
    adapted = learner.adapt(x, y, steps=5)
    assert all(not p.requires_grad for p in adapted.values())
    pred = learner.predict(adapted, x)
    assert pred.shape == (10, 1) and not pred.requires_grad
    before = torch.nn.functional.mse_loss(learner.predict(learner.meta_params(), x), y)
    after = torch.nn.functional.mse_loss(pred, y)
    assert after < before
    adapted_graph = learner.adapt(x, y, steps=1, create_graph=True)
    assert adapted_graph["0.weight"].requires_grad
