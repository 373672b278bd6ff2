"""CAVIA: only a zero-initialised context input adapts; the model is meta-learned through it."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import flat_grad, meta_loss_fd, mlp, regression_batch
from torch import nn
from torch.func import functional_call

from mamlkit.algorithms import CAVIA
from mamlkit.algorithms.cavia import CONTEXT, concat_context

CONTEXT_DIM = 3


class FiLM(nn.Module):
    """A network that takes the context as a second argument and scales its hidden units."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, 6)
        self.film = nn.Linear(CONTEXT_DIM, 12)
        self.out = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(context).chunk(2)
        return self.out(torch.tanh(self.hidden(x) * (1 + scale) + shift))


def concatenated(model: nn.Module, params: dict, x: torch.Tensor, context: torch.Tensor
                 ) -> torch.Tensor:
    return functional_call(model, params, (torch.cat([x, context.expand(x.shape[0], -1)], 1),))


def film_call(model: nn.Module, params: dict, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x, context))


def plain_cavia_gradient(model: nn.Module, call, batch, lr: float, steps: int, first_order: bool
                         ) -> torch.Tensor:
    """CAVIA's meta-gradient written out with autograd.grad: per task, a context from zeros,
    ``steps`` SGD steps on it, the query loss with the adapted context; mean over tasks."""
    theta = dict(model.named_parameters())
    total = 0
    for t in range(batch.num_tasks):
        context = torch.zeros(CONTEXT_DIM, dtype=torch.float64, requires_grad=True)
        for _ in range(steps):
            loss = nn.functional.mse_loss(call(model, theta, batch.support_x[t], context),
                                          batch.support_y[t])
            (grad,) = torch.autograd.grad(loss, context, create_graph=not first_order)
            context = context - lr * grad
        total = total + nn.functional.mse_loss(call(model, theta, batch.query_x[t], context),
                                               batch.query_y[t])
    grads = torch.autograd.grad(total / batch.num_tasks, list(theta.values()), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(theta.values(), grads)])


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_meta_gradient_matches_a_plain_autograd_loop(first_order: bool, batching: str) -> None:
    model, batch = mlp(inputs=2 + CONTEXT_DIM), regression_batch()
    cavia = CAVIA(model, context_dim=CONTEXT_DIM, inner_lr=0.7, inner_steps=2,
                  first_order=first_order, batching=batching)
    expected = plain_cavia_gradient(model, concatenated, batch, 0.7, 2, first_order)
    torch.testing.assert_close(flat_grad(cavia, batch), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_context_forward_gradient_matches_the_loop_and_finite_differences(batching: str) -> None:
    model, batch = FiLM().double(), regression_batch(tasks=2)
    cavia = CAVIA(model, context_dim=CONTEXT_DIM, inner_lr=0.5, inner_steps=2, batching=batching,
                  context_forward=lambda module, x, context: module(x, context))
    got = flat_grad(cavia, batch)
    torch.testing.assert_close(got, plain_cavia_gradient(model, film_call, batch, 0.5, 2, False),
                               rtol=1e-10, atol=1e-12)
    if batching == "vmap":
        torch.testing.assert_close(got, meta_loss_fd(cavia, batch), rtol=1e-6, atol=1e-8)


def test_adapt_moves_only_the_context_and_predict_uses_it() -> None:
    model, batch = mlp(inputs=2 + CONTEXT_DIM), regression_batch()
    cavia = CAVIA(model, context_dim=CONTEXT_DIM, inner_lr=0.7, inner_steps=3)
    params = cavia.adapt(batch.support_x[0], batch.support_y[0])
    assert params[CONTEXT].shape == (CONTEXT_DIM,) and params[CONTEXT].abs().sum() > 0
    for name, value in model.named_parameters():
        assert torch.equal(params[name], value)
    meta = {n: p.detach() for n, p in model.named_parameters()}
    expected = concatenated(model, meta, batch.query_x[0], params[CONTEXT])
    torch.testing.assert_close(cavia.predict(params, batch.query_x[0]), expected)
    curve = cavia.adaptation_curve(batch, steps=3)["query_loss"]
    assert curve.shape == (4, batch.num_tasks)


def test_images_get_the_context_as_constant_channels() -> None:
    x = torch.randn(4, 2, 5, 5)
    joined = concat_context(x, torch.tensor([1.0, -2.0]))
    assert joined.shape == (4, 4, 5, 5)
    assert torch.equal(joined[:, :2], x) and torch.all(joined[:, 3] == -2.0)
    with pytest.raises(ValueError, match="floating-point inputs"):
        concat_context(torch.ones(4, 7, dtype=torch.long), torch.zeros(2))  # token ids


def test_refuses_what_does_not_apply() -> None:
    with pytest.raises(ValueError, match="Drop adapt="):
        CAVIA(mlp(inputs=7), adapt="0")
    with pytest.raises(ValueError, match="context_dim"):
        CAVIA(mlp(inputs=7), context_dim=0)
    with pytest.raises(ValueError, match="pass a float"):
        CAVIA(mlp(inputs=7), inner_lr={"0.weight": 0.1})
