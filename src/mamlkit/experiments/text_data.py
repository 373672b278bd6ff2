"""Text experiments' data: the dataset files, the class split, the episode-size checks and the
encoded examples (frozen sentence embeddings, token ids or cached lower-layer states).

Every check runs before any text is encoded; encoder outputs are cached on disk
(:mod:`mamlkit.text.embedding_cache`), keyed by model, settings and a checksum of the texts.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mamlkit.config import TrainConfig
from mamlkit.text.data import TextClassificationData
from mamlkit.text.episodes import ClassGroups, split_class_groups
from mamlkit.text.registry import TEXT_DATASETS, load_text_dataset
from mamlkit.text.splits import ClassSplit, default_class_split

if TYPE_CHECKING:
    from mamlkit.datasets.episodic import EpisodeSampler

SPLIT_SEED = 0
"""Seed of the class split: fixed, so every run of a dataset is scored on the same classes."""
CACHED_STATE_ENCODERS = ("last-layer", "lora")
"""Encoders that run MiniLM's top layer(s) on cached states of its frozen lower layers."""
LORA_LAYERS = 1
"""MiniLM layers (from the top) that get LoRA adapters under ``--encoder lora``."""


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


def cap_per_class(data: TextClassificationData, limit: int,
                  classes: Collection[int] | None = None) -> TextClassificationData:
    """``data`` with at most ``limit`` examples of each class in ``classes`` (default: every
    class), the first ones in file order (``limit=0`` keeps everything)."""
    if limit == 0:
        return data
    keep = sorted(i for c, rows in enumerate(data.indices_by_class())
                  for i in (rows[:limit] if classes is None or c in classes else rows))
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
    data = load_text_dataset(dataset, data_root(config))
    split = class_split(dataset, data)  # depends on the classes only, not on their sizes
    capped = (None if config.max_per_class_splits == "all"
              else set(split.validation) | set(split.test))
    data = cap_per_class(data, config.max_per_class, capped)
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


def top_layers(config: TrainConfig) -> int:
    """MiniLM layers the model runs on cached states (1 for ``last-layer``)."""
    return LORA_LAYERS if config.encoder == "lora" else 1
