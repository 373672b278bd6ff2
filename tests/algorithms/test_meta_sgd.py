"""Meta-SGD: learned per-element inner rates are meta-parameters with exact gradients."""

from __future__ import annotations

import pytest
import torch
from algorithm_checks import flat_grad, meta_loss_fd, mlp, regression_batch

from mamlkit.algorithms import MetaSGD


@pytest.mark.parametrize("steps", [1, 2])
def test_learned_rates_and_weights_match_finite_differences(steps: int) -> None:
    learner = MetaSGD(mlp(), inner_lr=0.1, inner_steps=steps)
    with torch.no_grad():  # distinct rates per element, so a wrong broadcast would show
        for p in learner.inner_lr_params.values():
            p.uniform_(0.02, 0.2)
    batch = regression_batch()
    torch.testing.assert_close(flat_grad(learner, batch), meta_loss_fd(learner, batch), rtol=1e-6, atol=1e-8)


def test_rates_are_registered_per_element_and_checkpointed() -> None:
    model = mlp()
    learner = MetaSGD(model, inner_lr=0.05)
    lrs = dict(learner.inner_lr_params.items())
    assert {k: tuple(v.shape) for k, v in lrs.items()} == {
        k.replace(".", "__"): tuple(p.shape) for k, p in model.named_parameters()}
    assert all(torch.all(v == 0.05) for v in lrs.values())
    ids = {id(p) for p in learner.parameters()}
    assert all(id(v) in ids for v in lrs.values())
    state = learner.state_dict()
    assert "inner_lr_params.0__weight" in state


def test_rates_change_after_an_outer_step() -> None:
    learner = MetaSGD(mlp(), inner_lr=0.1)
    before = learner.inner_lr_params["0__weight"].detach().clone()
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    learner.meta_loss(regression_batch())[0].backward()
    opt.step()
    assert not torch.equal(before, learner.inner_lr_params["0__weight"])


def test_inner_update_uses_the_learned_rates() -> None:
    learner = MetaSGD(mlp(), inner_lr=0.1, adapt="2")
    with torch.no_grad():
        learner.inner_lr_params["2__bias"].fill_(0.0)
    batch = regression_batch()
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert torch.equal(adapted["2.bias"], learner.model[2].bias.detach())  # zero rate: no move
    assert not torch.equal(adapted["2.weight"], learner.model[2].weight.detach())
    assert set(learner.inner_lr_params) == {"2__weight", "2__bias"}
