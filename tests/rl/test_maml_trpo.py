"""MAML-TRPO: the KL-Hessian-vector product through the inner step, the meta-gradient, and one
meta-iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamlkit.rl.losses import surrogate_and_kl
from mamlkit.rl.maml_trpo import MAMLTRPO, MetaObjective
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.rl.sampler import TaskSampler
from mamlkit.rl.trpo import TRPOSettings, conjugate_gradient


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _TanhPolicy(torch.nn.Module):
    """A Gaussian policy the closed forms do not cover (tanh units)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        self.log_std = torch.nn.Parameter(torch.zeros(2))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)
        return mean, self.log_std.expand_as(mean)


def _objective(inner_steps: int, first_order: bool = False,
               hvp_mode: str = "auto") -> MetaObjective:
    torch.manual_seed(0)
    sampler = TaskSampler("nav2d", horizon=10)
    policy = GaussianMLPPolicy(2, 2, (8, 8), init_std=0.5).double()
    learner = MAMLTRPO(policy, sampler, inner_lr=0.5, inner_steps=inner_steps,
                       first_order=first_order, trajectories=4, hvp_mode=hvp_mode)
    tasks = sampler.sample_tasks(3, np.random.default_rng(0))
    return learner.collect(tasks, seed=0)


def _outer_grads(objective: MetaObjective, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of the surrogate and of the KL w.r.t. theta, by autograd through adaptation."""
    theta = {n: t.clone().requires_grad_() for n, t in objective.unflatten(flat).items()}
    adapted = objective.adapt_with_graph(theta)
    loss, kl = surrogate_and_kl(objective.policy, adapted, objective.valid,
                                objective.valid_advantages, objective.old_mean,
                                objective.old_log_std)
    out = []
    for value in (loss.mean(), kl.mean()):
        grads = torch.autograd.grad(value, list(theta.values()), retain_graph=True)
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return tuple(out)


@pytest.mark.parametrize("hvp_mode", ["closed_form", "structured"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_hvp_through_inner_steps_matches_finite_differences(inner_steps: int, hvp_mode: str) -> None:
    objective = _objective(inner_steps, hvp_mode=hvp_mode)
    theta = objective.flat_theta()
    vector = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1),
                         dtype=theta.dtype)
    eps = 1e-5
    finite = (_outer_grads(objective, theta + eps * vector)[1]
              - _outer_grads(objective, theta - eps * vector)[1]) / (2 * eps)
    structured = objective.hvp(vector)
    assert structured.abs().max() > 1e-3  # not trivially zero
    assert torch.allclose(structured, finite, rtol=1e-5, atol=1e-7)
    assert torch.allclose(structured, objective.reference_hvp_fn()(vector), atol=1e-10)
    # the damping term is added on top
    assert torch.allclose(objective.hvp(vector, 0.1), structured + 0.1 * vector)


def test_hvp_is_second_order_unless_first_order() -> None:
    second = _objective(1)
    first = _objective(1, first_order=True)
    vector = torch.ones_like(second.flat_theta())
    assert not torch.allclose(second.hvp(vector), first.hvp(vector))
    # first order: the HVP is the Fisher at the adapted parameters, in either implementation
    generic = _objective(1, first_order=True, hvp_mode="structured")
    assert torch.allclose(first.hvp(vector), generic.hvp(vector), atol=1e-10)


def test_closed_form_inner_hessian_matches_autograd() -> None:
    closed = _objective(1, hvp_mode="closed_form")
    generic = _objective(1, hvp_mode="structured")
    assert closed.inner[0].curvature is not None and generic.inner[0].curvature is None
    vectors = tuple(torch.randn(g.shape, dtype=g.dtype) for g in generic.inner[0].grads)
    for a, b in zip(closed._inner_hvp(closed.inner[0], vectors),
                    generic._inner_hvp(generic.inner[0], vectors)):
        assert torch.allclose(a, b, atol=1e-10)


def test_meta_gradient_matches_autograd_through_adaptation() -> None:
    objective = _objective(1)
    loss_grad, kl_grad = _outer_grads(objective, objective.flat_theta())
    assert torch.allclose(objective.gradient, loss_grad, atol=1e-12)
    assert kl_grad.abs().max() < 1e-12  # KL and its gradient vanish at the old policy


def test_conjugate_gradient_solves_spd_system() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    spd = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x, product = conjugate_gradient(lambda v: spd @ v, b, iters=20)
    assert torch.allclose(spd @ x, b, atol=1e-8)
    assert torch.allclose(product, spd @ x, atol=1e-8)


@pytest.mark.parametrize(("first_order", "tanh"), [(False, False), (True, False), (False, True)])
def test_one_meta_iteration_improves_the_surrogate(first_order: bool, tanh: bool) -> None:
    torch.manual_seed(0)
    sampler = TaskSampler("nav2d", horizon=20)
    policy = _TanhPolicy() if tanh else GaussianMLPPolicy(2, 2, (16, 16))
    learner = MAMLTRPO(policy, sampler, inner_lr=0.1, trajectories=5, first_order=first_order)
    assert learner.hvp_mode == ("structured" if tanh else "closed_form")
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    metrics = learner.step(sampler.sample_tasks(4, np.random.default_rng(0)), seed=0)
    assert metrics["step_fraction"] > 0
    assert metrics["surrogate_after"] < metrics["surrogate_before"]
    assert 0 < metrics["kl"] < 0.01
    changed = any(not torch.equal(before[n], p) for n, p in policy.named_parameters())
    assert changed


def test_bad_settings_are_reported() -> None:
    sampler = TaskSampler("nav2d", horizon=5)
    policy = GaussianMLPPolicy(2, 2, (4, 4))
    with pytest.raises(ValueError, match="hvp_mode must be one of"):
        MAMLTRPO(policy, sampler, hvp_mode="fast")
    with pytest.raises(ValueError, match="inner_lr must be > 0"):
        MAMLTRPO(policy, sampler, inner_lr=0.0)
    with pytest.raises(ValueError, match="action_dim=2"):
        MAMLTRPO(GaussianMLPPolicy(2, 3), sampler)
    with pytest.raises(ValueError, match="closed_form' needs a GaussianMLPPolicy"):
        MAMLTRPO(_TanhPolicy(), sampler, hvp_mode="closed_form")
    with pytest.raises(ValueError, match="max_kl must be > 0"):
        TRPOSettings(max_kl=0.0)
