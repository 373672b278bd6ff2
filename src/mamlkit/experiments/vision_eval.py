"""Evaluation of the image experiments with the paper's protocol (see :mod:`.vision`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlkit.algorithms import algorithm_label
from mamlkit.algorithms.maml import MAML
from mamlkit.checkpoint import load_checkpoint
from mamlkit.config import TrainConfig
from mamlkit.core.learner import MetaLearner
from mamlkit.datasets.episodic import FixedEpisodes
from mamlkit.evaluate import Estimate, summarize_curve
from mamlkit.experiments.common import build_learner, setup_torch
from mamlkit.experiments.vision_data import (
    TEST_SEED,
    VAL_SEED,
    baseline_config,
    build_model,
    class_split,
    eval_queries,
    head_names,
    load_all,
)

FINE_TUNE_LRS = (0.01, 0.04, 0.1, 0.4)
"""Fine-tuning step sizes tried for the baselines (chosen on meta-validation episodes)."""
TUNE_EPISODES = 100
"""At most this many meta-validation episodes are used to choose the fine-tuning step size."""
EVAL_CHUNK = 100
"""Episodes adapted at once in evaluation (bounds memory)."""

def _learning_curve(sub: Path, run_dir: Path) -> None:
    import csv

    from mamlkit.plots import plot_learning_curve

    with (sub / "metrics.csv").open() as handle:
        if not any(row.get("val_accuracy") for row in csv.DictReader(handle)):
            return
    plot_learning_curve(run_dir / "plots" / "learning_curve.png", sub / "metrics.csv")


# ----------------------------------------------------------------------------------- evaluation
def _load_state(path: Path, device: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; train the run first (mamlkit train "
                                "... --run-dir) or pass the folder of a finished run.")
    return load_checkpoint(path, map_location=device)["learner"]


def maml_learner(config: TrainConfig, run_dir: Path) -> MetaLearner:
    """The meta-learned initialisation of the run, adapting with the inner learning rate."""
    setup_torch(config)
    learner = build_learner(config, build_model(config, config.ways), "cross_entropy",
                            inner_steps=config.eval_inner_steps).to(config.device)
    learner.load_state_dict(_load_state(run_dir / "maml" / "checkpoints" / "best.pt",
                                        config.device))
    return learner


def fine_tune_learner(config: TrainConfig, run_dir: Path | None, lr: float) -> MetaLearner:
    """A network fine-tuned on each support set with step size ``lr``: the pretrained
    classifier's features with a zero ``ways``-way output layer when ``run_dir`` is given, a
    random initialisation (seeded) otherwise."""
    base = baseline_config(config)
    setup_torch(base)
    model = build_model(config, config.ways)
    if run_dir is not None:
        state = _load_state(run_dir / "pretrained" / "checkpoints" / "best.pt", config.device)
        head = set(head_names(model))
        features = {k.removeprefix("model."): v for k, v in state.items()
                    if k.startswith("model.") and k.removeprefix("model.") not in head}
        missing, unexpected = model.load_state_dict(features, strict=False)
        if set(missing) != head or unexpected:
            raise ValueError(f"the pretrained checkpoint does not match the network (missing "
                             f"{sorted(set(missing) - head)}, unexpected {unexpected}); was the "
                             "run trained with another --model or --hidden?")
        with torch.no_grad():
            for name in head:
                model.get_parameter(name).zero_()
    return MAML(model, inner_lr=lr, inner_steps=config.eval_inner_steps, loss="cross_entropy",
                batching=config.batching).to(config.device)


def accuracy_curve(learner: MetaLearner, episodes: FixedEpisodes, steps: int,
                   device: str = "cpu") -> Tensor:
    """Query accuracy ``[steps + 1, episodes]`` after 0..``steps`` adaptation steps."""
    parts = [learner.adaptation_curve(batch.to(device), steps)["query_accuracy"].cpu()
             for batch in episodes]
    return torch.cat(parts, dim=1)


def choose_fine_tune_lr(config: TrainConfig, run_dir: Path | None, val: FixedEpisodes
                        ) -> tuple[float, dict[str, float]]:
    """The step size of :data:`FINE_TUNE_LRS` with the best validation accuracy after
    ``eval_inner_steps`` steps, and every candidate's accuracy."""
    scores = {}
    for lr in FINE_TUNE_LRS:
        learner = fine_tune_learner(config, run_dir, lr)
        curve = accuracy_curve(learner, val, config.eval_inner_steps, config.device)
        scores[lr] = float(curve[-1].mean())
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def _row(label: str, estimates: list[Estimate], picks: list[int]) -> str:
    cells = [f"{100 * estimates[s].mean:6.2f} ± {100 * estimates[s].ci95:4.2f}" for s in picks]
    return f"{label:<12} " + " ".join(f"{c:>15}" for c in cells)


def evaluate(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """The paper's protocol on the meta-test split: accuracy (mean ± 95% CI over ``test_tasks``
    fixed episodes) after 0..``eval_inner_steps`` steps for MAML and both baselines; prints the
    table, saves ``eval/results.json``, ``eval/table.txt`` and the plots."""
    best = run_dir / "maml" / "checkpoints" / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best} does not exist; train the run first (mamlkit train "
                                "... --run-dir) or pass the folder of a finished run.")
    data = load_all(config, ("val", "test"))
    steps = config.eval_inner_steps
    queries = eval_queries(config)
    test = data["test"].sampler(config.ways, config.shots, queries).fixed_episodes(
        config.test_tasks, TEST_SEED, meta_batch_size=EVAL_CHUNK)
    val = data["val"].sampler(config.ways, config.shots, queries).fixed_episodes(
        min(config.val_tasks, TUNE_EPISODES), VAL_SEED, meta_batch_size=EVAL_CHUNK)
    maml = maml_learner(config, run_dir)
    results: dict[str, Any] = {
        "task": config.task, "class_split": class_split(config), "ways": config.ways,
        "shots": config.shots, "queries": queries, "test_episodes": config.test_tasks,
        "test_seed": TEST_SEED, "steps": steps, "inner_lr": config.inner_lr, "accuracy": {},
        "fine_tune_lr": {}, "fine_tune_val_accuracy": {}}
    models: dict[str, MetaLearner] = {algorithm_label(config.algo): maml}
    baselines = {"pretrained": run_dir, "random init": None}
    if not (run_dir / "pretrained" / "checkpoints" / "best.pt").is_file():
        baselines.pop("pretrained")
        results["note"] = "no pretrained checkpoint in the run: that baseline was skipped"
    for label, source in baselines.items():
        lr, scores = choose_fine_tune_lr(config, source, val)
        results["fine_tune_lr"][label] = lr
        results["fine_tune_val_accuracy"][label] = scores
        models[label] = fine_tune_learner(config, source, lr)
    curves = {}
    for label, learner in models.items():
        estimates = summarize_curve({"a": accuracy_curve(learner, test, steps, config.device)})["a"]
        curves[label] = estimates
        results["accuracy"][label] = [{"mean": e.mean, "ci95": e.ci95} for e in estimates]
    picks = sorted({0, min(1, steps), min(5, steps), steps})
    lines = [f"{config.task} {config.ways}-way {config.shots}-shot ({class_split(config)} split): "
             f"query accuracy (%) after k steps, mean ± 95% CI over {config.test_tasks} meta-test "
             f"episodes ({queries} queries per class, seed {TEST_SEED})",
             f"{'model':<12} " + " ".join(f"{f'{k} steps':>15}" for k in picks)]
    lines += [_row(label, est, picks) for label, est in curves.items()]
    lines.append("fine-tuning step size (chosen on validation): " + ", ".join(
        f"{k} {v}" for k, v in results["fine_tune_lr"].items()))
    table = "\n".join(lines)
    results["table"] = table
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.txt").write_text(table + "\n")
    print(table)
    if config.plots:
        from mamlkit.plots import plot_adaptation_curves

        plot_adaptation_curves(run_dir / "plots" / "accuracy_vs_steps.png", curves,
                               "query accuracy", f"{config.task} {config.ways}-way "
                               f"{config.shots}-shot")
        if (run_dir / "maml" / "metrics.csv").is_file():
            _learning_curve(run_dir / "maml", run_dir)
    return results


