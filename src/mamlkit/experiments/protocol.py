"""The evaluation protocol every experiment follows (regression, vision, text).

Finn et al. (2017) score a meta-learned initialisation on held-out tasks after 0..N gradient
steps on each support set, and compare it with baselines fine-tuned the same way, their step
size tuned on held-out data. The pieces of that protocol live here, once:

- :data:`VAL_SEED` / :data:`TEST_SEED`: the fixed meta-validation and meta-test tasks (every run
  of an experiment is scored on the same ones);
- :data:`FINE_TUNE_RATES` and :func:`choose_rate`: the baselines' fine-tuning step size (and,
  where the domain tunes it too, the number of steps), chosen on validation tasks;
- :func:`curves`: per-task query metrics after 0..N steps, over one batch or many;
- :func:`write_results`: ``eval/results.json`` and ``eval/table.txt``.

:data:`BASELINES` says what each baseline's name means in each domain.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlkit.core.learner import MetaLearner
from mamlkit.evaluate import adaptation_curve
from mamlkit.tasks.base import TaskBatch

VAL_SEED, TEST_SEED = 1_000_003, 2_000_003
"""Seeds of the fixed meta-validation and meta-test tasks of every experiment."""

FINE_TUNE_RATES: dict[str, tuple[float, ...]] = {
    "regression": (0.001, 0.003, 0.01, 0.02, 0.05, 0.1),
    "vision": (0.01, 0.04, 0.1, 0.4),
    "text": (0.01, 0.03, 0.1, 0.3, 1.0),
}
"""Fine-tuning step sizes tried for the baselines, per domain (the paper tunes its baseline's
step size automatically; these bracket each domain's inner learning rates)."""

BASELINES: dict[str, dict[str, str]] = {
    "regression (sinusoid, linear)": {
        "pretrained": "the same MLP trained on all tasks jointly (the shared loop with zero inner "
                      "steps, seed + 1), then fine-tuned on each support set with the step size "
                      "of the regression grid that gives the lowest validation MSE at any step "
                      "count (Finn et al. 2017, 5.1).",
    },
    "vision (omniglot, miniimagenet, cifar-fs, images)": {
        "pretrained": "the same network trained as an ordinary classifier over all meta-training "
                      "classes (cross-entropy, as many images per step as a MAML meta-batch), its "
                      "output layer then replaced by a zero ways-way layer and every parameter "
                      "fine-tuned on each support set (--baseline none skips it).",
        "random init": "the same network from a random initialisation (seed + 1), fine-tuned the "
                       "same way. Both baselines' step size is the one of the vision grid with "
                       "the best validation accuracy after eval_inner_steps steps (the inner "
                       "learning rate when the run has no usable validation classes).",
    },
    "text (banking77, clinc150, fewrel)": {
        "prototypes": "nearest class prototype (Snell et al. 2017) on frozen features: MiniLM "
                      "embeddings (pretrained), the frozen MiniLM top layer (last-layer, lora), "
                      "or the meta-trained encoder (bag, cnn).",
        "fine-tune from random init": "the same model from a random initialisation (a random "
                                      "head on the pretrained layer for last-layer and lora), "
                                      "fine-tuned on each support set; its step size (text "
                                      "grid) and number of steps (up to 10x eval_inner_steps) "
                                      "are those with the best validation accuracy (Chen et al. "
                                      "2019).",
    },
}
"""Domain -> baseline name -> what it is. The names differ per domain because the baselines do:
regression has no class structure to pretrain a classifier on, and text compares against the
metric and fine-tuning baselines of the few-shot text literature."""


def baselines_help() -> str:
    """:data:`BASELINES` as text for ``mamlkit train --help``, one paragraph per baseline."""
    lines = ["baselines scored beside the meta-learned model by the final evaluation:"]
    for domain, table in BASELINES.items():
        for name, what in table.items():
            lines.append(textwrap.fill(f"{domain}: {name}: {what}", width=100,
                                       initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def curves(learner: MetaLearner, episodes: TaskBatch | Iterable[TaskBatch], steps: int,
           device: str | torch.device | None = None) -> dict[str, Tensor]:
    """Per-task query metrics after 0..``steps`` adaptation steps, ``[steps + 1, tasks]`` on the
    CPU, over one batch of tasks or an iterable of batches (such as fixed episodes), each moved to
    ``device`` when given and adapted in bounded chunks (:func:`mamlkit.evaluate.adaptation_curve`).
    """
    batches = [episodes] if isinstance(episodes, TaskBatch) else episodes
    parts = [adaptation_curve(learner, b if device is None else b.to(device), steps)
             for b in batches]
    return {k: torch.cat([p[k].cpu() for p in parts], dim=1) for k in parts[0]}


@dataclass(frozen=True)
class RateChoice:
    """The chosen fine-tuning step size, with every candidate's best validation score and the
    index (into the scored step counts) where it was reached."""

    rate: float
    scores: dict[float, float]
    best_step: dict[float, int]


def choose_rate(rates: Sequence[float], mean_scores: Callable[[float], Tensor], maximize: bool
                ) -> RateChoice:
    """The rate of ``rates`` whose validation score is best at its best scored step count.

    ``mean_scores(rate)`` gives the mean validation score after each scored step count (a 1-D
    tensor; one entry when a single step count is scored). Ties go to the earlier rate and the
    earlier step count.
    """
    scores: dict[float, float] = {}
    steps: dict[float, int] = {}
    for rate in rates:
        values = mean_scores(rate).flatten()
        index = int(values.argmax() if maximize else values.argmin())
        scores[rate], steps[rate] = float(values[index]), index
    best = (max if maximize else min)(scores, key=scores.get)
    return RateChoice(best, scores, steps)


def write_results(run_dir: Path, results: dict[str, Any], table: str, name: str = "results"
                  ) -> Path:
    """Save ``results`` (with ``table`` under ``"table"``) as ``run_dir/eval/<name>.json`` and the
    table as ``eval/table.txt`` (``eval/<name>.txt`` for another name), print the table, and
    return the JSON file's path."""
    results["table"] = table
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{'table' if name == 'results' else name}.txt").write_text(table + "\n")
    print(table)
    return path
