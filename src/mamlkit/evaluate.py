"""Evaluation following the paper's protocol: metrics after 0..N adaptation steps on held-out
tasks, as means with 95% confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mamlkit.core.learner import MetaLearner
from mamlkit.tasks.base import TaskBatch

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A mean over tasks with the half-width of its 95% confidence interval."""

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


def mean_ci(values: Tensor) -> Estimate:
    """Mean and normal-approximation 95% confidence half-width of a 1-D tensor of task scores."""
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("Cannot summarise an empty set of tasks.")
    std = float(values.std(unbiased=True)) if n > 1 else 0.0
    return Estimate(float(values.mean()), Z_95 * std / math.sqrt(n), n)


def adaptation_curve(learner: MetaLearner, batch: TaskBatch, steps: int,
                     chunk_size: int = 200) -> dict[str, Tensor]:
    """Per-task query metrics after 0..``steps`` adaptation steps, ``[steps + 1, tasks]``.

    Tasks are processed in chunks so memory stays bounded for thousands of tasks; no graph is
    built.
    """
    parts = [learner.adaptation_curve(batch.slice(slice(i, i + chunk_size)), steps)
             for i in range(0, batch.num_tasks, chunk_size)]
    return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}


def summarize_curve(curve: dict[str, Tensor]) -> dict[str, list[Estimate]]:
    """Mean ± 95% CI of every metric at every step."""
    return {k: [mean_ci(v[s]) for s in range(v.shape[0])] for k, v in curve.items()}
