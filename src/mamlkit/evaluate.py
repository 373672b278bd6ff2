"""Evaluation following the paper's protocol: metrics after 0..N adaptation steps on held-out
tasks, as means with 95% confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from mamlkit.core.learner import MetaLearner
from mamlkit.core.losses import accuracy
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


def _steps(steps: int | Sequence[int]) -> list[int]:
    chosen = sorted({int(s) for s in ([steps] if isinstance(steps, int) else steps)})
    if not chosen or chosen[0] < 0:
        raise ValueError(f"steps must be non-negative step counts, got {steps!r}; e.g. [0, 10].")
    return chosen


def episode_scores(learner: MetaLearner, batch: TaskBatch, steps: int | Sequence[int]
                   ) -> dict[str, Tensor]:
    """Per-task query loss (and accuracy) after each of ``steps`` adaptation steps only,
    ``[len(steps), tasks]`` (steps sorted): the support set is adapted once up to the largest
    count and the query set scored at the requested counts, not at every step. No graph is built.
    """
    chosen = _steps(steps)

    def one_task(params: dict[str, Tensor], sx: Any, sy: Tensor, qx: Any, qy: Tensor
                 ) -> dict[str, Tensor]:
        trajectory, _ = learner.inner_loop(params, sx, sy, chosen[-1], first_order=True)
        out: dict[str, list[Tensor]] = {"query_loss": []}
        for step in chosen:
            loss, outputs = learner.task_loss(trajectory[step], qx, qy)
            out["query_loss"].append(loss)
            if learner.classification:
                out.setdefault("query_accuracy", []).append(accuracy(outputs, qy))
        return {k: torch.stack(v) for k, v in out.items()}

    params = {n: p.detach() for n, p in learner.meta_params().items()}
    args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    with torch.no_grad():
        if learner.batching_for(batch) == "vmap":
            result = vmap(one_task, in_dims=(None, 0, 0, 0, 0), randomness="different")(
                params, *args)
            return {k: v.transpose(0, 1) for k, v in result.items()}
        per_task = [one_task(params, *(a[i] for a in args)) for i in range(batch.num_tasks)]
        return {k: torch.stack([r[k] for r in per_task], dim=1) for k in per_task[0]}


def evaluate_episodes(learner: MetaLearner, episodes: TaskBatch | Iterable[TaskBatch],
                      steps: int | Sequence[int], device: str | torch.device | None = None
                      ) -> dict[int, dict[str, Estimate]]:
    """Mean ± 95% CI over ``episodes`` of the query metrics after each requested step count.

    ``episodes`` is one :class:`TaskBatch` or an iterable of them (such as
    :class:`~mamlkit.datasets.FixedEpisodes`); only the step counts in ``steps`` are scored
    (``steps=[10]`` costs about half of scoring every step from 0 to 10), see
    :func:`episode_scores`. Returns ``{step: {"query_loss": Estimate, "query_accuracy": ...}}``.
    """
    batches = [episodes] if isinstance(episodes, TaskBatch) else episodes
    parts = [episode_scores(learner, b if device is None else b.to(device), steps)
             for b in batches]
    if not parts:
        raise ValueError("evaluate_episodes got no episodes.")
    scores = {k: torch.cat([p[k].cpu() for p in parts], dim=1) for k in parts[0]}
    return {step: {k: mean_ci(v[i]) for k, v in scores.items()}
            for i, step in enumerate(_steps(steps))}
