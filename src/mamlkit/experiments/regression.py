"""Regression experiments: the MAML paper's sinusoids (Section 5.1) and lines.

Training meta-learns the initialisation and, as the paper's baseline, a "pretrained" network
regressed on all tasks jointly (the shared driver with zero inner steps). Evaluation follows the
paper: query MSE after 0..10 gradient steps on K = 5, 10, 20 support points, on held-out tasks,
with 95% confidence intervals, plus Figures 2 and 3.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from mamlkit.algorithms import ALGORITHMS, algorithm_label, canonical_name
from mamlkit.checkpoint import load_weights
from mamlkit.config import TrainConfig, by_concern
from mamlkit.core.learner import MetaLearner
from mamlkit.evaluate import summarize_curve
from mamlkit.experiments import Experiment, protocol
from mamlkit.experiments.common import baseline_settings, build_learner, save_config, setup_torch
from mamlkit.experiments.protocol import FINE_TUNE_RATES, TEST_SEED, VAL_SEED
from mamlkit.models import MLP, sinusoid_mlp
from mamlkit.tasks.regression import Linear, RegressionTasks, Sinusoid
from mamlkit.train import meta_train
from mamlkit.wording import count

EVAL_QUERY_POINTS = 100
"""Query points per held-out task at evaluation (a dense estimate of the function error)."""
FINE_TUNE_LRS = FINE_TUNE_RATES["regression"]
"""Step sizes tried for fine-tuning the pretrained baseline (the paper tunes it automatically)."""


def _tasks(config: TrainConfig, shots: int | None = None, queries: int | None = None
           ) -> RegressionTasks:
    family = Sinusoid if config.task == "sinusoid" else Linear
    return family(shots=shots or config.shots, queries=queries or config.queries,
                  seed=config.seed, device=config.device)


def _network(config: TrainConfig) -> MLP:
    """The paper's 1-40-40-1 MLP, with the extra inputs the algorithm declares (CAVIA's context)."""
    algorithm = ALGORITHMS.get(canonical_name(config.algo))
    extra = config.algorithm.get("context_dim", getattr(algorithm, "default_context_dim", 0))
    return MLP((1 + extra, 40, 40, 1)) if extra else sinusoid_mlp()


def _baseline_config(config: TrainConfig) -> TrainConfig:
    iterations = config.baseline_iterations or config.iterations
    return baseline_settings(config, "maml", inner_steps=0, iterations=iterations,
                             seed=config.seed + 1)


def check(config: TrainConfig) -> None:
    """Regression has one model, the paper's 1-40-40-1 MLP: refuse settings that would pick another."""
    if config.model not in ("", "mlp") or config.hidden:
        raise ValueError(f"{config.task} uses the paper's 1-40-40-1 MLP; --model "
                         f"{config.model or 'mlp'} and --hidden {config.hidden} do not apply. Drop "
                         "these options.")


def train(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """Meta-train the MAML initialisation, then the pretrained baseline, into ``run_dir``."""
    check(config)
    save_config(config, run_dir)
    summary: dict[str, Any] = {}
    runs = [("maml", config), ("pretrained", _baseline_config(config))]
    for name, cfg in runs:
        sub = run_dir / name
        setup_torch(cfg)
        learner = build_learner(cfg, _network(cfg), "mse").to(cfg.device)
        val = _tasks(cfg).fixed_tasks(cfg.val_tasks, VAL_SEED)
        start = time.perf_counter()
        title = f"meta-train {cfg.task}" if name == "maml" else f"pretrained baseline {cfg.task}"
        result = meta_train(learner, _tasks(cfg), cfg, sub, val_batch=val, resume=resume,
                            title=title)
        summary[name] = {"iterations": result.iteration, "train_seconds": result.elapsed_s,
                         "wall_seconds": time.perf_counter() - start,
                         "best_val_loss": result.best_metric, "stopped": result.stopped_early}
        if result.stopped_early:
            break
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _load(config: TrainConfig, run_dir: Path, name: str, inner_lr: float) -> MetaLearner:
    if name == "pretrained":
        config = _baseline_config(config)
    setup_torch(config)
    learner = build_learner(config, _network(config), "mse", inner_lr=inner_lr,
                            inner_steps=config.eval_inner_steps).to(config.device)
    load_weights(learner, run_dir / name / "checkpoints" / "best.pt", config.device)
    return learner


def _tune_fine_tune_lr(config: TrainConfig, run_dir: Path) -> float:
    """The step size with the lowest validation MSE at any step count (see :data:`BASELINES`)."""
    val = _tasks(config, queries=EVAL_QUERY_POINTS).fixed_tasks(config.val_tasks, VAL_SEED)

    def mean_mse(lr: float) -> torch.Tensor:
        learner = _load(config, run_dir, "pretrained", lr)
        return protocol.curves(learner, val, config.eval_inner_steps)["query_loss"].mean(dim=1)

    return protocol.choose_rate(FINE_TUNE_LRS, mean_mse, maximize=False).rate


def evaluate(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """The paper's protocol on held-out tasks; prints the table and saves JSON and PNG figures."""
    fine_tune_lr = _tune_fine_tune_lr(config, run_dir)
    learners = {algorithm_label(config.algo): _load(config, run_dir, "maml", config.inner_lr),
                "pretrained": _load(config, run_dir, "pretrained", fine_tune_lr)}
    steps = config.eval_inner_steps
    results: dict[str, Any] = {"fine_tune_lr_pretrained": fine_tune_lr, "steps": steps,
                               "test_tasks": config.test_tasks, "mse": {}}
    lines = [f"{config.task}: query MSE after k gradient steps, mean ± 95% CI over "
             f"{config.test_tasks} held-out tasks",
             f"{'K':>3} {'model':<11} {count(0, 'step'):>17} {count(min(1, steps), 'step'):>17} "
             f"{count(steps, 'step'):>17}"]
    for shots in config.eval_shots:
        test = _tasks(config, shots, EVAL_QUERY_POINTS).fixed_tasks(config.test_tasks, TEST_SEED)
        estimates = {}
        for label, learner in learners.items():
            est = summarize_curve(protocol.curves(learner, test, steps))["query_loss"]
            estimates[label] = est
            results["mse"].setdefault(str(shots), {})[label] = [
                {"mean": e.mean, "ci95": e.ci95} for e in est]
            picks = [est[0], est[min(1, steps)], est[steps]]
            lines.append(f"{shots:>3} {label:<11} " + " ".join(f"{str(e):>17}" for e in picks))
        if config.plots:
            from mamlkit.plots import plot_adaptation_curves

            plot_adaptation_curves(run_dir / "plots" / f"fig3_mse_vs_steps_k{shots}.png", estimates,
                                   "mean squared error", f"{config.task}: query MSE after k "
                                   f"gradient steps, K={shots}")
    if config.plots:
        _figure2(config, run_dir, learners)
    protocol.write_results(run_dir, results, "\n".join(lines))
    return results


def _figure2(config: TrainConfig, run_dir: Path, learners: dict[str, MetaLearner]) -> None:
    """Figure 2 of the paper: per model, the fits to three held-out tasks before adaptation and
    after 1 and ``eval_inner_steps`` gradient steps on K support points."""
    from mamlkit.plots import plot_regression_fits

    shots = 10 if 10 in config.eval_shots else config.eval_shots[0]
    family = _tasks(config, shots, 1)
    tasks = family.fixed_tasks(3, TEST_SEED + 1)
    grid = torch.linspace(*family.x_range, 200, device=config.device).view(1, -1, 1)
    truth = family.function(grid.expand(3, -1, -1), tasks.info)
    fits: dict[str, dict[str, torch.Tensor]] = {}
    for label, learner in learners.items():
        curves = fits.setdefault(label, {})
        for steps in sorted({0, 1, config.eval_inner_steps}):
            preds = []
            for t in range(3):
                params = learner.adapt(tasks.support_x[t], tasks.support_y[t], steps=steps)
                preds.append(learner.predict(params, grid[0]))
            name = "pre-update" if steps == 0 else f"after {count(steps, 'grad step')}"
            curves[name] = torch.stack(preds).squeeze(-1).cpu()
    plot_regression_fits(run_dir / "plots" / "fig2_regression_fits.png", grid.flatten().cpu(),
                         truth.squeeze(-1).cpu(), tasks.support_x.squeeze(-1).cpu(),
                         tasks.support_y.squeeze(-1).cpu(), fits,
                         title=f"{config.task}: few-shot adaptation to held-out tasks (K={shots})")


# One intra-op thread: the sinusoid MLP is tiny, and thread synchronisation costs more than it saves.
_COMMON = by_concern(
    algorithm={"inner_lr": 0.01, "inner_steps": 1},
    loop={"meta_batch_size": 25, "meta_lr": 1e-3, "val_every": 1000, "val_tasks": 200,
          "checkpoint_every": 1000},
    execution={"threads": 1},
    evaluation={"eval_inner_steps": 10, "test_tasks": 1000})

SINUSOID = Experiment(
    name="sinusoid",
    algorithm_arguments=True,
    summary="Sinusoid regression (Finn et al. 2017, 5.1): A~U[0.1,5], phase~U[0,pi], x~U[-5,5].",
    defaults={**_COMMON, "task": "sinusoid", "shots": 10, "queries": 10, "iterations": 70000,
              "eval_shots": [5, 10, 20]},
    train=train,
    evaluate=evaluate,
    check=check,
    load=lambda config, run_dir: _load(config, run_dir, "maml", config.inner_lr),
)

LINEAR = Experiment(
    name="linear",
    algorithm_arguments=True,
    summary="Lines y = a x + b, a,b~U[-3,3]: fit a new line from one or two points.",
    defaults={**_COMMON, "task": "linear", "shots": 2, "queries": 10, "iterations": 5000,
              "inner_lr": 0.1, "eval_shots": [1, 2, 5], "val_every": 500},
    train=train,
    evaluate=evaluate,
    check=check,
    load=lambda config, run_dir: _load(config, run_dir, "maml", config.inner_lr),
)
