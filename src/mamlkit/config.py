"""One typed configuration for every experiment, readable from plain TOML or JSON files.

Every field can be set in a file under ``configs/`` and overridden on the command line
(``--meta-batch-size 16``). Unknown keys, wrong types and impossible values are rejected before
any work starts, with the key and the fix in the message.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass
class TrainConfig:
    """Settings of one meta-training run (defaults are overridden per experiment)."""

    task: str = "sinusoid"
    """Experiment name (``mamlkit train --help`` lists them)."""
    algo: str = "maml"
    """Algorithm name (maml, fomaml, ...)."""
    model: str = ""
    """Model name; empty = the experiment's default model."""
    ways: int = 5
    """Classes per episode (classification)."""
    shots: int = 10
    """Support examples per class (classification) or points per task (regression)."""
    queries: int = 10
    """Query examples per class (classification) or points per task (regression)."""
    inner_lr: float = 0.01
    """Inner-loop (adaptation) learning rate."""
    inner_steps: int = 1
    """Adaptation steps during meta-training."""
    eval_inner_steps: int = 10
    """Adaptation steps at evaluation time."""
    first_order: bool = False
    """Drop the second-order term of the meta-gradient."""
    meta_batch_size: int = 25
    """Tasks per meta-iteration."""
    meta_lr: float = 1e-3
    """Outer optimizer learning rate."""
    optimizer: str = "adam"
    """Outer optimizer: adam or sgd."""
    iterations: int = 70000
    """Meta-iterations to run."""
    time_budget_minutes: float = 0.0
    """Stop meta-training after this many minutes of wall-clock (0 = no limit)."""
    val_every: int = 1000
    """Validate every this many meta-iterations (0 = never)."""
    val_tasks: int = 200
    """Held-out tasks used for each validation."""
    checkpoint_every: int = 1000
    """Write the last checkpoint every this many meta-iterations."""
    keep_checkpoints: int = 3
    """How many periodic checkpoints to keep besides last and best."""
    test_tasks: int = 1000
    """Held-out test tasks (episodes) for the final evaluation."""
    eval_shots: list[int] = field(default_factory=lambda: [5, 10, 20])
    """Support sizes evaluated after training (regression)."""
    baseline_iterations: int = 0
    """Iterations for the pretrained baseline (0 = as many as meta-training)."""
    seed: int = 0
    """Seed for model initialisation and task sampling."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1, ..."""
    batching: str = "auto"
    """How tasks are batched: auto, vmap or loop."""
    amp: str = "none"
    """Mixed precision for meta-training steps: none or bf16 (autocast; parameters and inner-loop
    gradients stay float32)."""
    chunk_size: int = 0
    """Tasks per backward pass to bound memory (0 = the whole meta-batch)."""
    compile: bool = False
    """torch.compile the meta-gradient (compiled on the first iteration: seconds for the sinusoid
    MLP, minutes for a CNN on a small CPU; about 3x faster per iteration on the sinusoid MLP)."""
    threads: int = 0
    """Torch intra-op threads (0 = torch's default)."""
    task_threads: int = 0
    """Worker threads over which the compiled per-task loop spreads a meta-batch's tasks on the
    CPU (0 = auto: torch's thread count where the model allows it; 1 = off). Needs compile."""
    on_nonfinite: str = "stop"
    """On a non-finite loss or gradient: stop (keep the last good checkpoint) or skip the step."""
    plots: bool = True
    """Save PNG plots after evaluation."""
    tensorboard: bool = True
    """Also log to TensorBoard when it is installed."""
    data_root: str = ""
    """Folder with the datasets (classification and text); empty = $MAMLKIT_DATA."""
    download: bool = False
    """Fetch missing dataset files (checked against their published sha256 where one exists)."""
    class_split: str = ""
    """Class split of the dataset; empty = the experiment's default (omniglot: paper or official)."""
    eval_queries: int = 0
    """Query examples per class in validation and test episodes (0 = as many as shots, as MAML's
    evaluation code)."""
    hidden: int = 0
    """Width of the network (filters per convolution); 0 = the experiment's default."""
    encoder: str = "pretrained"
    """Text encoder: pretrained (frozen MiniLM + meta-learned head), bag, cnn (trainable, no
    pretrained weights), last-layer (adapt MiniLM's last layer + head) or lora (LoRA adapters in
    MiniLM's top layer + head, every pretrained weight frozen)."""
    cache_dir: str = ""
    """Folder for cached text embeddings; empty = $MAMLKIT_CACHE/text or ~/.cache/mamlkit/text."""
    max_tokens: int = 32
    """Tokens kept per text (bag, cnn and last-layer encoders)."""
    max_per_class: int = 0
    """Use at most this many examples of each class, in file order (0 = all; for quick runs)."""

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the key and the fix for any impossible value."""
        positive = ["shots", "queries", "meta_batch_size", "iterations", "test_tasks", "val_tasks"]
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}.")
        if self.ways < 2:
            raise ValueError(f"ways must be >= 2 (a classification episode needs two classes), "
                             f"got {self.ways}.")
        for key in ("inner_lr", "meta_lr"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}.")
        for key in ("inner_steps", "eval_inner_steps", "val_every", "chunk_size", "threads", "task_threads",
                    "baseline_iterations", "keep_checkpoints", "eval_queries", "hidden"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}.")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}.")
        if self.time_budget_minutes < 0:
            raise ValueError("time_budget_minutes must be >= 0 (0 = no limit).")
        choices = {"optimizer": ("adam", "sgd"), "batching": ("auto", "vmap", "loop"),
                   "on_nonfinite": ("stop", "skip"), "amp": ("none", "bf16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}.")
        if self.encoder not in ("pretrained", "bag", "cnn", "last-layer", "lora"):
            raise ValueError(f"encoder must be one of pretrained, bag, cnn, last-layer, lora, got "
                             f"{self.encoder!r}.")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}.")
        if self.max_per_class < 0:
            raise ValueError(f"max_per_class must be >= 0 (0 = all examples), got "
                             f"{self.max_per_class}.")
        if self.task_threads > 1 and not self.compile:
            raise ValueError(f"task_threads = {self.task_threads} spreads the compiled meta-gradient "
                             "over threads: set compile = true as well (--compile), or "
                             "task_threads = 0.")
        if not self.eval_shots or any(k < 1 for k in self.eval_shots):
            raise ValueError(f"eval_shots must be a non-empty list of sizes >= 1, "
                             f"got {self.eval_shots}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dict (JSON and checkpoint friendly)."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_type(name: str) -> Any:
    """The Python type of a config field (``int``, ``float``, ``bool``, ``str`` or ``list[int]``)."""
    hints = typing.get_type_hints(TrainConfig)
    return hints[name]


def coerce(name: str, value: Any, source: str) -> Any:
    """Check ``value`` against the type of field ``name``; ints are accepted for floats."""
    if name not in FIELDS:
        raise ValueError(f"Unknown config key {name!r} in {source}. Known keys: "
                         f"{', '.join(sorted(FIELDS))}.")
    expected = field_type(name)
    origin = typing.get_origin(expected)
    if origin in (list, types.GenericAlias) or expected is list:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
            raise ValueError(f"Config key {name!r} in {source} must be a list of integers, "
                             f"got {value!r}.")
        return list(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ValueError(f"Config key {name!r} in {source} must be of type {expected.__name__}, "
                         f"got {type(value).__name__} {value!r}.")
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Key/values of a TOML or JSON config file, type-checked against :class:`TrainConfig`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"Config file {path} is not valid {path.suffix[1:].upper()}: {error}") \
            from error
    return {k: coerce(k, v, str(path)) for k, v in raw.items()}


def make_config(*layers: dict[str, Any]) -> TrainConfig:
    """A validated config from dicts applied in order (defaults, experiment, file, CLI)."""
    values: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            values[k] = coerce(k, v, "the configuration")
    return TrainConfig(**values).validate()
