"""iMAML: the implicit meta-gradient equals the exact gradient through a converged inner problem."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import mlp, regression_batch
from torch import nn
from torch.func import vmap

from mamlkit import TaskBatch
from mamlkit.algorithms import IMAML
from mamlkit.algorithms.imaml import conjugate_gradient, stationarity_residual


def _linear_batch(tasks: int = 3, n: int = 6, dim: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(tasks, 2 * n, dim, generator=g, dtype=torch.float64)
    w_true = torch.randn(tasks, dim, 1, generator=g, dtype=torch.float64)
    y = x @ w_true + 0.1 * torch.randn(tasks, 2 * n, 1, generator=g, dtype=torch.float64)
    return TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


def _closed_form(theta: torch.Tensor, batch: TaskBatch, lam: float) -> torch.Tensor:
    """Mean over tasks of d L_q(phi*(theta)) / d theta for y = X w, MSE, proximal inner problem.

    phi* solves (H + lam I) phi = 2/n X^T y + lam theta with H = 2/n X^T X, so
    d phi*/d theta = lam (H + lam I)^-1 and the meta-gradient is lam (H + lam I)^-1 grad L_q(phi*).
    """
    total = torch.zeros_like(theta)
    eye = torch.eye(theta.shape[0], dtype=theta.dtype)
    for t in range(batch.num_tasks):
        xs, ys, xq, yq = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
        hess = 2 * xs.T @ xs / xs.shape[0]
        phi = torch.linalg.solve(hess + lam * eye, 2 * xs.T @ ys / xs.shape[0] + lam * theta)
        grad_q = 2 * xq.T @ (xq @ phi - yq) / xq.shape[0]
        total += lam * torch.linalg.solve(hess + lam * eye, grad_q)
    return total / batch.num_tasks


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_implicit_gradient_equals_closed_form_on_linear_regression(batching: str, lam: float) -> None:
    model = nn.Linear(3, 1, bias=False).double()
    batch = _linear_batch()
    # Step size for fast contraction given the support Hessians' spectrum (about [0.15, 3.6]).
    learner = IMAML(model, regularization=lam, inner_lr=1.8 / (2 * lam + 3.7), inner_steps=150,
                    cg_steps=10, batching=batching)
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    expected = _closed_form(model.weight.detach().T, batch, lam)
    torch.testing.assert_close(model.weight.grad, expected.T, rtol=1e-9, atol=1e-11)
    # The surrogate's value is the query loss at the inner solution.
    with torch.no_grad():
        adapted = [learner.adapt(batch.support_x[t], batch.support_y[t]) for t in range(3)]
        query = [torch.nn.functional.mse_loss(learner.predict(a, batch.query_x[t]), batch.query_y[t])
                 for t, a in enumerate(adapted)]
    assert loss.item() == pytest.approx(torch.stack(query).mean().item(), rel=1e-12)


def _unrolled_gradient(learner: IMAML, batch: TaskBatch) -> torch.Tensor:
    """Exact second-order gradient by differentiating through every inner step."""
    learner.zero_grad()
    params = learner.meta_params()
    total = 0
    for t in range(batch.num_tasks):
        trajectory, _ = learner.inner_loop(params, batch.support_x[t], batch.support_y[t],
                                           learner.inner_steps, first_order=False)
        total = total + learner.task_loss(trajectory[-1], batch.query_x[t], batch.query_y[t])[0]
    (total / batch.num_tasks).backward()
    return torch.cat([p.grad.flatten() for p in learner.parameters()])


@pytest.mark.parametrize("adapt", [None, "2"], ids=["all", "head-only"])
def test_implicit_gradient_equals_unrolled_gradient_at_convergence(adapt) -> None:
    """Non-linear network; with a frozen body its implicit (mixed second-order) gradient too."""
    learner = IMAML(mlp(), regularization=2.0, inner_lr=0.1, inner_steps=250, cg_steps=60, adapt=adapt)
    batch = regression_batch(tasks=2, n=5)
    exact = _unrolled_gradient(learner, batch)
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    implicit = torch.cat([p.grad.flatten() for p in learner.parameters()])
    torch.testing.assert_close(implicit, exact, rtol=1e-7, atol=1e-9)


def test_implicit_gradient_is_not_the_first_order_one() -> None:
    """The CG correction matters: (I + H/lam)^-1 g differs from g."""
    model = nn.Linear(3, 1, bias=False).double()
    batch = _linear_batch()
    learner = IMAML(model, regularization=0.5, inner_lr=0.3, inner_steps=100, cg_steps=10)
    learner.meta_loss(batch)[0].backward()
    implicit = model.weight.grad.clone()
    learner.cg_steps = 1
    model.weight.grad = None
    learner.meta_loss(batch)[0].backward()
    assert (implicit - model.weight.grad).abs().max() > 1e-3


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_inner_residual_tells_a_solved_inner_problem_from_an_unsolved_one(batching: str) -> None:
    """0 at the closed-form solution; near 1 when a few tiny steps leave phi close to theta."""
    batch = _linear_batch()
    solved = IMAML(nn.Linear(3, 1, bias=False).double(), regularization=2.0, inner_lr=1.8 / 7.7,
                   inner_steps=150, batching=batching)
    assert solved.meta_loss(batch)[1]["inner_residual"] < 1e-9
    unsolved = IMAML(nn.Linear(3, 1, bias=False).double(), regularization=2.0, inner_lr=1e-3,
                     inner_steps=2, batching=batching)
    assert unsolved.meta_loss(batch)[1]["inner_residual"] > 0.9


def test_stationarity_residual_is_the_relative_norm_of_the_proximal_gradient() -> None:
    f64 = torch.float64
    g = {"a": torch.tensor([1.0, -2.0], dtype=f64), "b": torch.tensor([[0.5]], dtype=f64)}
    theta = {"a": torch.zeros(2, dtype=f64), "b": torch.zeros(1, 1, dtype=f64)}
    phi = {"a": torch.tensor([-0.25, 1.0], dtype=f64), "b": torch.tensor([[0.0]], dtype=f64)}
    lam = 2.0

    def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.flatten() for v in d.values()])

    pull = lam * (flat(phi) - flat(theta))
    expected = (flat(g) + pull).norm() / (flat(g).norm() + pull.norm())
    torch.testing.assert_close(stationarity_residual(g, phi, theta, lam), expected)
    torch.testing.assert_close(stationarity_residual(g, theta, theta, lam),
                               torch.tensor(1.0, dtype=f64))
    exact = {n: theta[n] - g[n] / lam for n in g}
    assert stationarity_residual(g, exact, theta, lam) == 0


def test_adam_inner_solver_is_torch_adam_on_the_proximal_objective() -> None:
    learner = IMAML(mlp(), regularization=3.0, inner_lr=0.05, inner_steps=7, inner_optimizer="adam",
                    adam_betas=(0.8, 0.99))
    batch = regression_batch(tasks=1)
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    theta = {n: p.detach().clone() for n, p in learner.meta_params().items()}
    phi = {n: p.clone().requires_grad_() for n, p in theta.items()}
    optimizer = torch.optim.Adam(phi.values(), lr=0.05, betas=(0.8, 0.99), eps=1e-8)
    for _ in range(7):
        optimizer.zero_grad()
        outputs = torch.func.functional_call(learner.model, phi, (batch.support_x[0],))
        loss = nn.functional.mse_loss(outputs, batch.support_y[0])
        loss = loss + 1.5 * sum(((phi[n] - theta[n]) ** 2).sum() for n in phi)
        loss.backward()
        optimizer.step()
    for name in phi:
        torch.testing.assert_close(adapted[name], phi[name].detach(), rtol=1e-10, atol=1e-12)


def test_adam_inner_solver_reaches_the_closed_form_gradient() -> None:
    batch = _linear_batch()
    model = nn.Linear(3, 1, bias=False).double()
    learner = IMAML(model, regularization=2.0, inner_lr=0.02, inner_steps=600, cg_steps=10,
                    inner_optimizer="adam")
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    assert metrics["inner_residual"] < 1e-3
    expected = _closed_form(model.weight.detach().T, batch, 2.0)
    torch.testing.assert_close(model.weight.grad, expected.T, rtol=1e-3, atol=1e-5)


def test_conjugate_gradient_solves_spd_systems_under_vmap() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 5, 5, generator=g, dtype=torch.float64)
    a = m @ m.transpose(1, 2) + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(4, 5, generator=g, dtype=torch.float64)

    def solve(a1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        return conjugate_gradient(lambda v: {"x": a1 @ v["x"]}, {"x": b1}, steps=12)["x"]

    torch.testing.assert_close(vmap(solve)(a, b), torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1))
    zero = conjugate_gradient(lambda v: v, {"x": torch.zeros(3, dtype=torch.float64)}, steps=3)["x"]
    assert torch.equal(zero, torch.zeros(3, dtype=torch.float64))  # no 0/0


def test_inner_loop_keeps_no_graph_to_the_meta_parameters() -> None:
    learner = IMAML(mlp(), inner_steps=5)
    batch = regression_batch(tasks=1)
    params = learner.meta_params()
    trajectory, _ = learner._proximal_steps({n: p.detach() for n, p in params.items()},
                                            batch.support_x[0], batch.support_y[0], 5, keep=False)
    assert len(trajectory) == 2 and not any(p.requires_grad for p in trajectory[-1].values())


def test_bad_options_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match="positive number"):
        IMAML(mlp(), regularization=0.0)
    with pytest.raises(ValueError, match="cg_steps"):
        IMAML(mlp(), cg_steps=0)
    with pytest.raises(ValueError, match="drop first_order"):
        IMAML(mlp(), first_order=True)
    with pytest.raises(ValueError, match="'sgd', 'adam'"):
        IMAML(mlp(), inner_optimizer="lbfgs")
    with pytest.raises(ValueError, match="adam_betas"):
        IMAML(mlp(), inner_optimizer="adam", adam_betas=(0.9, 1.0))
