"""Robust inner losses and prototype-agreement weights: closed forms and meta-gradients checked
against a plain per-task autograd loop and finite differences written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import mamlkit
from mamlkit import TaskBatch
from mamlkit.core.robust_losses import (
    generalized_cross_entropy,
    generalized_cross_entropy_per_example,
    huber,
    symmetric_cross_entropy,
)
from mamlkit.core.support_weights import PrototypeAgreement


def test_robust_losses_match_their_closed_forms():
    logits = torch.randn(7, 4, dtype=torch.float64)
    labels = torch.randint(0, 4, (7,))
    p_y = logits.softmax(-1)[torch.arange(7), labels]
    assert torch.allclose(generalized_cross_entropy(logits, labels), ((1 - p_y ** 0.7) / 0.7).mean())
    # q -> 0 is the cross entropy; q = 1 the mean absolute error of the probability.
    assert torch.allclose(generalized_cross_entropy_per_example(logits, labels, q=1e-7),
                          F.cross_entropy(logits, labels, reduction="none"), atol=1e-5)
    assert torch.allclose(generalized_cross_entropy_per_example(logits, labels, q=1.0), 1 - p_y)
    sce = 0.1 * F.cross_entropy(logits, labels) + 1.0 * (4.0 * (1 - p_y)).mean()
    assert torch.allclose(symmetric_cross_entropy(logits, labels), sce)
    x, y = torch.randn(9, 2, dtype=torch.float64), 3 * torch.randn(9, 2, dtype=torch.float64)
    assert torch.allclose(huber(x, y), F.huber_loss(x, y))


def _tasks(tasks=3, ways=3, shots=3, dim=5, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()
    centers = 2 * torch.randn(tasks, ways, dim, generator=g, dtype=torch.float64)
    support = centers.repeat_interleave(shots, 1) + 0.3 * torch.randn(
        tasks, ways * shots, dim, generator=g, dtype=torch.float64)
    query = centers.repeat_interleave(shots, 1) + 0.3 * torch.randn(
        tasks, ways * shots, dim, generator=g, dtype=torch.float64)
    y_noisy = y.clone()
    y_noisy[:, 0] = 1  # one wrong support label per task
    return TaskBatch(support, y_noisy, query, y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _plain_weights(features, labels, ways, log_t):
    """Leave-one-out prototype agreement, written out example by example."""
    feats = F.normalize(features, dim=-1)
    weights = []
    for i in range(len(labels)):
        logits, own = [], None
        for k in range(ways):
            members = [j for j in range(len(labels)) if labels[j] == k and j != i]
            if not members:
                logits.append(None)
                continue
            proto = feats[members].mean(0)
            logits.append(-(feats[i] - proto).pow(2).sum() / log_t.exp())
            if k == int(labels[i]):
                own = k
        if own is None:
            weights.append(torch.ones((), dtype=feats.dtype))
            continue
        present = torch.stack([v for v in logits if v is not None])
        weights.append(logits[own].exp() / present.exp().sum())
    w = torch.stack(weights)
    return w / w.mean()


def _plain_meta_gradient(model, batch, lr, steps, inner, weighted, log_t):
    """Mean query loss after ``steps`` SGD steps per task, differentiated with autograd.grad."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    total = 0
    for t in range(batch.num_tasks):
        fast = list(theta)
        for _ in range(steps):
            params = dict(zip(names, fast))
            hidden = torch.tanh(functional_call(model[0], {"weight": params["0.weight"],
                                                           "bias": params["0.bias"]},
                                                (batch.support_x[t],)))
            logits = hidden @ params["2.weight"].T + params["2.bias"]
            per = inner(logits, batch.support_y[t])
            if weighted:
                per = per * _plain_weights(hidden, batch.support_y[t], 3, log_t)
            grads = torch.autograd.grad(per.mean(), fast, create_graph=True)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        logits = functional_call(model, dict(zip(names, fast)), (batch.query_x[t],))
        total = total + F.cross_entropy(logits, batch.query_y[t])
    loss = total / batch.num_tasks
    return torch.autograd.grad(loss, theta + ([log_t] if weighted else []))


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("inner_loss,weighted", [("gce", False), ("sce", False),
                                                  ("cross_entropy", True), ("gce", True)])
def test_meta_gradient_matches_a_plain_autograd_loop(batching, inner_loss, weighted):
    model = _model()
    batch = _tasks()
    learner = mamlkit.MAML(model, inner_lr=0.5, inner_steps=2, loss="cross_entropy",
                           inner_loss=inner_loss, batching=batching,
                           support_weights="prototype" if weighted else None)
    learner.zero_grad()
    learner.meta_backward(batch)
    ours = [p.grad for p in model.parameters()]
    per_example = {"gce": lambda o, y: (1 - F.softmax(o, -1)[torch.arange(len(y)), y] ** 0.7) / 0.7,
                   "sce": lambda o, y: 0.1 * F.cross_entropy(o, y, reduction="none")
                   + 4.0 * (1 - F.softmax(o, -1)[torch.arange(len(y)), y]),
                   "cross_entropy": lambda o, y: F.cross_entropy(o, y, reduction="none")}[inner_loss]
    log_t = (learner.support_objective.weighting.log_temperature.detach().clone().requires_grad_()
             if weighted else None)
    expected = _plain_meta_gradient(model, batch, 0.5, 2, per_example, weighted, log_t)
    if weighted:
        ours.append(learner.support_objective.weighting.log_temperature.grad)
    for a, b in zip(ours, expected):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10), (a - b).abs().max()


def test_prototype_weights_discount_a_wrong_label_and_leave_singletons_alone():
    batch = _tasks()
    weights = PrototypeAgreement(0.1).double()
    features = batch.support_x[0]
    w = weights(features, batch.support_y[0], 3)
    assert w[0] < 0.1 and bool((w[1:] > 0.9).all())  # example 0 carries the wrong label
    assert torch.allclose(w.mean(), torch.ones((), dtype=torch.float64))
    one_shot = weights(features[[0, 3, 6]], torch.tensor([0, 1, 2]), 3)
    assert torch.equal(one_shot, torch.ones(3, dtype=torch.float64))


def test_temperature_gradient_matches_finite_differences():
    model = _model()
    batch = _tasks()
    learner = mamlkit.MAML(model, inner_lr=0.5, inner_steps=1, loss="cross_entropy",
                           support_weights="prototype")
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    analytic = float(learner.support_objective.weighting.log_temperature.grad)
    eps = 1e-6
    values = []
    with torch.no_grad():
        for sign in (1, -1):
            learner.support_objective.weighting.log_temperature += sign * eps
            values.append(float(learner.meta_loss(batch)[0]))
            learner.support_objective.weighting.log_temperature -= sign * eps
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-5, abs=1e-9)


def test_bad_remedy_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="classification loss"):
        mamlkit.MAML(_model(), loss="mse", support_weights="prototype")
    with pytest.raises(ValueError, match="Unknown support_weights"):
        mamlkit.MAML(_model(), loss="cross_entropy", support_weights="loss")
    with pytest.raises(ValueError, match="must be a number > 0"):
        mamlkit.MAML(_model(), loss="cross_entropy", support_weights="prototype:warm")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mamlkit.MAML(_model(), loss="cross_entropy", support_weights="prototype:0")


def test_an_initial_temperature_can_start_the_weights_near_uniform():
    batch = _tasks()
    warm = mamlkit.MAML(_model(), loss="cross_entropy", support_weights="prototype:100")
    weighting = warm.support_objective.weighting
    assert float(weighting.log_temperature.detach().exp()) == pytest.approx(100)
    features = batch.support_x[0]
    sharp = PrototypeAgreement(0.1).double()(features, batch.support_y[0], 3)
    near_uniform = weighting(features, batch.support_y[0], 3)
    assert (near_uniform - 1).abs().max() < 0.05 < (sharp - 1).abs().max()
    with pytest.raises(ValueError, match="computes its own inner-loop loss"):
        mamlkit.make_algorithm("anil", _model(), loss="cross_entropy", inner_loss="gce")
    with pytest.raises(ValueError, match="Unknown loss"):
        mamlkit.MAML(_model(), loss="cross_entropy", inner_loss="robust")


def _plain_robust_weights(features, labels, ways, log_t, rounds=5):
    """Reweighted leave-one-out prototype agreement, example by example: in each round every
    other example counts in its class prototype by its agreement of the round before."""
    feats = F.normalize(features, dim=-1)
    n = len(labels)
    weights = [torch.ones((), dtype=feats.dtype)] * n
    for _ in range(rounds):
        new = []
        for i in range(n):
            logits = {}
            for k in range(ways):
                members = [j for j in range(n) if labels[j] == k and j != i]
                if members:
                    proto = sum(weights[j] * feats[j] for j in members) / sum(
                        weights[j] for j in members)
                    logits[k] = -(feats[i] - proto).pow(2).sum() / log_t.exp()
            own = int(labels[i])
            new.append(logits[own].exp() / sum(v.exp() for v in logits.values())
                       if own in logits else torch.ones((), dtype=feats.dtype))
        weights = new
    w = torch.stack(weights)
    return w / w.mean()


def _plain_start_weighted_meta_gradient(model, batch, lr, steps, per_example, log_t):
    """Mean query loss when the weights come from the initialisation's features and are held
    fixed: each inner gradient is sum_i (w_i / n) dl_i/dtheta (a vector-Jacobian product with
    the weights as its vector), the outer gradient reaches the weights through create_graph."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    total = 0
    for t in range(batch.num_tasks):
        hidden0 = torch.tanh(batch.support_x[t] @ theta[0].T + theta[1])
        w = _plain_robust_weights(hidden0, batch.support_y[t], 3, log_t)
        fast = list(theta)
        for _ in range(steps):
            hidden = torch.tanh(batch.support_x[t] @ fast[0].T + fast[1])
            per = per_example(hidden @ fast[2].T + fast[3], batch.support_y[t])
            grads = torch.autograd.grad(per, fast, grad_outputs=w / len(w), create_graph=True)
            fast = [p - lr * g for p, g in zip(fast, grads)]
        logits = functional_call(model, dict(zip(names, fast)), (batch.query_x[t],))
        total = total + F.cross_entropy(logits, batch.query_y[t])
    return torch.autograd.grad(total / batch.num_tasks, theta + [log_t])


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("inner_loss", ["cross_entropy", "gce"])
def test_robust_prototype_weights_meta_gradient_matches_a_plain_autograd_loop(batching,
                                                                              inner_loss):
    model = _model()
    batch = _tasks()
    learner = mamlkit.MAML(model, inner_lr=0.5, inner_steps=2, loss="cross_entropy",
                           inner_loss=inner_loss, batching=batching,
                           support_weights="robust-prototype:0.3")
    learner.zero_grad()
    learner.meta_backward(batch)
    weighting = learner.support_objective.weighting
    ours = [p.grad for p in model.parameters()] + [weighting.log_temperature.grad]
    per_example = {"gce": lambda o, y: (1 - F.softmax(o, -1)[torch.arange(len(y)), y] ** 0.7) / 0.7,
                   "cross_entropy": lambda o, y: F.cross_entropy(o, y, reduction="none")}[inner_loss]
    log_t = weighting.log_temperature.detach().clone().requires_grad_()
    expected = _plain_start_weighted_meta_gradient(model, batch, 0.5, 2, per_example, log_t)
    assert ours[-1].abs() > 1e-8  # the temperature is meta-learned through the fixed weights
    for a, b in zip(ours, expected):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10), (a - b).abs().max()


def test_reweighting_rounds_stop_wrong_labels_pulling_their_prototype():
    g = torch.Generator().manual_seed(1)
    centers = 2 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(5)
    features = centers[labels] + 0.4 * torch.randn(15, 6, generator=g, dtype=torch.float64)
    given = labels.clone()
    given[[5, 6]] = 0  # two of class 1 labelled 0: class 0 holds 5 right and 2 wrong
    one = PrototypeAgreement(0.3, rounds=1).double()(features, given, 3)
    robust = PrototypeAgreement(0.3, rounds=5).double()(features, given, 3)
    wrong, right = torch.tensor([5, 6]), torch.tensor([0, 1, 2, 3, 4])
    assert robust[wrong].max() < one[wrong].max()
    assert robust[wrong].max() < 0.5 * robust[right].min()
    clean = PrototypeAgreement(0.3, rounds=5).double()(features, labels, 3)
    assert (clean - 1).abs().max() < 0.2  # clean classes keep nearly equal weights
    with pytest.raises(ValueError, match="at least one round"):
        PrototypeAgreement(0.3, rounds=0)


def test_robust_prototype_weights_are_refused_where_their_gradient_would_be_wrong():
    with pytest.raises(ValueError, match="implicit gradient"):
        mamlkit.make_algorithm("imaml", _model(), loss="cross_entropy",
                               support_weights="robust-prototype")
    with pytest.raises(ValueError, match="inner_checkpoint"):
        mamlkit.MAML(_model(), loss="cross_entropy", support_weights="robust-prototype",
                     inner_checkpoint=1)
    # CAVIA adapts a context; its weights come from the features at the zero context.
    model = nn.Sequential(nn.Linear(7, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    cavia = mamlkit.make_algorithm("cavia", model, loss="cross_entropy", context_dim=2,
                                   support_weights="robust-prototype")
    cavia.meta_backward(_tasks())
    grad = cavia.support_objective.weighting.log_temperature.grad
    assert grad is not None and torch.isfinite(grad) and grad.abs() > 0
