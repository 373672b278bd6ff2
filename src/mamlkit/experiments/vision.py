"""Few-shot image classification: Omniglot, miniImageNet and CIFAR-FS (Finn et al. 2017, 5.2).

One code path for the three datasets; they differ only in where their files are, the image
shape, the network width and the literature's hyperparameters.

Meta-training follows MAML's released code: N-way K-shot episodes with as many query examples
per class as shots for Omniglot (15 for miniImageNet and CIFAR-FS), Adam with rate 1e-3, and the
four-block ConvNet normalising with batch statistics. Omniglot 5-way: meta-batch 32, one inner
step of 0.4; 20-way: meta-batch 16, five steps of 0.1 (these follow ``--ways`` unless given
explicitly). miniImageNet: meta-batch 4 (1-shot) or 2 (5-shot), five steps of 0.01, 32 filters.
Validation accuracy on fixed meta-validation episodes selects the best checkpoint.

Evaluation (``mamlkit eval RUN_DIR``) scores three models on the same ``test_tasks`` (600)
meta-test episodes, drawn with a fixed seed, after 0..``eval_inner_steps`` (10) gradient steps
on each support set, as mean query accuracy with a 95% confidence interval:

- MAML: the meta-learned initialisation, adapted with the inner learning rate;
- pretrained: the same network trained as an ordinary classifier over all meta-training classes
  (cross-entropy, Adam, ``meta_batch_size * ways * (shots + queries)`` images per step, so it
  sees as many images per iteration as MAML), then its output layer replaced by a fresh
  ``ways``-way layer initialised to zero (the first step then makes it a class-mean classifier,
  and no random draw is involved) and every parameter fine-tuned on the support set;
- random init: the same network from a random initialisation, fine-tuned the same way.

The baselines' fine-tuning rate is chosen among :data:`FINE_TUNE_LRS` by accuracy after
``eval_inner_steps`` steps on meta-validation episodes.

Class splits (``--class-split``): Omniglot ``paper`` (default; MAML's 1,100 / 100 / 423
characters, each in four rotations) or ``official`` (Lake et al.'s background set for training,
of which :data:`OFFICIAL_VAL_CHARACTERS` characters are held out for validation, and the
evaluation set for testing; four rotations as well). miniImageNet: Ravi & Larochelle's 64 / 16 /
20 classes; CIFAR-FS: Bertinetto et al.'s 64 / 16 / 20 classes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlkit.config import TrainConfig, by_concern
from mamlkit.experiments import Experiment
from mamlkit.experiments.common import build_learner, save_config, setup_torch
from mamlkit.experiments.vision_data import (  # noqa: F401 - the public names of the experiments
    DATASETS,
    ROLES,
    VAL_SEED,
    ClassifierBatches,
    ImageDataset,
    baseline_config,
    build_model,
    check_data,
    check_episodes,
    class_split,
    classifier_batch_size,
    data_folder,
    dataset_spec,
    eval_queries,
    head_names,
    load_all,
    load_split,
    resolve_config,
)
from mamlkit.experiments.vision_eval import (  # noqa: F401
    FINE_TUNE_LRS,
    _learning_curve,
    choose_fine_tune_lr,
    evaluate,
    fine_tune_learner,
    maml_learner,
)
from mamlkit.noise import NoisySupportSampler, SupportNoise
from mamlkit.train import meta_train


# ------------------------------------------------------------------------------------- training
def _summary(result: Any, wall_s: float) -> dict[str, Any]:
    budget = result.stopped_early.startswith("time budget")
    return {"iterations": result.iteration, "train_seconds": round(result.elapsed_s, 1),
            "wall_seconds": round(wall_s, 1), "best_val_accuracy": result.best_metric,
            "budget_reached": budget, "stopped": "" if budget else result.stopped_early}


def train(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """Meta-train MAML, then the pretrained classifier baseline, into ``run_dir``.

    Every dataset split is loaded and checked against the episode shape first, so bad input
    fails before any training. ``--workers N`` builds the meta-training episodes in N DataLoader
    processes (:class:`~mamlkit.datasets.loader.EpisodeLoader`); an empty validation split
    (``--class-split 0.7,0,0.3``) keeps the last checkpoint as the best one.
    """
    config = resolve_config(config)
    data = load_all(config)
    build_model(config, config.ways)  # model errors before training too
    save_config(config, run_dir)
    summary: dict[str, Any] = {}

    setup_torch(config)
    learner = build_learner(config, build_model(config, config.ways), "cross_entropy")
    learner = learner.to(config.device)
    tasks = data["train"].sampler(config.ways, config.shots, config.queries, seed=config.seed)
    if config.workers:
        from mamlkit.datasets.loader import EpisodeLoader

        tasks = EpisodeLoader(tasks, config.meta_batch_size, config.workers, seed=config.seed)
    if config.train_support_noise:  # noise-aware meta-training: support labels only
        tasks = NoisySupportSampler(tasks, SupportNoise(config.train_support_noise,
                                                        config.train_noise_kind),
                                    seed=config.seed, ways=config.ways)
    val = None
    if len(data["val"]):
        val = data["val"].sampler(config.ways, config.shots, eval_queries(config)).fixed_episodes(
            config.val_tasks, VAL_SEED, meta_batch_size=config.val_tasks).all().to(config.device)
    sub = run_dir / "maml"
    start = time.perf_counter()
    result = meta_train(learner, tasks, config, sub, val_batch=val, resume=resume)
    summary["maml"] = _summary(result, time.perf_counter() - start)
    if config.plots and (sub / "metrics.csv").is_file():
        _learning_curve(sub, run_dir, config)

    if not summary["maml"]["stopped"] and config.baseline == "pretrained":
        base = baseline_config(config)
        setup_torch(base)
        model = build_model(config, len(data["train"]))
        learner = build_learner(base, model, "cross_entropy").to(config.device)
        batches = ClassifierBatches(data["train"], classifier_batch_size(config), seed=base.seed)
        sub = run_dir / "pretrained"
        start = time.perf_counter()
        result = meta_train(learner, batches, base, sub, title=f"pretrained baseline {config.task}",
                            resume=resume)
        summary["pretrained"] = _summary(result, time.perf_counter() - start)
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------- experiments
def by_key(table: Mapping[int, Mapping[str, Any]], value: int) -> Mapping[str, Any]:
    """The entry of ``table`` with the largest key not above ``value`` (else the smallest key)."""
    below = [k for k in table if k <= value]
    return table[max(below) if below else min(table)]


OMNIGLOT_BY_WAYS: dict[int, dict[str, Any]] = {
    5: {"meta_batch_size": 32, "inner_steps": 1, "inner_lr": 0.4},
    20: {"meta_batch_size": 16, "inner_steps": 5, "inner_lr": 0.1},
}
"""MAML's Omniglot settings by number of ways (fewer than 20 ways use the 5-way ones)."""

MINIIMAGENET_BY_SHOTS: dict[int, dict[str, Any]] = {
    1: {"meta_batch_size": 4},
    5: {"meta_batch_size": 2},
}
"""MAML's miniImageNet meta-batch by number of shots."""


def omniglot_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """Omniglot defaults that depend on the chosen ways and shots: the table above, and as many
    meta-training queries per class as shots (MAML's code)."""
    return {**by_key(OMNIGLOT_BY_WAYS, values["ways"]), "queries": values["shots"]}


def miniimagenet_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """miniImageNet/CIFAR-FS defaults that depend on the chosen shots."""
    return dict(by_key(MINIIMAGENET_BY_SHOTS, values["shots"]))


_COMMON = by_concern(
    algorithm={"algo": "maml"},
    loop={"meta_lr": 1e-3, "optimizer": "adam", "iterations": 60000, "val_every": 500,
          "val_tasks": 100, "checkpoint_every": 500, "baseline_iterations": 0},
    data={"ways": 5, "shots": 1},
    evaluation={"eval_inner_steps": 10, "test_tasks": 600})

OMNIGLOT = Experiment(
    name="omniglot",
    algorithm_arguments=True,
    summary="Omniglot N-way K-shot (Finn et al. 2017, 5.2): 1,623 characters x 4 rotations.",
    defaults={**_COMMON, "task": "omniglot", "queries": 1, **OMNIGLOT_BY_WAYS[5]},
    train=train,
    evaluate=evaluate,
    derived_defaults=omniglot_defaults,
    check=check_data,
    load=maml_learner,
)

_MINI = {**_COMMON, "queries": 15, "inner_lr": 0.01, "inner_steps": 5, **MINIIMAGENET_BY_SHOTS[1]}

MINIIMAGENET = Experiment(
    name="miniimagenet",
    algorithm_arguments=True,
    summary="miniImageNet N-way K-shot (Finn et al. 2017, 5.2), Ravi & Larochelle split.",
    defaults={**_MINI, "task": "miniimagenet"},
    train=train,
    evaluate=evaluate,
    derived_defaults=miniimagenet_defaults,
    check=check_data,
    load=maml_learner,
)

CIFAR_FS = Experiment(
    name="cifar-fs",
    algorithm_arguments=True,
    summary="CIFAR-FS N-way K-shot (Bertinetto et al. 2019) with MAML's miniImageNet settings.",
    defaults={**_MINI, "task": "cifar-fs"},
    train=train,
    evaluate=evaluate,
    derived_defaults=miniimagenet_defaults,
    check=check_data,
    load=maml_learner,
)
