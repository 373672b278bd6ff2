"""Shared helpers for the algorithm tests: small float64 problems and finite differences."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mamlkit import TaskBatch
from mamlkit.core.learner import MetaLearner


def mlp(inputs: int = 2, hidden: int = 8, outputs: int = 1) -> nn.Module:
    """A tiny float64 regression network."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs)).double()


def bn_cnn(classes: int = 3) -> nn.Module:
    """A tiny float64 convolutional classifier with BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3 * 2 * 2, classes),
    ).double()


def regression_batch(tasks: int = 3, n: int = 6, inputs: int = 2, seed: int = 1) -> TaskBatch:
    """Random smooth regression tasks (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 2 * n, inputs, generator=g, dtype=torch.float64)
    phase = torch.randn(tasks, 1, 1, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True) + phase)
    return TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


def image_batch(tasks: int = 2, classes: int = 3, seed: int = 3) -> TaskBatch:
    """Random 4x4 one-channel images, ``classes`` labels, two examples per class per split."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 4 * classes, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.arange(classes).repeat(4).expand(tasks, 4 * classes).contiguous()
    half = 2 * classes
    return TaskBatch(x[:, :half], y[:, :half], x[:, half:], y[:, half:])


def flat_grad(learner: MetaLearner, batch: TaskBatch) -> torch.Tensor:
    """The meta-gradient of ``meta_loss(batch)`` over ``learner.parameters()`` (zeros for None)."""
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in learner.parameters()])


def finite_difference(loss: Callable[[], float], params: list[torch.Tensor],
                      eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences of ``loss()`` w.r.t. every element of ``params``."""
    out = []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                plus = loss()
                flat[i] = old - eps
                minus = loss()
                flat[i] = old
                out.append((plus - minus) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def meta_loss_fd(learner: MetaLearner, batch: TaskBatch, eps: float = 1e-6) -> torch.Tensor:
    """Finite-difference meta-gradient over all of ``learner.parameters()``."""
    return finite_difference(lambda: learner.meta_loss(batch)[0].item(), list(learner.parameters()), eps)


def directional_check(learner: MetaLearner, batch: TaskBatch, directions: int = 4, eps: float = 1e-6,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``grad . v`` (analytic) and its central finite difference for random directions ``v``.

    Two loss evaluations per direction instead of two per coordinate, for larger models.
    """
    grad = flat_grad(learner, batch)
    params = list(learner.parameters())
    g = torch.Generator().manual_seed(seed)
    analytic, numeric = [], []
    for _ in range(directions):
        v = torch.randn(grad.numel(), generator=g, dtype=torch.float64)
        analytic.append(grad @ v)
        values = []
        for sign in (1, -1):
            offset = 0
            with torch.no_grad():
                for p in params:
                    n = p.numel()
                    p.add_(sign * eps * v[offset:offset + n].reshape(p.shape))
                    offset += n
            values.append(learner.meta_loss(batch)[0].item())
            offset = 0
            with torch.no_grad():
                for p in params:
                    n = p.numel()
                    p.sub_(sign * eps * v[offset:offset + n].reshape(p.shape))
                    offset += n
        numeric.append((values[0] - values[1]) / (2 * eps))
    return torch.stack(analytic), torch.tensor(numeric, dtype=torch.float64)
