"""ProtoMAML: MAML from a head set to 2 c_k and -||c_k||^2 by the support set's prototypes."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import bn_cnn, flat_grad, image_batch, mlp
from torch import nn

from mamlkit import TaskBatch
from mamlkit.algorithms import ProtoMAML, ProtoNets


def classification_batch(tasks: int = 3, ways: int = 3, shots: int = 2, seed: int = 5) -> TaskBatch:
    """Random 2-d points, ``shots`` support and query examples per class (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 2 * ways * shots, 2, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat(2 * shots).expand(tasks, -1).contiguous()
    half = ways * shots
    return TaskBatch(x[:, :half], y[:, :half], x[:, half:], y[:, half:])


def plain_proto_maml_gradient(model: nn.Sequential, batch: TaskBatch, lr: float, steps: int,
                              first_order: bool) -> torch.Tensor:
    """The meta-gradient written out for Linear-Tanh-Linear: embed the support set, set the head
    from the class means, SGD on every parameter with autograd.grad, query cross-entropy.

    The inner gradients are partial derivatives: they are taken with respect to copies of the
    body's parameters used only in the inner loop, so the body's gradient holds the head fixed
    (the head's initialisation is computed from the originals). Under ``first_order`` they are
    taken at detached values."""
    w0, b0, w1, b1 = model[0].weight, model[0].bias, model[2].weight, model[2].bias
    ways = w1.shape[0]
    total = 0
    for t in range(batch.num_tasks):
        sx, sy = batch.support_x[t], batch.support_y[t]
        z = torch.tanh(sx @ w0.T + b0)
        c = torch.stack([z[sy == k].mean(0) for k in range(ways)])
        fast = [w0.clone(), b0.clone(), 2 * c, -(c * c).sum(1)]
        for _ in range(steps):
            at = [p.detach().requires_grad_() for p in fast] if first_order else fast
            logits = torch.tanh(sx @ at[0].T + at[1]) @ at[2].T + at[3]
            loss = nn.functional.cross_entropy(logits, sy)
            grads = torch.autograd.grad(loss, at, create_graph=not first_order)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        logits = torch.tanh(batch.query_x[t] @ fast[0].T + fast[1]) @ fast[2].T + fast[3]
        total = total + nn.functional.cross_entropy(logits, batch.query_y[t])
    params = [w0, b0, w1, b1]
    grads = torch.autograd.grad(total / batch.num_tasks, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(params, grads)])


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_meta_gradient_matches_a_plain_autograd_loop(first_order: bool, batching: str) -> None:
    model, batch = mlp(outputs=3), classification_batch()
    learner = ProtoMAML(model, inner_lr=0.4, inner_steps=2, first_order=first_order,
                        batching=batching)
    expected = plain_proto_maml_gradient(model, batch, 0.4, 2, first_order)
    got = flat_grad(learner, batch)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got[:24].abs().sum() > 0 and got[-27:].abs().sum() == 0  # the head is replaced


def test_before_any_step_it_is_a_prototypical_network() -> None:
    model, batch = bn_cnn(), image_batch()
    proto_maml = ProtoMAML(model, inner_steps=0)
    protonets = ProtoNets(model)
    for t in range(batch.num_tasks):
        start = proto_maml.adapt(batch.support_x[t], batch.support_y[t])
        logits = proto_maml.predict(start, batch.query_x[t])
        distances = protonets.predict(protonets.adapt(batch.support_x[t], batch.support_y[t]),
                                      batch.query_x[t])
        torch.testing.assert_close(logits.softmax(-1), distances.softmax(-1))
    torch.testing.assert_close(proto_maml.meta_loss(batch)[0], protonets.meta_loss(batch)[0])


def test_refuses_regression_and_heads_that_are_not_linear() -> None:
    with pytest.raises(ValueError, match="for regression use maml, boil or cavia"):
        ProtoMAML(mlp(), loss="mse")
    with pytest.raises(ValueError, match="name an nn.Linear with a bias"):
        ProtoMAML(nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 3, bias=False)))
