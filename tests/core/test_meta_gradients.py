"""Meta-gradients against independent computations: finite differences and a closed form."""

from __future__ import annotations

import pytest
import torch
from gradcheck import analytic_meta_gradient, finite_difference_meta_gradient
from torch import nn

from mamlkit import MAML, TaskBatch


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _regression_batch(tasks: int = 3, n: int = 6) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tasks, 2 * n, 2, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.1 * torch.randn(tasks, 2 * n, 1, generator=g,
                                                                 dtype=torch.float64)
    return TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_second_order_matches_finite_differences(steps: int, batching: str) -> None:
    learner = MAML(_mlp(), inner_lr=0.1, inner_steps=steps, batching=batching)
    batch = _regression_batch()
    analytic = analytic_meta_gradient(learner, batch)
    numeric = finite_difference_meta_gradient(learner, batch)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_first_order_is_not_the_finite_difference_gradient() -> None:
    """FOMAML drops a real term: it must differ from the exact meta-gradient."""
    batch = _regression_batch()
    exact = finite_difference_meta_gradient(MAML(_mlp(), inner_lr=0.1, inner_steps=2), batch)
    torch.manual_seed(0)
    first = analytic_meta_gradient(MAML(_mlp(), inner_lr=0.1, inner_steps=2, first_order=True), batch)
    assert (first - exact).abs().max() > 1e-4


def _linear_closed_form(w, xs, ys, xq, yq, lr):
    """MAML meta-gradient of y = X w with MSE, one inner step, derived by hand.

    L(w) = |Xw - y|^2 / n; grad = 2 X^T (Xw - y) / n; Hessian H = 2 X^T X / n.
    w' = w - lr * grad_s(w); d L_q(w') / dw = (I - lr * H_s) grad_q(w').
    """
    n_s, n_q = xs.shape[0], xq.shape[0]
    grad_s = 2 * xs.T @ (xs @ w - ys) / n_s
    w_adapted = w - lr * grad_s
    grad_q = 2 * xq.T @ (xq @ w_adapted - yq) / n_q
    hess_s = 2 * xs.T @ xs / n_s
    second = grad_q - lr * hess_s @ grad_q
    return second, grad_q


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_linear_model_meta_gradient_has_closed_form(batching: str) -> None:
    lr = 0.05
    model = nn.Linear(3, 1, bias=False).double()
    batch = _regression_batch(tasks=4, n=5)
    xs = torch.cat([batch.support_x, torch.ones_like(batch.support_x[..., :1])], -1)
    xq = torch.cat([batch.query_x, torch.ones_like(batch.query_x[..., :1])], -1)
    batch = TaskBatch(xs, batch.support_y, xq, batch.query_y)
    w = model.weight.detach().T.clone()
    expected_second = torch.zeros_like(w)
    expected_first = torch.zeros_like(w)
    for t in range(batch.num_tasks):
        s, f = _linear_closed_form(w, xs[t], batch.support_y[t], xq[t], batch.query_y[t], lr)
        expected_second += s / batch.num_tasks
        expected_first += f / batch.num_tasks

    second = analytic_meta_gradient(MAML(model, inner_lr=lr, batching=batching), batch)
    first = analytic_meta_gradient(MAML(model, inner_lr=lr, first_order=True, batching=batching), batch)
    torch.testing.assert_close(second, expected_second.flatten(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(first, expected_first.flatten(), rtol=1e-10, atol=1e-12)
    # First order differs from second order by exactly the second-order term -lr * H_s grad_q.
    term = torch.zeros_like(w)
    for t in range(batch.num_tasks):
        s, f = _linear_closed_form(w, xs[t], batch.support_y[t], xq[t], batch.query_y[t], lr)
        term += (s - f) / batch.num_tasks
    torch.testing.assert_close(second - first, term.flatten(), rtol=1e-10, atol=1e-12)


def test_vmap_and_loop_give_identical_gradients() -> None:
    batch = _regression_batch(tasks=5)
    learner = MAML(_mlp(), inner_lr=0.1, inner_steps=2)
    grads = {}
    for mode in ("vmap", "loop"):
        learner.batching = mode
        grads[mode] = analytic_meta_gradient(learner, batch)
    torch.testing.assert_close(grads["vmap"], grads["loop"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_chunked_backward_equals_whole_batch(batching: str) -> None:
    batch = _regression_batch(tasks=5)
    whole = MAML(_mlp(), inner_lr=0.1, batching=batching)
    expected = analytic_meta_gradient(whole, batch)
    whole.chunk_size = 2
    whole.zero_grad()
    metrics = whole.meta_backward(batch)
    got = torch.cat([p.grad.flatten() for p in whole.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert metrics["loss"] == pytest.approx(whole.meta_loss(batch)[0].item())


def test_frozen_parameters_do_not_adapt_but_are_meta_learned() -> None:
    """ANIL-style selection: the body is excluded from the inner loop only."""
    model = _mlp()
    learner = MAML(model, inner_lr=0.1, adapt="2")
    assert learner.adapted_names == ("2.weight", "2.bias")
    batch = _regression_batch()
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert torch.equal(adapted["0.weight"], model[0].weight)
    assert not torch.equal(adapted["2.weight"], model[2].weight)
    analytic = analytic_meta_gradient(learner, batch)
    numeric = finite_difference_meta_gradient(learner, batch)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
