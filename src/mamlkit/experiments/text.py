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
  requires grad). First-order by default, ``--no-first-order`` for second order.

Evaluation (``mamlkit eval RUN_DIR``) scores the meta-learned model and two baselines on the same
fixed meta-test episodes (``test_tasks``, 600 by default), as mean query accuracy with a 95%
confidence interval: nearest-prototype classification (Snell et al., 2017) on frozen features
and the same architecture fine-tuned from a random initialisation, its step size and number of
steps chosen on meta-validation episodes (Chen et al., 2019, "A Closer Look at Few-shot
Classification").
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mamlkit.config import TrainConfig, by_concern
from mamlkit.core.learner import MetaLearner
from mamlkit.evaluate import Estimate, mean_ci
from mamlkit.experiments import Experiment, protocol
from mamlkit.experiments.common import baseline_settings, build_learner, save_config, setup_torch
from mamlkit.experiments.protocol import FINE_TUNE_RATES, TEST_SEED, VAL_SEED
from mamlkit.tasks.base import TaskBatch
from mamlkit.text.data import TextClassificationData
from mamlkit.text.episodes import ClassGroups, split_class_groups
from mamlkit.text.registry import TEXT_DATASETS, load_text_dataset
from mamlkit.text.splits import ClassSplit, default_class_split
from mamlkit.wording import count

if TYPE_CHECKING:
    from mamlkit.datasets.episodic import EpisodeSampler, FixedEpisodes

SPLIT_SEED = 0
"""Seed of the class split: fixed, so every run of a dataset is scored on the same classes."""
HEAD_HIDDEN = 256
"""Hidden width of the MLP head on frozen sentence embeddings."""
BAG_EMBEDDING_DIM = 64
"""Word-vector size of the bag and cnn encoders."""
FINE_TUNE_LRS = FINE_TUNE_RATES["text"]
"""Step sizes tried for the fine-tune-from-random-init baseline (chosen on validation episodes)."""
FINE_TUNE_STEP_FACTOR = 10
"""The fine-tune baseline may take up to this many times ``eval_inner_steps`` full-batch steps (the
best count is chosen on validation episodes), as a random initialisation needs more steps than a
meta-learned one; the last-layer encoder gets ``eval_inner_steps``, as a transformer layer per
step and episode is slow on a CPU."""
EVAL_META_BATCH = 100
"""Episodes scored at once in evaluation (8 for the last-layer and lora encoders)."""
CACHED_STATE_ENCODERS = ("last-layer", "lora")
"""Encoders that run MiniLM's top layer(s) on cached states of its frozen lower layers."""
LORA_LAYERS = 1
"""MiniLM layers (from the top) that get LoRA adapters under ``--encoder lora``."""
LORA_RANK = 8
"""Rank of the LoRA adapters."""


# ---------------------------------------------------------------------------------------- data
def data_root(config: TrainConfig) -> Path:
    """The datasets folder: ``config.data_root``, else ``$MAMLKIT_DATA``; a clear error if neither
    is set or the folder does not exist."""
    root = config.data_root or os.environ.get("MAMLKIT_DATA", "")
    if not root:
        raise FileNotFoundError(
            "no data folder given: pass --data-root FOLDER (holding banking77/, clinc150/, "
            "fewrel/) or set the MAMLKIT_DATA environment variable.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist; pass --data-root pointing at "
                                "the folder that holds banking77/, clinc150/ and fewrel/.")
    return path


def check_dataset_name(name: str) -> str:
    """``name`` if it is a known text dataset; ``ValueError`` listing the known ones otherwise."""
    if name not in TEXT_DATASETS:
        raise ValueError(f"unknown text dataset {name!r}; known datasets: "
                         f"{', '.join(sorted(TEXT_DATASETS))}.")
    return name


def cap_per_class(data: TextClassificationData, limit: int) -> TextClassificationData:
    """``data`` with at most ``limit`` examples of each class, the first ones in file order
    (``limit=0`` keeps everything)."""
    if limit == 0:
        return data
    keep = sorted(i for rows in data.indices_by_class() for i in rows[:limit])
    return TextClassificationData(
        texts=[data.texts[i] for i in keep], labels=[data.labels[i] for i in keep],
        class_names=data.class_names, name=data.name,
        parts=[data.parts[i] for i in keep] if data.parts else [],
        class_groups=data.class_groups, class_descriptions=data.class_descriptions)


def class_split(dataset: str, data: TextClassificationData) -> ClassSplit:
    """The meta-train / validation / test classes used by the ``dataset`` experiment."""
    return default_class_split(data, SPLIT_SEED)


def check_episode_sizes(dataset: str, data: TextClassificationData, split: ClassSplit,
                        config: TrainConfig) -> None:
    """Raise ``ValueError`` (before any encoding) when a split has fewer classes than ``ways`` or a
    class has fewer examples than ``shots + queries``, naming the class and the fix."""
    counts = data.class_counts()
    need = config.shots + config.queries
    for name in ("train", "validation", "test"):
        classes = split.classes(name)
        if len(classes) < config.ways:
            raise ValueError(
                f"ways={config.ways} but the meta-{name} split of {dataset} has only "
                f"{len(classes)} classes; use --ways {len(classes)} or fewer.")
        short = [c for c in classes if counts[c] < need]
        if short:
            smallest = min(counts[c] for c in classes)
            capped = (f" (--max-per-class {config.max_per_class} keeps at most that many; raise "
                      "it)" if config.max_per_class else "")
            raise ValueError(
                f"{dataset}: class {data.class_names[short[0]]!r} of the meta-{name} split has "
                f"{counts[short[0]]} examples but shots + queries = {config.shots} + "
                f"{config.queries} = {need} are needed{capped}. Lower --shots/--queries so that "
                f"shots + queries <= {smallest}.")


# ---------------------------------------------------------------------------------- features
def embedding_cache_dir(config: TrainConfig) -> Path:
    """Where cached encoder outputs go: ``config.cache_dir`` or the library default."""
    from mamlkit.text.embedding_cache import default_cache_dir

    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()


def _timing_file(cache_file: Path) -> Path:
    return cache_file.with_name(cache_file.name + ".timing.json")


def timed_cached(cache_file: Path, compute: Callable[[], Tensor]
                 ) -> tuple[Tensor, dict[str, Any]]:
    """Run the caching ``compute()`` and time it; on a cache miss the wall-clock of that first run
    is stored beside the cache file, so later (cached) runs can report both numbers."""
    hit = cache_file.is_file()
    start = time.perf_counter()
    tensor = compute()
    seconds = time.perf_counter() - start
    info: dict[str, Any] = {"cache_file": str(cache_file), "cache_hit": hit, "seconds": seconds}
    timing = _timing_file(cache_file)
    if not hit:
        record = {"first_run_seconds": seconds, "texts": int(tensor.shape[0]),
                  "torch_threads": torch.get_num_threads(),
                  "measured_at": datetime.datetime.now().isoformat(timespec="seconds")}
        timing.write_text(json.dumps(record, indent=2) + "\n")
    if timing.is_file():
        info["first_run"] = json.loads(timing.read_text())
    return tensor, info


def sentence_embeddings(texts: list[str], cache_dir: Path) -> tuple[Tensor, dict[str, Any]]:
    """Frozen MiniLM sentence embeddings ``[n, 384]`` of ``texts`` (cached), with timing info."""
    from mamlkit.text.embedding_cache import cache_path, embed_texts, sentence_cache_key

    file = cache_path(cache_dir, sentence_cache_key(texts))
    return timed_cached(file, lambda: embed_texts(texts, cache_dir=cache_dir))


def lower_layer_states(texts: list[str], length: int, cache_dir: Path, top_layers: int = 1
                       ) -> tuple[Tensor, dict[str, Any]]:
    """Cached MiniLM token states entering its last ``top_layers`` layers, ``[n, length, 385]``,
    with timing."""
    from mamlkit.text.embedding_cache import cache_path, hidden_states_for_texts, texts_checksum
    from mamlkit.text.pretrained import DEFAULT_MODEL_ID

    encoder = pretrained_encoder()
    layer = encoder.num_layers - top_layers
    key = {"kind": "hidden", "model_id": DEFAULT_MODEL_ID, "layer": layer, "length": length,
           "texts": texts_checksum(texts), "count": len(texts)}
    return timed_cached(cache_path(cache_dir, key), lambda: hidden_states_for_texts(
        texts, top_layers, length, encoder=encoder, cache_dir=cache_dir))


@functools.lru_cache(maxsize=1)
def pretrained_encoder() -> Any:
    """The bundled frozen MiniLM encoder, loaded once per process (needs the text extra)."""
    from mamlkit.text.pretrained import PretrainedSentenceEncoder

    return PretrainedSentenceEncoder()


@dataclass
class TextTask:
    """Everything a text experiment needs: the data, its class split, the encoded examples of
    every text (embeddings, token ids or cached states) and their groups per split."""

    dataset: str
    data: TextClassificationData
    split: ClassSplit
    features: Tensor
    groups: dict[str, ClassGroups]
    vocab_size: int = 0
    feature_info: dict[str, Any] = field(default_factory=dict)

    def sampler(self, split: str, config: TrainConfig, seed: int) -> EpisodeSampler:
        """An :class:`~mamlkit.datasets.episodic.EpisodeSampler` over the ``split`` classes."""
        return self.groups[split].sampler(config.ways, config.shots, config.queries, seed=seed)


def prepare_task(config: TrainConfig) -> TextTask:
    """Load, cap and split the dataset, check episode sizes, then encode every text.

    All checks run before the (possibly minutes-long) encoding step.
    """
    dataset = check_dataset_name(config.task)
    data = cap_per_class(load_text_dataset(dataset, data_root(config)), config.max_per_class)
    split = class_split(dataset, data)
    check_episode_sizes(dataset, data, split, config)
    vocab_size, info = 0, {}
    if config.encoder in ("bag", "cnn"):
        from mamlkit.text.tokenizer import WordTokenizer

        tokenizer = WordTokenizer.fit(data.texts_of(split.train), max_length=config.max_tokens)
        features, vocab_size = tokenizer.encode(data.texts), tokenizer.vocab_size
        info = {"vocabulary": vocab_size, "fitted_on": "meta-train texts"}
    elif config.encoder == "pretrained":
        features, info = sentence_embeddings(data.texts, embedding_cache_dir(config))
    else:
        features, info = lower_layer_states(data.texts, config.max_tokens,
                                            embedding_cache_dir(config), top_layers(config))
    need = config.shots + config.queries
    groups = {name: split_class_groups(data, split, name, features, min_examples=need)
              for name in ("train", "validation", "test")}
    return TextTask(dataset, data, split, features, groups, vocab_size, info)


# ------------------------------------------------------------------------------------ models
class EmbeddingHead(nn.Module):
    """Meta-learned classifier on frozen sentence embeddings: Linear -> ReLU -> Linear.

    The unit-norm embeddings are multiplied by ``sqrt(dim)`` so their coordinates have about unit
    scale; the last ``nn.Linear`` (``output``) is the part ANIL adapts.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = HEAD_HIDDEN) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.hidden = nn.Linear(dim, hidden)
        self.output = nn.Linear(hidden, num_classes)

    def features(self, embeddings: Tensor) -> Tensor:
        """Hidden features ``[batch, hidden]`` before the output layer."""
        return torch.relu(self.hidden(self.scale * embeddings))

    def forward(self, embeddings: Tensor) -> Tensor:
        """Logits ``[batch, num_classes]`` of embeddings ``[batch, dim]``."""
        return self.output(self.features(embeddings))


def build_model(config: TrainConfig, task: TextTask) -> nn.Module:
    """A freshly initialised model for ``config.encoder`` with ``config.ways`` outputs.

    The last-layer model starts with a zero head: labels are permuted in every episode, so no
    class-specific head can be meta-learned, and from zero one gradient step sets each class's
    weights to its mean support feature minus the overall mean, a prototype classifier (the
    "zero trick" of Triantafillou et al., 2020, Proto-MAML). A random head moves too little in a
    few small steps for a transformer layer's step size.
    """
    if config.encoder == "pretrained":
        return EmbeddingHead(int(task.features.shape[1]), config.ways)
    if config.encoder == "bag":
        from mamlkit.text.encoders import BagOfEmbeddingsClassifier

        return BagOfEmbeddingsClassifier(task.vocab_size, config.ways, BAG_EMBEDDING_DIM)
    if config.encoder == "cnn":
        from mamlkit.text.encoders import TextCNNClassifier

        return TextCNNClassifier(task.vocab_size, config.ways, BAG_EMBEDDING_DIM)
    from mamlkit.text.last_layers import last_layers_from_pretrained

    model = last_layers_from_pretrained(pretrained_encoder(), top_layers(config), config.ways)
    if config.encoder == "lora":
        from mamlkit.text.lora import add_lora

        model = add_lora(model, rank=LORA_RANK)
    with torch.no_grad():  # zero head: the first inner step makes it a prototype-like classifier
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def top_layers(config: TrainConfig) -> int:
    """MiniLM layers the model runs on cached states (1 for ``last-layer``)."""
    return LORA_LAYERS if config.encoder == "lora" else 1


def make_learner(config: TrainConfig, model: nn.Module, **overrides: Any) -> MetaLearner:
    """``config.algo`` around ``model``; under ``batching=auto`` the cached-state encoders run
    one task at a time (a transformer layer vmapped over a meta-batch needs gigabytes)."""
    if config.encoder in CACHED_STATE_ENCODERS and config.batching == "auto":
        overrides.setdefault("batching", "loop")
    return build_learner(config, model, "cross_entropy", **overrides).to(config.device)


def _learner_dir(run_dir: Path, config: TrainConfig) -> Path:
    return run_dir / config.algo


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


def _frozen_feature_batch(model: nn.Module, batch: TaskBatch) -> TaskBatch:
    with torch.no_grad():
        def encode(x: Tensor) -> Tensor:
            flat = x.reshape(-1, *x.shape[2:])
            return model.features(flat).reshape(x.shape[0], x.shape[1], -1)

        return TaskBatch(encode(batch.support_x), batch.support_y, encode(batch.query_x),
                         batch.query_y, info=batch.info)


def prototype_accuracies(config: TrainConfig, task: TextTask, learner: MetaLearner,
                         episodes: Iterable[TaskBatch]) -> tuple[Tensor, str]:
    """Nearest-prototype query accuracy per episode and a description of the features used.

    Frozen MiniLM embeddings for ``pretrained``; the frozen encoder's pooled output for
    ``last-layer`` (the un-meta-trained layer); the meta-trained encoder's features for
    ``bag``/``cnn``, which have no pretrained features.
    """
    from mamlkit.text.baselines import prototype_accuracy

    if config.encoder == "pretrained":
        return torch.cat([prototype_accuracy(b) for b in episodes]), "frozen MiniLM embeddings"
    if config.encoder in CACHED_STATE_ENCODERS:  # adapters start at zero: the frozen encoder
        frozen = build_model(config, task).to(config.device).eval()
        return (torch.cat([prototype_accuracy(_frozen_feature_batch(frozen, b.to(config.device)))
                           .cpu() for b in episodes]), "frozen MiniLM (last layer not adapted)")
    model = learner.model.eval()
    return (torch.cat([prototype_accuracy(_frozen_feature_batch(model, b.to(config.device))).cpu()
                       for b in episodes]), f"meta-trained {config.encoder} encoder features")


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
    ``meta_no_adaptation``, ``prototype``, ``fine_tune``); ``results["accuracy"]`` the same under
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

LAST_LAYER_DEFAULTS: dict[str, Any] = by_concern(
    algorithm={"first_order": True, "inner_steps": 2, "inner_lr": 0.01},
    loop={"meta_batch_size": 4, "val_tasks": 20, "val_every": 25, "checkpoint_every": 25,
          "iterations": 200, "meta_lr": 3e-5},
    evaluation={"eval_inner_steps": 5})
"""Defaults of ``--encoder last-layer``: first-order MAML (second order through a transformer
layer keeps every attention map of every inner step per task), smaller meta-batches and
validation sets so a CPU run stays within memory, and an outer step size in the range used to
fine-tune BERT (Devlin et al., 2019), since Adam at 1e-3 wrecks the pretrained layer within a
few dozen steps. Options given explicitly still win (``--no-first-order`` for second order)."""


LORA_DEFAULTS: dict[str, Any] = dict(LAST_LAYER_DEFAULTS)
"""Defaults of ``--encoder lora``: those of ``last-layer``. A ten times larger outer step size
(3e-4) lowered BANKING77 5-way 1-shot validation accuracy from 92.5% (iteration 25) to 76.6%
(iteration 175): the rank-8 update ``2 B A`` then grows to a large fraction of the pretrained
weights within a hundred steps."""


def derived_defaults(chosen: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults that depend on the encoder chosen (see :data:`LAST_LAYER_DEFAULTS`,
    :data:`LORA_DEFAULTS`)."""
    return dict({"last-layer": LAST_LAYER_DEFAULTS, "lora": LORA_DEFAULTS}.get(
        chosen.get("encoder"), {}))


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
