"""``inner_checkpoint=N`` on the learner: the meta-gradient of MAML and Meta-SGD with the inner
steps checkpointed equals a plain per-task ``torch.autograd.grad`` loop written here (float64),
under the per-task loop, under ``vmap`` and compiled; algorithms with an inner problem of
their own refuse it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mamlkit import MAML
from mamlkit.algorithms import ANIL, MetaSGD
from mamlkit.tasks.regression import Sinusoid

STEPS, LR = 4, 0.05


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def _reference(model: nn.Module, batch, rates: dict[str, torch.Tensor] | None) -> list[torch.Tensor]:
    """Mean query loss after STEPS second-order SGD steps, differentiated by plain autograd."""
    params = dict(model.named_parameters())
    learned = list(rates.values()) if rates else []
    losses = []
    for t in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(STEPS):
            out = torch.func.functional_call(model, fast, (batch.support_x[t],))
            grads = torch.autograd.grad(nn.functional.mse_loss(out, batch.support_y[t]),
                                        list(fast.values()), create_graph=True)
            fast = {n: p - (rates[n] if rates else LR) * g
                    for (n, p), g in zip(fast.items(), grads)}
        out = torch.func.functional_call(model, fast, (batch.query_x[t],))
        losses.append(nn.functional.mse_loss(out, batch.query_y[t]))
    return list(torch.autograd.grad(torch.stack(losses).mean(), [*params.values(), *learned]))


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("every", [1, 3])
def test_checkpointed_maml_meta_gradient_equals_a_plain_loop(batching, every) -> None:
    batch = Sinusoid(seed=1).fixed_tasks(3, seed=2).to(torch.float64)
    learner = MAML(_model(), inner_lr=LR, inner_steps=STEPS, batching=batching,
                   inner_checkpoint=every)
    learner.meta_backward(batch)
    expected = _reference(learner.model, batch, None)
    for (name, p), g in zip(learner.model.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12, msg=name)


def test_checkpointing_combines_with_chunks_of_tasks() -> None:
    """Memory bounded in both directions: the inner steps checkpointed and the tasks vmapped two
    at a time (3 tasks: chunks of 2 and 1), the meta-gradient still the plain loop's."""
    batch = Sinusoid(seed=1).fixed_tasks(3, seed=2).to(torch.float64)
    learner = MAML(_model(), inner_lr=LR, inner_steps=STEPS, batching="vmap", chunk_size=2,
                   inner_checkpoint=2, compile=False)
    learner.meta_backward(batch)
    expected = _reference(learner.model, batch, None)
    for (name, p), g in zip(learner.model.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12, msg=name)


def test_checkpointed_meta_sgd_learns_its_rates_exactly() -> None:
    batch = Sinusoid(seed=1).fixed_tasks(2, seed=3).to(torch.float64)
    learner = MetaSGD(_model(), inner_lr=LR, inner_steps=STEPS, batching="loop",
                      inner_checkpoint=2)
    torch.manual_seed(4)
    with torch.no_grad():  # rates that differ per element, so the test sees which is which
        for rate in learner.inner_optimizer.rates(0).values():
            rate.mul_(torch.rand_like(rate) + 0.5)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    names = list(dict(learner.model.named_parameters()))
    rates = {n: r for n, r in zip(names, learner.inner_optimizer.rates(0).values())}
    expected = _reference(learner.model, batch, rates)
    got = [p.grad for p in learner.model.parameters()] + [r.grad for r in rates.values()]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_an_inner_problem_of_its_own_refuses_checkpointing() -> None:
    with pytest.raises(ValueError, match="drop inner_checkpoint"):
        ANIL(_model(), inner_checkpoint=1)
    with pytest.raises(ValueError, match="integer >= 0"):
        MAML(_model(), inner_checkpoint=-1)


def test_checkpointed_meta_gradient_compiles_to_the_same_values() -> None:
    batch = Sinusoid(seed=1).fixed_tasks(3, seed=2).to(torch.float64)
    learner = MAML(_model(), inner_lr=LR, inner_steps=STEPS, batching="vmap", compile=True,
                   inner_checkpoint=2)
    learner.meta_backward(batch)
    assert not learner._compile_failed
    expected = _reference(learner.model, batch, None)
    for (name, p), g in zip(learner.model.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12, msg=name)
