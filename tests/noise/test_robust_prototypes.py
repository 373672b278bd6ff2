"""ProtoMAML with prototypes weighted by prototype agreement (``weighted_prototypes=True``): the
head's prototypes and the meta-gradient (the weights' temperature included) against a plain
per-task autograd loop written here, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_robust_inner_loop import _plain_weights, _tasks
from torch import nn

from mamlkit.algorithms import ProtoMAML


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _plain_gradient(model: nn.Sequential, batch, lr: float, steps: int, log_t: torch.Tensor):
    """Embed the support set; weight every example by its leave-one-out agreement; set the head
    from the weighted class means; SGD on the agreement-weighted cross-entropy (partial
    derivatives: the inner loop differentiates copies of the body, the head's start is computed
    from the originals); query cross-entropy; autograd.grad of the mean over tasks."""
    w0, b0 = model[0].weight, model[0].bias
    total = 0
    for t in range(batch.num_tasks):
        sx, sy = batch.support_x[t], batch.support_y[t]
        z = torch.tanh(sx @ w0.T + b0)
        w = _plain_weights(z, sy, 3, log_t)
        c = torch.stack([(w[sy == k, None] * z[sy == k]).sum(0) / w[sy == k].sum()
                         for k in range(3)])
        fast = [w0.clone(), b0.clone(), 2 * c, -(c * c).sum(1)]
        for _ in range(steps):
            hidden = torch.tanh(sx @ fast[0].T + fast[1])
            per = F.cross_entropy(hidden @ fast[2].T + fast[3], sy, reduction="none")
            loss = (per * _plain_weights(hidden, sy, 3, log_t)).mean()
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        logits = torch.tanh(batch.query_x[t] @ fast[0].T + fast[1]) @ fast[2].T + fast[3]
        total = total + F.cross_entropy(logits, batch.query_y[t])
    return torch.autograd.grad(total / batch.num_tasks, [w0, b0, log_t])


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_meta_gradient_matches_a_plain_autograd_loop(batching: str) -> None:
    model, batch = _model(), _tasks()
    learner = ProtoMAML(model, inner_lr=0.5, inner_steps=2, support_weights="prototype",
                        weighted_prototypes=True, batching=batching)
    weighting = learner.support_objective.weighting
    log_t = weighting.log_temperature.detach().clone().requires_grad_()
    expected = _plain_gradient(model, batch, 0.5, 2, log_t)
    learner.zero_grad()
    learner.meta_backward(batch)
    got = [model[0].weight.grad, model[0].bias.grad, weighting.log_temperature.grad]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)
    assert float(got[2].abs()) > 0  # the temperature is meta-learned through the prototypes


def test_the_wrong_label_barely_moves_its_class_prototype() -> None:
    model, batch = _model(), _tasks()
    plain = ProtoMAML(model, support_weights="prototype")
    robust = ProtoMAML(model, support_weights="prototype", weighted_prototypes=True)
    params = plain.meta_params()
    sx, sy = batch.support_x[0], batch.support_y[0]  # example 0 (class 0) is labelled 1
    z = torch.tanh(sx @ model[0].weight.T + model[0].bias).detach()
    clean_mean = z[3:6].mean(0)  # class 1's correctly labelled examples
    heads = [learner.prototype_head(params, sx, sy)["2.weight"].detach() / 2
             for learner in (plain, robust)]
    assert torch.allclose(heads[0][1], z[sy == 1].mean(0))
    assert (heads[1][1] - clean_mean).norm() < 0.2 * (heads[0][1] - clean_mean).norm()


def test_weighted_prototypes_need_the_agreement_weights() -> None:
    with pytest.raises(ValueError, match="pass support_weights='prototype'"):
        ProtoMAML(_model(), weighted_prototypes=True)
