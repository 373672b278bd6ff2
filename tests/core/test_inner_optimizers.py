"""The one inner loop with each inner optimizer: its second-order meta-gradient (learned rates
included) equals a plain per-task ``torch.autograd.grad`` loop written out here, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mamlkit import MAML, TaskBatch
from mamlkit.algorithms import MAMLPlusPlus, MetaSGD
from mamlkit.core.inner_optim import Adam, FixedRates, Proximal, parameter_key

STEPS = 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _batch() -> TaskBatch:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, 2, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True) + torch.randn(3, 1, 1, generator=g, dtype=torch.float64))
    return TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def _reference(model: nn.Module, leaves: dict, rate, batch: TaskBatch, rule: str,
               betas=(0.9, 0.99), eps=1e-8, strength=0.0) -> None:
    """Backpropagate the mean query loss after STEPS differentiable updates, task by task."""
    total = 0.0
    for t in range(batch.num_tasks):
        fast = dict(leaves)
        first = {n: torch.zeros_like(p) for n, p in fast.items()}
        second = {n: torch.zeros_like(p) for n, p in fast.items()}
        for k in range(STEPS):
            out = functional_call(model, fast, (batch.support_x[t],))
            loss = nn.functional.mse_loss(out, batch.support_y[t])
            grads = dict(zip(fast, torch.autograd.grad(loss, list(fast.values()),
                                                       create_graph=True)))
            grads = {n: g + strength * (fast[n] - leaves[n]) for n, g in grads.items()}
            if rule == "sgd":
                fast = {n: p - rate(n, k) * grads[n] for n, p in fast.items()}
                continue
            first = {n: betas[0] * first[n] + (1 - betas[0]) * grads[n] for n in fast}
            second = {n: betas[1] * second[n] + (1 - betas[1]) * grads[n] ** 2 for n in fast}
            fast = {n: p - rate(n, k) * (first[n] / (1 - betas[0] ** (k + 1)))
                    / (torch.sqrt(second[n] / (1 - betas[1] ** (k + 1))) + eps)
                    for n, p in fast.items()}
        out = functional_call(model, fast, (batch.query_x[t],))
        total = total + nn.functional.mse_loss(out, batch.query_y[t])
    (total / batch.num_tasks).backward()


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_meta_sgd_learned_rates(batching) -> None:
    learner = MetaSGD(_model(), inner_lr=0.1, inner_steps=STEPS, batching=batching)
    with torch.no_grad():  # distinct rates per element
        for p in learner.inner_lr_params.values():
            p.uniform_(0.05, 0.2, generator=torch.Generator().manual_seed(1))
    learner.meta_loss(_batch())[0].backward()
    got = _grads(learner)
    learner.zero_grad()
    leaves = dict(learner.model.named_parameters())
    rates = learner.inner_lr_params
    _reference(learner.model, leaves, lambda n, k: rates[parameter_key(n)], _batch(), "sgd")
    for value, want in zip(got, _grads(learner)):
        torch.testing.assert_close(value, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_maml_plus_plus_per_step_rates(batching) -> None:
    learner = MAMLPlusPlus(_model(), inner_lr=0.1, inner_steps=STEPS, multi_step_loss=False,
                           batching=batching)
    with torch.no_grad():  # a different rate at every step
        for p in learner.inner_lr_params.values():
            p.copy_(torch.tensor([0.05, 0.1, 0.15], dtype=torch.float64))
    learner.meta_loss(_batch())[0].backward()
    got = _grads(learner)
    learner.zero_grad()
    leaves = dict(learner.model.named_parameters())
    rates = learner.inner_lr_params
    _reference(learner.model, leaves, lambda n, k: rates[parameter_key(n)][k], _batch(), "sgd")
    for value, want in zip(got, _grads(learner)):
        torch.testing.assert_close(value, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strength", [0.0, 2.0], ids=["adam", "proximal-adam"])
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_adam_inner_optimizer_second_order(batching, strength) -> None:
    learner = MAML(_model(), inner_lr=0.05, inner_steps=STEPS, batching=batching)
    adam = Adam(FixedRates(learner.inner_lr), betas=(0.9, 0.99), eps=1e-8)
    learner.inner_optimizer = Proximal(adam, strength) if strength else adam
    learner.meta_loss(_batch())[0].backward()
    got = _grads(learner)
    learner.zero_grad()
    leaves = dict(learner.model.named_parameters())
    _reference(learner.model, leaves, lambda n, k: 0.05, _batch(), "adam", strength=strength)
    for value, want in zip(got, _grads(learner)):
        torch.testing.assert_close(value, want, rtol=1e-10, atol=1e-12)



def test_second_order_through_a_state_that_starts_without_a_graph() -> None:
    """An adapted state that starts as a constant (a context vector at zero, as in CAVIA) still
    gets a second-order meta-gradient, on both gradient paths: its inner gradient depends on the
    meta-parameters. Reference: the inner gradient in closed form, differentiated by autograd."""
    from mamlkit.core.inner_loop import InnerProblem, inner_loop
    from mamlkit.core.inner_optim import SGD

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    start = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def adapted_loss(weight: torch.Tensor) -> torch.Tensor:
        def loss(fast: dict, step: int) -> tuple[torch.Tensor, dict]:
            return (torch.tanh(x @ weight + fast["context"]) ** 2).mean(), {}

        problem = InnerProblem({"context": torch.zeros(3, dtype=torch.float64)}, loss)
        result = inner_loop(problem, SGD(FixedRates({"context": 0.5})), 2, first_order=False)
        return loss(result.trajectory[-1], 2)[0]

    weight = start.clone().requires_grad_()
    plain = torch.autograd.grad(adapted_loss(weight), weight)[0]  # torch.autograd.grad inside
    functorch = torch.func.grad(adapted_loss)(start)              # torch.func.grad inside
    weight = start.clone().requires_grad_()
    context = torch.zeros(3, dtype=torch.float64)
    for _ in range(2):
        t = torch.tanh(x @ weight + context)
        context = context - 0.5 * (2 * t * (1 - t ** 2)).sum(0) / t.numel()
    want = torch.autograd.grad((torch.tanh(x @ weight + context) ** 2).mean(), weight)[0]
    torch.testing.assert_close(plain, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(functorch, want, rtol=1e-10, atol=1e-12)
