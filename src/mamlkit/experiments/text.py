"""Few-shot text classification: intents (BANKING77, CLINC150) and relations (FewRel).

N-way K-shot episodes (Vinyals et al., 2016) are drawn from classes split into disjoint
meta-train / meta-validation / meta-test sets, so evaluation is on intents or relations never
seen in meta-training. Four encoders (``--encoder``):

- ``pretrained`` (default): frozen all-MiniLM-L6-v2 sentence embeddings, computed once and
  cached on disk (keyed by model and a checksum of the texts), and a small MLP head that is
  meta-learned (MAML, Finn et al., 2017; ANIL, Raghu et al., 2020, adapts only its last layer;
  Meta-SGD, Li et al., 2017, learns per-weight inner rates). Meta-training runs at head speed.
- ``bag`` / ``cnn``: a trainable averaged-word-vector (Joulin et al., 2017) or TextCNN (Kim,
  2014) classifier over word ids of a vocabulary fitted on meta-train texts; needs no pretrained
  weights, so the domain works without the text extra.
- ``last-layer``: MiniLM's last transformer layer and the head adapt in the inner loop, on cached
  states of the frozen lower layers (Bansal et al., 2020); first-order by default.
- ``lora``: LoRA adapters (Hu et al., 2022) in the query and value projections of MiniLM's last
  :data:`LORA_LAYERS` layers, on cached lower-layer states; every pretrained weight is frozen, so
  only the adapters and the head are adapted and meta-learned (``adapt=None`` selects what
  requires grad). First-order by default, ``--no-first-order`` for second order. With
  ``--algo protomaml`` (Triantafillou et al., 2020) the head starts every episode from the
  support prototypes and all six linear maps of the layer get adapters
  (:mod:`mamlkit.experiments.text_models`).

Evaluation (``mamlkit eval RUN_DIR``) scores the meta-learned model and two baselines on the same
fixed meta-test episodes (``test_tasks``, 600 by default), as mean query accuracy with a 95%
confidence interval: nearest-prototype classification (Snell et al., 2017) on frozen features
and the same architecture fine-tuned from a random initialisation, its step size and number of
steps chosen on meta-validation episodes (Chen et al., 2019, "A Closer Look at Few-shot
Classification").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mamlkit.config import TrainConfig, by_concern
from mamlkit.core.learner import MetaLearner
from mamlkit.evaluate import Estimate, mean_ci
from mamlkit.experiments import Experiment, protocol
from mamlkit.experiments.common import baseline_settings, save_config, setup_torch
from mamlkit.experiments.protocol import FINE_TUNE_RATES, TEST_SEED, VAL_SEED
from mamlkit.experiments.text_data import (
    CACHED_STATE_ENCODERS,
    LORA_LAYERS,
    SPLIT_SEED,
    TextTask,
    cap_per_class,
    check_dataset_name,
    check_episode_sizes,
    class_split,
    data_root,
    embedding_cache_dir,
    lower_layer_states,
    prepare_task,
    pretrained_encoder,
    sentence_embeddings,
    timed_cached,
    top_layers,
)
from mamlkit.experiments.text_models import (
    BAG_EMBEDDING_DIM,
    HEAD_HIDDEN,
    LAST_LAYER_DEFAULTS,
    LORA_DEFAULTS,
    LORA_PROTOMAML_DEFAULTS,
    LORA_PROTOMAML_TARGETS,
    LORA_RANK,
    PROTOTYPE_HEAD_SCALE,
    EmbeddingHead,
    _learner_dir,
    build_model,
    derived_defaults,
    feature_scale,
    lora_targets,
    make_learner,
)
from mamlkit.tasks.base import TaskBatch
from mamlkit.wording import count

if TYPE_CHECKING:
    from mamlkit.datasets.episodic import FixedEpisodes

__all__ = [  # the data and model pieces live in text_data / text_models; re-exported here
    "BAG_EMBEDDING_DIM", "BANKING77", "CACHED_STATE_ENCODERS", "CLINC150", "FEWREL",
    "HEAD_HIDDEN", "LAST_LAYER_DEFAULTS", "LORA_DEFAULTS", "LORA_LAYERS",
    "LORA_PROTOMAML_DEFAULTS", "LORA_PROTOMAML_TARGETS", "LORA_RANK", "PROTOTYPE_HEAD_SCALE",
    "SPLIT_SEED", "EmbeddingHead", "TextTask", "build_model", "cap_per_class",
    "check_dataset_name", "check_episode_sizes", "class_split", "data_root", "derived_defaults",
    "embedding_cache_dir", "evaluate", "feature_episodes", "feature_scale", "load_learner",
    "lora_targets", "lower_layer_states", "make_learner", "prepare_task", "pretrained_encoder",
    "sentence_embeddings", "timed_cached", "top_layers", "train",
]

FINE_TUNE_LRS = FINE_TUNE_RATES["text"]
"""Step sizes tried for the fine-tune-from-random-init baseline (chosen on validation episodes)."""
FINE_TUNE_STEP_FACTOR = 10
"""The fine-tune baseline may take up to this many times ``eval_inner_steps`` full-batch steps (the
best count is chosen on validation episodes), as a random initialisation needs more steps than a
meta-learned one; the last-layer encoder gets ``eval_inner_steps``, as a transformer layer per
step and episode is slow on a CPU."""
EVAL_META_BATCH = 100
"""Episodes scored at once in evaluation (8 for the last-layer and lora encoders)."""



# ------------------------------------------------------------------------------------- train
def train(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """Meta-train ``config.algo`` on the meta-train classes into ``run_dir/<algo>/``."""
    from mamlkit.train import meta_train

    setup_torch(config)  # threads for the encoder too
    task = prepare_task(config)
    torch.manual_seed(config.seed)  # the same initialisation whether or not the cache was cold
    save_config(config, run_dir)
    learner = make_learner(config, build_model(config, task))
    val = task.sampler("validation", config, 0).fixed_episodes(config.val_tasks, VAL_SEED).all()
    start = time.perf_counter()
    result = meta_train(learner, task.sampler("train", config, config.seed), config,
                        _learner_dir(run_dir, config), val_batch=val, resume=resume)
    wall = time.perf_counter() - start
    done = result.iteration
    summary = {
        config.algo: {
            "iterations": done, "train_seconds": result.elapsed_s, "wall_seconds": wall,
            "episodes_per_second": done * config.meta_batch_size / max(result.elapsed_s, 1e-9),
            "best_val_accuracy": result.best_metric, "stopped": result.stopped_early},
        "data": _describe(task, config),
    }
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _describe(task: TextTask, config: TrainConfig) -> dict[str, Any]:
    return {"dataset": task.dataset, "texts": len(task.data), "encoder": config.encoder,
            "classes": {s: len(task.split.classes(s)) for s in ("train", "validation", "test")},
            "features": list(task.features.shape[1:]), **task.feature_info}


# ---------------------------------------------------------------------------------- evaluate
def load_learner(config: TrainConfig, task: TextTask, run_dir: Path) -> MetaLearner:
    """The meta-learned model of a run (its best validation checkpoint)."""
    from mamlkit.checkpoint import load_checkpoint

    path = _learner_dir(run_dir, config) / "checkpoints" / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} has no finished {config.algo} "
                                "training. Train first (mamlkit train), or resume it.")
    learner = make_learner(config, build_model(config, task))
    learner.load_state_dict(load_checkpoint(path, map_location=config.device)["learner"])
    return learner


def _episodes(task: TextTask, config: TrainConfig, split: str, count: int, seed: int
              ) -> FixedEpisodes:
    batch = 8 if config.encoder in CACHED_STATE_ENCODERS else EVAL_META_BATCH
    return task.sampler(split, config, 0).fixed_episodes(count, seed, meta_batch_size=batch)


def accuracy_curves(learner: MetaLearner, episodes: Iterable[TaskBatch], steps: int,
                    device: str) -> Tensor:
    """Query accuracy after 0..``steps`` adaptation steps, ``[steps + 1, episodes]``."""
    return protocol.curves(learner, episodes, steps, device)["query_accuracy"]


def feature_episodes(model: nn.Module, task: TextTask, config: TrainConfig, split: str,
                     episodes: FixedEpisodes) -> FixedEpisodes:
    """``episodes`` (drawn from the ``split`` classes) with every text replaced by
    ``model.features`` of it, each text encoded once (not once per episode that holds it)."""
    from mamlkit.datasets.episodic import FixedEpisodes
    from mamlkit.text.episodes import ClassGroups

    groups = task.groups[split]
    model = model.to(config.device).eval()
    with torch.no_grad():
        tensors = [model.features(t.to(config.device)).cpu() for t in groups.tensors]
    features = ClassGroups(tensors, groups.class_ids, groups.class_names)
    sampler = features.sampler(config.ways, config.shots, config.queries)
    return FixedEpisodes(sampler, episodes.indices, EVAL_META_BATCH)


def prototype_accuracies(config: TrainConfig, task: TextTask, learner: MetaLearner,
                         episodes: FixedEpisodes, split: str = "test",
                         meta_learned: bool = False) -> tuple[Tensor, str]:
    """Nearest-prototype query accuracy per episode of ``split`` and a description of the
    features used.

    Frozen MiniLM embeddings for ``pretrained``; the frozen encoder's pooled output for
    ``last-layer`` and ``lora`` (the un-meta-trained layer), or with ``meta_learned`` the
    meta-learned layer's (adapters') output without adaptation; the meta-trained encoder's
    features for ``bag``/``cnn``, which have no pretrained features.
    """
    from mamlkit.text.baselines import prototype_accuracy

    if config.encoder == "pretrained":
        return torch.cat([prototype_accuracy(b) for b in episodes]), "frozen MiniLM embeddings"
    if config.encoder in CACHED_STATE_ENCODERS and not meta_learned:
        model, label = build_model(config, task), "frozen MiniLM (last layer not adapted)"
    elif config.encoder in CACHED_STATE_ENCODERS:
        model, label = learner.model, f"meta-learned {config.encoder} features, no adaptation"
    else:
        model, label = learner.model, f"meta-trained {config.encoder} encoder features"
    batches = feature_episodes(model, task, config, split, episodes)
    return torch.cat([prototype_accuracy(b) for b in batches]), label


def fine_tune_accuracies(config: TrainConfig, task: TextTask, val_episodes: FixedEpisodes,
                         test_episodes: FixedEpisodes) -> tuple[Tensor, dict[str, Any]]:
    """The model fine-tuned from a random initialisation on each test episode's support set.

    The step size (from :data:`FINE_TUNE_LRS`) and the number of full-batch steps (up to
    :data:`FINE_TUNE_STEP_FACTOR` times ``eval_inner_steps``) are those with the best mean
    accuracy on the validation episodes.
    The last-layer encoder keeps its pretrained layer and gets a random head.
    """
    max_steps = config.eval_inner_steps * (1 if config.encoder in CACHED_STATE_ENCODERS
                                           else FINE_TUNE_STEP_FACTOR)
    choice = protocol.choose_rate(FINE_TUNE_LRS, lambda lr: accuracy_curves(
        _random_init(config, task, lr), val_episodes, max_steps, config.device).mean(dim=1),
        maximize=True)
    lr, steps, val_accuracy = choice.rate, choice.best_step[choice.rate], choice.scores[choice.rate]
    learner = _random_init(config, task, lr)
    scores = accuracy_curves(learner, test_episodes, steps, config.device)[-1]
    return scores, {"lr": lr, "steps": steps, "val_accuracy": val_accuracy}


def _random_init(config: TrainConfig, task: TextTask, lr: float) -> MetaLearner:
    torch.manual_seed(config.seed + 1)
    model = build_model(config, task)
    if config.encoder in CACHED_STATE_ENCODERS:
        model.head.reset_parameters()  # a random head on the pretrained layer
    ft = baseline_settings(config, "randominit", inner_lr=lr)
    return make_learner(ft, model)


def evaluate(config: TrainConfig, run_dir: Path, baselines: bool = True) -> dict[str, Any]:
    """Mean query accuracy ± 95% CI on ``test_tasks`` fixed meta-test episodes: the meta-learned
    model and (unless ``baselines=False``) the prototype baseline and fine-tuning from random
    init, all on the same episodes; printed, and saved to ``run_dir/eval/``.

    ``results["methods"]`` holds the estimates under stable keys (``meta``,
    ``meta_no_adaptation``, ``prototype``, ``prototype_meta_learned`` for the cached-state
    encoders, ``fine_tune``); ``results["accuracy"]`` the same under
    readable labels.
    """
    setup_torch(config)
    task = prepare_task(config)
    torch.manual_seed(config.seed)
    learner = load_learner(config, task, run_dir)
    test = _episodes(task, config, "test", config.test_tasks, TEST_SEED)
    start = time.perf_counter()
    steps = config.eval_inner_steps
    meta = accuracy_curves(learner, test, steps, config.device)
    meta_s = time.perf_counter() - start
    rows: dict[str, tuple[str, Estimate]] = {
        "meta": (f"{config.algo} ({count(steps, 'step')})", mean_ci(meta[-1])),
        "meta_no_adaptation": (f"{config.algo} (no adaptation)", mean_ci(meta[0])),
    }
    fine_tune_info: dict[str, Any] = {}
    if baselines:
        proto, proto_features = prototype_accuracies(config, task, learner, test)
        rows["prototype"] = (f"prototypes on {proto_features}", mean_ci(proto))
        if config.encoder in CACHED_STATE_ENCODERS:
            learned, learned_features = prototype_accuracies(config, task, learner, test,
                                                             meta_learned=True)
            rows["prototype_meta_learned"] = (f"prototypes on {learned_features}",
                                              mean_ci(learned))
        val = _episodes(task, config, "validation", config.val_tasks, VAL_SEED)
        fine_tune, fine_tune_info = fine_tune_accuracies(config, task, val, test)
        rows["fine_tune"] = (f"fine-tune from random init ({count(fine_tune_info['steps'], 'step')}, "
                             f"lr {fine_tune_info['lr']})", mean_ci(fine_tune))
    title = (f"{task.dataset} {config.ways}-way {config.shots}-shot, encoder {config.encoder}: "
             f"query accuracy, mean ± 95% CI over {config.test_tasks} meta-test episodes "
             f"({len(task.split.test)} unseen classes)")
    width = max(len(label) for label, _ in rows.values())
    lines = [title] + [f"  {label:<{width}}  {est.mean * 100:6.2f} ± {est.ci95 * 100:.2f} %"
                       for label, est in rows.values()]
    results = {
        "dataset": task.dataset, "ways": config.ways, "shots": config.shots,
        "queries": config.queries, "encoder": config.encoder, "algo": config.algo,
        "episodes": config.test_tasks, "eval_inner_steps": steps,
        "accuracy": {label: _estimate(e) for label, e in rows.values()},
        "methods": {key: {"label": label, **_estimate(e)} for key, (label, e) in rows.items()},
        "fine_tune": fine_tune_info, "meta_eval_seconds": meta_s, "table": "",
        "data": _describe(task, config),
    }
    protocol.write_results(run_dir, results, "\n".join(lines))
    return results


_COMMON: dict[str, Any] = by_concern(
    algorithm={"inner_lr": 0.1, "inner_steps": 5},
    loop={"meta_batch_size": 16, "meta_lr": 1e-3, "iterations": 500, "val_every": 50,
          "val_tasks": 100, "checkpoint_every": 50},
    data={"encoder": "pretrained", "ways": 5, "shots": 1, "queries": 15},
    evaluation={"eval_inner_steps": 10, "test_tasks": 600, "plots": False})
"""Defaults of every text experiment (frozen encoder + MLP head, 5-way 1-shot, 15 queries)."""


def _estimate(estimate: Estimate) -> dict[str, Any]:
    return {"mean": estimate.mean, "ci95": estimate.ci95, "n": estimate.n}


def _experiment(name: str, summary: str) -> Experiment:
    return Experiment(name=name, summary=summary, defaults={**_COMMON, "task": name},
                      algorithm_arguments=True,
                      train=train, evaluate=evaluate, derived_defaults=derived_defaults)


BANKING77 = _experiment(
    "banking77", "BANKING77 intents (Casanueva et al. 2020): 5-way few-shot on 15 unseen intents.")
CLINC150 = _experiment(
    "clinc150", "CLINC150 intents (Larson et al. 2019): 5-way few-shot on intents of 2 unseen "
    "domains.")
FEWREL = _experiment(
    "fewrel", "FewRel 1.0 relations (Han et al. 2018): 5-way few-shot on 5 unseen relations.")
