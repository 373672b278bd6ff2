"""BOIL: the body adapts, the head is frozen in the inner loop and meta-learned in the outer."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import bn_cnn, flat_grad, image_batch, mlp, regression_batch
from torch.func import functional_call

from mamlkit.algorithms import BOIL, make_algorithm


def plain_boil_gradient(model: torch.nn.Module, batch, lr: float, steps: int, first_order: bool
                        ) -> torch.Tensor:
    """BOIL's meta-gradient written out: per task, ``steps`` SGD steps on the body only (plain
    autograd.grad), query loss at the adapted body and the meta head; mean over tasks."""
    theta = dict(model.named_parameters())
    total = 0
    for t in range(batch.num_tasks):
        body = {n: p for n, p in theta.items() if not n.startswith("2.")}
        head = {n: p for n, p in theta.items() if n.startswith("2.")}
        for _ in range(steps):
            out = functional_call(model, {**body, **head}, (batch.support_x[t],))
            loss = torch.nn.functional.mse_loss(out, batch.support_y[t])
            grads = torch.autograd.grad(loss, list(body.values()), create_graph=not first_order)
            body = {n: p - lr * g for (n, p), g in zip(body.items(), grads)}
        out = functional_call(model, {**body, **head}, (batch.query_x[t],))
        total = total + torch.nn.functional.mse_loss(out, batch.query_y[t])
    grads = torch.autograd.grad(total / batch.num_tasks, list(theta.values()))
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_meta_gradient_matches_a_plain_autograd_loop(first_order: bool, batching: str) -> None:
    model, batch = mlp(), regression_batch()
    boil = BOIL(model, inner_lr=0.3, inner_steps=2, first_order=first_order, batching=batching)
    assert boil.head_name == "2" and boil.adapted_names == ("0.weight", "0.bias")
    expected = plain_boil_gradient(model, batch, 0.3, 2, first_order)
    got = flat_grad(boil, batch)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got[-9:].abs().sum() > 0  # the head (8 weights, 1 bias) is meta-learned


def test_adaptation_leaves_the_head_alone_and_moves_the_body() -> None:
    model, batch = bn_cnn(), image_batch()
    boil = make_algorithm("boil", model, inner_lr=0.5, inner_steps=2, loss="cross_entropy")
    params = boil.adapt(batch.support_x[0], batch.support_y[0])
    for name, value in model.named_parameters():
        moved = not torch.equal(params[name], value)
        assert moved == (not name.startswith("5.")), name
    assert boil.meta_loss(batch)[1]["query_accuracy"] >= 0


def test_refuses_adapt_and_a_head_without_body() -> None:
    with pytest.raises(ValueError, match="head='<module name>' instead of adapt="):
        BOIL(mlp(), adapt="0")
    with pytest.raises(ValueError, match="no body is left"):
        BOIL(torch.nn.Sequential(torch.nn.Linear(2, 1)))
