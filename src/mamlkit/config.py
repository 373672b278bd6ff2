"""One typed configuration for every experiment, readable from plain TOML or JSON files.

Every field can be set in a file under ``configs/`` and overridden on the command line
(``--meta-batch-size 16``). Unknown keys, wrong types and impossible values are rejected before
any work starts, with the key and the fix in the message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlkit.config_groups import CONCERNS

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
    trajectories: int = 20
    """Rollouts per task at every inner step and after adaptation (reinforcement learning)."""
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
    weight_decay: float = 0.0
    """Weight decay of the outer optimizer (decoupled, AdamW, with adam; L2 with sgd)."""
    lr_schedule: str = "constant"
    """Outer learning-rate schedule: constant, cosine (to zero at the last iteration) or step."""
    warmup_iterations: int = 0
    """Linear warm-up of the outer learning rate over this many meta-iterations (0 = none)."""
    lr_step_size: int = 0
    """step schedule: multiply the learning rate by lr_gamma every this many iterations (0 = a
    third of the run)."""
    lr_gamma: float = 0.1
    """step schedule: the factor applied at every step."""
    grad_clip: float = 0.0
    """Clip the meta-gradient to this global L2 norm before each outer step (0 = no clipping)."""
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
    compile: str = "auto"
    """torch.compile the meta-gradient: auto (eager first; compiled in the background once the
    same shapes repeat and the run is long enough to pay for it, then switched to), on (compiled
    on the first iteration: seconds for the sinusoid MLP, minutes for a CNN on a small CPU) or
    off. --compile alone is on, --no-compile off; true / false in a config file."""
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
    wandb: str = "off"
    """Also log to Weights & Biases: off, offline (files under the run, no network; sync later
    with `wandb sync`) or online (needs `pip install "mamlkit[wandb]"` and a login)."""
    data_root: str = ""
    """Folder with the datasets (classification and text); empty = $MAMLKIT_DATA."""
    download: bool = False
    """Fetch missing dataset files (checked against their published sha256 where one exists)."""
    class_split: str = ""
    """Class split of the dataset; empty = the experiment's default (omniglot: paper or official;
    images: folders when the tree has train/val/test sub-folders, else fractions 0.6,0.2,0.2, or
    counts such as 64,16,20, or three class-list files train.txt,val.txt,test.txt)."""
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
    """Folder for cached text embeddings (images task: decoded images); empty =
    $MAMLKIT_CACHE/text (/images) or ~/.cache/mamlkit/text (/images)."""
    max_tokens: int = 32
    """Tokens kept per text (bag, cnn and last-layer encoders)."""
    max_per_class: int = 0
    """Use at most this many examples of each class, in file order (0 = all; for quick runs)."""
    max_per_class_splits: str = "all"
    """Which classes ``max_per_class`` caps (text tasks): all, or eval (the meta-validation and
    meta-test classes only; meta-training reads every example of its classes)."""
    notes: str = ""
    """Free-form notes kept with the run in config.json (what it is for, what changed)."""
    log_every: int = 10
    """Write a metrics.csv row every this many meta-iterations (validations are always logged)."""
    image_size: int = 0
    """Side the images are resized to (images task; 0 = 28)."""
    channels: int = 0
    """Image channels (images task): 1, 3, or 0 = from the images (1 when all are greyscale)."""
    invert: bool = False
    """Invert the images (255 - x; images task): dark ink on white paper becomes bright on dark,
    as MAML feeds Omniglot."""
    normalize: str = "none"
    """Input normalisation (images task): none, imagenet, dataset (per-channel mean and std of
    the meta-training images, saved with the run) or MEAN:STD (comma-separated per channel)."""
    workers: int = 0
    """DataLoader worker processes building meta-training episodes (0 = built in the training
    process)."""
    on_bad_image: str = "stop"
    """An image file that cannot be read: stop (error naming it) or skip (left out, counted)."""
    train_support_noise: float = 0.0
    """Noise-aware meta-training (image tasks): this fraction of every meta-training support set
    gets a wrong label, seeded by the run's seed and the meta-batch's position (so resume is
    exact); query labels stay clean. 0 = off. See docs/noise.md."""
    train_noise_kind: str = "symmetric"
    """Kind of that label noise: symmetric (another class, uniformly) or pair (class c -> c+1)."""
    baseline: str = "pretrained"
    """Baseline trained after MAML for image tasks: pretrained (an ordinary classifier over the
    meta-training classes, fine-tuned at test time) or none."""
    algorithm: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the algorithm (the [algorithm] table of a config file, or
    --algorithm.NAME VALUE), e.g. iMAML's regularization and cg_steps; checked against the
    algorithm's signature (mamlkit.algorithm_config)."""

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the key and the fix for any impossible value (the checks of
        every :data:`CONCERNS` group in turn)."""
        for key in (f.name for f in dataclasses.fields(self) if f.type in (float, "float")):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"{key} must be a finite number, got {getattr(self, key)}.")
        for concern in CONCERNS.values():
            concern.check_values(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dict (JSON and checkpoint friendly)."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
CONCERN_OF = {name: concern for concern, group in CONCERNS.items() for name in group.fields}
"""Field -> the name of its :data:`CONCERNS` group."""
RECORD_KEYS = ("provenance",)
"""Keys of a run's config.json that record the run rather than set it (versions, commit, command
line; :mod:`mamlkit.provenance`): skipped when a configuration is read back."""


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
    if name == "compile" and isinstance(value, bool):  # as written before auto existed
        value = "on" if value else "off"
    origin = typing.get_origin(expected)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"Config key {name!r} in {source} must be a table of NAME = value "
                             f"settings ([{name}] in TOML), got {value!r}.")
        return dict(value)
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
    """Key/values of a TOML (``.toml`` or no suffix) or JSON (``.json``) config file,
    type-checked against :class:`TrainConfig`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Config file {path} is a folder; pass the .toml or .json file "
                                "inside it.")
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    kind = {".json": "JSON", ".toml": "TOML", "": "TOML"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"Config file {path}: {path.suffix} files are not read; write the "
                         "settings as TOML (.toml) or JSON (.json).")
    text = read_text_file(path, "config file")
    try:
        raw = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"Config file {path} is not valid {kind}: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"Config file {path} must hold a table of key = value settings, "
                         f"not a {type(raw).__name__}.")
    return {k: coerce(k, v, str(path)) for k, v in flatten_tables(raw, str(path)).items()
            if k not in RECORD_KEYS}


TABLES = tuple(name for name in CONCERNS if name != "algorithm")
"""Tables a config file may group settings in (``[loop]``, ...); ``[algorithm]`` holds the
algorithm's constructor arguments (:mod:`mamlkit.algorithm_config`)."""


def flatten_tables(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The settings of a config file with its ``[loop]``, ``[data]``, ``[execution]`` and
    ``[evaluation]`` tables flattened; ``ValueError`` for a setting in the wrong table or set
    twice."""
    flat = {k: v for k, v in raw.items() if k not in TABLES}
    tables = {table: raw[table] for table in TABLES if table in raw}
    for table, values in tables.items():
        if not isinstance(values, dict):
            raise ValueError(f"{table} in {source} must be a table ([{table}] in TOML) of "
                             f"settings, got {values!r}.")
    grouped = by_concern(source, **tables)
    twice = [key for key in grouped if key in flat]
    if twice:
        raise ValueError(f"{twice[0]} is set twice in {source} (at the top level and in "
                         f"[{CONCERN_OF[twice[0]]}]); keep one.")
    return {**flat, **grouped}


def by_concern(source: str = "the defaults", **groups: dict[str, Any]) -> dict[str, Any]:
    """Settings written per concern (``loop={...}, data={...}``, as experiments write their
    defaults and config files their tables) as one flat dict; ``ValueError`` naming the group a
    setting belongs in when it is in another."""
    flat: dict[str, Any] = {}
    for concern, values in groups.items():
        if concern not in CONCERNS:
            raise ValueError(f"{source}: no settings group {concern!r}; the groups are "
                             f"{', '.join(CONCERNS)}.")
        for key, value in values.items():
            if key not in FIELDS:
                coerce(key, value, source)  # names the known keys
            if CONCERN_OF[key] != concern:
                raise ValueError(f"{key} in {source} is in [{concern}] but belongs in "
                                 f"[{CONCERN_OF[key]}] (or at the top level); move it.")
            flat[key] = value
    return flat


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``ValueError`` naming the file when it holds binary data."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text file (byte {error.start} is not UTF-8); it is "
                         f"damaged or not a {what}: restore it or pass the right file.") from None


def make_config(*layers: dict[str, Any]) -> TrainConfig:
    """A validated config from dicts applied in order (defaults, experiment, file, CLI)."""
    values: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if k in MERGED_KEYS and k in values:  # a later table adds to (or changes) the earlier
                values[k] = {**values[k], **coerce(k, v, "the configuration")}
            elif k not in RECORD_KEYS:
                values[k] = coerce(k, v, "the configuration")
    return TrainConfig(**values).validate()


MERGED_KEYS = ("algorithm",)
"""Table settings whose layers merge key by key (a config file's ``[algorithm]`` table and the
command line's ``--algorithm.NAME`` options) instead of replacing each other."""


RESUMABLE_KEYS = frozenset({
    "iterations", "baseline_iterations", "time_budget_minutes", "val_every", "checkpoint_every",
    "keep_checkpoints", "log_every", "test_tasks", "eval_shots", "on_nonfinite", "plots",
    "tensorboard", "data_root", "download", "cache_dir", "device", "threads", "batching",
    "chunk_size", "compile", "task_threads",
})
"""Settings a resumed run may change: how long to train, how often to validate, log and
checkpoint, how to evaluate at the end, where the data is and where to compute. Every other
setting defines the model, the algorithm or the task stream, and must stay as the run began."""


def check_resume_changes(saved: TrainConfig, resumed: TrainConfig, source: str) -> None:
    """Refuse a resume whose settings change the run itself (``ValueError`` naming them).

    Also refuses shortening it: ``iterations`` (and the baseline's, where it counts separately)
    may grow or stay, since checkpoints of the longer run may already exist.
    """
    changed = [key for key in FIELDS if key not in RESUMABLE_KEYS
               and getattr(saved, key) != getattr(resumed, key)]
    if changed:
        listed = ", ".join(f"{key} {getattr(saved, key)!r} -> {getattr(resumed, key)!r}"
                           for key in changed)
        raise ValueError(
            f"--resume cannot change {listed}: the run in {source} was trained with the former, "
            "and its checkpoints only fit that. Resume without these options, or start a new run "
            "(another --run-dir) with them.")
    for key, before, after in (
            ("iterations", saved.iterations, resumed.iterations),
            ("baseline_iterations", saved.baseline_iterations or saved.iterations,
             resumed.baseline_iterations or resumed.iterations)):
        if after < before:
            raise ValueError(
                f"--resume with {key} {after} would shorten the run in {source}, which is set to "
                f"{before} (its checkpoints may already be past {after}). Pass "
                f"--{key.replace('_', '-')} {before} or more, or use --time-budget-minutes to stop "
                "earlier.")
