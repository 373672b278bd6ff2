"""Every algorithm: built by name, same gradients under vmap and loop, user models and losses."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import bn_cnn, flat_grad, image_batch, regression_batch
from torch import nn

from mamlkit import TaskBatch
from mamlkit.algorithms import (
    ALGORITHMS,
    FOMAML,
    LABELS,
    MAML,
    MAMLPlusPlus,
    RandomInitFineTune,
    algorithm_label,
    make_algorithm,
)


def shift_by_context(model: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """A user model receiving CAVIA's context as an extra input: a shift of its inputs."""
    return model(x + context.sum())


OPTIONS = {
    "imaml": {"cg_steps": 3},
    "mamlpp": {"msl_iterations": 10},
    "cavia": {"context_dim": 2, "context_forward": shift_by_context},
}
CLASSIFICATION_ONLY = {"protomaml", "protonets"}
"""Algorithms built on class prototypes (they refuse the MSE loss; tested in their own files)."""


def _build(name: str, model: nn.Module, **kwargs) -> object:
    options = dict(OPTIONS.get(name, {}))
    if name == "mamlpp" and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        options["per_step_bn_stats"] = True  # every MAML++ trick, BNRS included
    return make_algorithm(name, model, **{**options, **kwargs})


class Encoder(nn.Module):
    """A user model with its own structure: a body and a named head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def smoothed_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A user-supplied loss."""
    return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_vmap_and_loop_give_the_same_gradients(name: str) -> None:
    batch = image_batch(tasks=3)
    grads = {}
    for batching in ("vmap", "loop"):
        torch.manual_seed(0)
        learner = _build(name, bn_cnn(), inner_lr=0.3, inner_steps=2, loss="cross_entropy", batching=batching)
        grads[batching] = flat_grad(learner, batch)
    torch.testing.assert_close(grads["vmap"], grads["loop"], rtol=1e-9, atol=1e-11)
    if name != "randominit":
        assert grads["vmap"].abs().max() > 0


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_user_model_and_loss_train_and_adapt(name: str) -> None:
    model = Encoder().double()
    learner = _build(name, model, inner_lr=0.3, inner_steps=1, loss=smoothed_cross_entropy)
    batch = image_batch(tasks=2)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    for i in range(2):
        if hasattr(learner, "set_iteration"):
            learner.set_iteration(i)
        opt.zero_grad()
        loss, metrics = learner.meta_loss(batch)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and "query_loss" in metrics
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed == getattr(learner, "meta_trainable", True)
    learner.eval()
    params = learner.adapt(batch.support_x[0], batch.support_y[0], steps=2)
    assert learner.predict(params, batch.query_x[0]).shape == (6, 3)
    curve = learner.adaptation_curve(batch, steps=2)
    assert curve["query_loss"].shape == (3, 2)


def test_regression_works_for_every_algorithm() -> None:
    batch = regression_batch(tasks=2)
    for name in sorted(set(ALGORITHMS) - CLASSIFICATION_ONLY):
        model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1)).double()
        loss, _ = _build(name, model, inner_lr=0.05, inner_steps=2).meta_loss(batch)
        assert torch.isfinite(loss), name


def test_registry_names_aliases_and_errors() -> None:
    assert set(ALGORITHMS) == {"maml", "fomaml", "metasgd", "anil", "reptile", "mamlpp", "imaml",
                               "boil", "cavia", "protomaml", "protonets", "pretrained", "randominit"}
    model = nn.Linear(2, 1)
    assert isinstance(make_algorithm("MAML++", model), MAMLPlusPlus)
    assert isinstance(make_algorithm("meta-sgd", model), ALGORITHMS["metasgd"])
    assert isinstance(make_algorithm("random_init", model), RandomInitFineTune)
    learner = make_algorithm("fomaml", model, inner_lr=0.2)
    assert isinstance(learner, FOMAML) and learner.first_order and learner.inner_lr["weight"] == 0.2
    assert type(make_algorithm("maml", model)) is MAML
    with pytest.raises(ValueError, match="Known algorithms: maml, fomaml"):
        make_algorithm("mmal", model)
    assert set(LABELS) == set(ALGORITHMS)
    assert [algorithm_label(n) for n in ("maml", "Meta_SGD", "maml++", "imaml")] == [
        "MAML", "Meta-SGD", "MAML++", "iMAML"]
    assert isinstance(make_algorithm("Proto-MAML", nn.Sequential(nn.Linear(2, 3))),
                      ALGORITHMS["protomaml"])
    with pytest.raises(ValueError, match="BOIL's default head is the model's last nn.Linear"):
        make_algorithm("boil", nn.Conv1d(2, 2, 1))
    assert algorithm_label("proto_nets") == "ProtoNets"


def test_pretrained_minimises_the_joint_loss_without_adapting() -> None:
    model = nn.Linear(2, 1).double()
    batch = regression_batch(tasks=3)
    loss, metrics = make_algorithm("pretrained", model).meta_loss(batch)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    with torch.no_grad():
        expected = torch.stack([nn.functional.mse_loss(model(x[t]), y[t]) for t in range(3)]).mean()
    torch.testing.assert_close(loss.detach(), expected)
    assert metrics["joint_loss"] == pytest.approx(expected.item())


def test_random_init_reports_fine_tuned_loss_with_zero_gradient() -> None:
    model = nn.Linear(2, 1).double()
    batch = regression_batch(tasks=2)
    learner = make_algorithm("randominit", model, inner_lr=0.1, inner_steps=3)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert all(torch.all(p.grad == 0) for p in model.parameters())
    expected = MAML(model, inner_lr=0.1, inner_steps=3).meta_loss(batch)[0]
    torch.testing.assert_close(loss.detach(), expected.detach())


def test_batches_with_one_task_and_zero_inner_steps() -> None:
    batch = TaskBatch(*[t[:1] for t in (regression_batch().support_x, regression_batch().support_y,
                                        regression_batch().query_x, regression_batch().query_y)])
    for name in sorted(set(ALGORITHMS) - CLASSIFICATION_ONLY):
        model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        assert torch.isfinite(_build(name, model, inner_steps=0).meta_loss(batch)[0]), name
