"""Independent meta-gradients for the tests: central finite differences of ``meta_loss``."""

from __future__ import annotations

import torch

from mamlkit import MetaLearner, TaskBatch


def analytic_meta_gradient(learner: MetaLearner, batch: TaskBatch) -> torch.Tensor:
    """The flattened gradient of ``meta_loss`` computed by autograd."""
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    return torch.cat([p.grad.flatten() for p in learner.parameters()])


def finite_difference_meta_gradient(learner: MetaLearner, batch: TaskBatch,
                                    eps: float = 1e-6) -> torch.Tensor:
    """The flattened gradient of ``meta_loss`` by central differences (use float64)."""
    out = []
    with torch.no_grad():
        for p in learner.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                plus = learner.meta_loss(batch)[0].item()
                flat[i] = old - eps
                minus = learner.meta_loss(batch)[0].item()
                flat[i] = old
                out.append((plus - minus) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)
