"""The settings of :class:`mamlkit.config.TrainConfig` grouped by concern (algorithm, loop, data,
execution, evaluation), each group with the checks of its own values.

``mamlkit train --help`` lists the options in these groups and config files may write them in
``[loop]``, ``[data]``, ``[execution]`` and ``[evaluation]`` tables. Values the engine checks
again when the learner is built (``batching``, ``inner_lr``, ``task_threads``) are checked here
too, on purpose: here they fail before a run folder exists or data is read, spelled as the
command-line option.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mamlkit.config import TrainConfig


@dataclass(frozen=True)
class Concern:
    """One group of settings: what it decides, its fields, and the checks of their values."""

    doc: str
    fields: tuple[str, ...]
    at_least_one: tuple[str, ...] = ()
    non_negative: Mapping[str, str] = field(default_factory=dict)
    """Field -> what 0 means (shown in the message), for fields that must be >= 0."""
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    check: Callable[[TrainConfig], None] | None = None
    """Checks that involve several values or special rules."""

    def check_values(self, config: TrainConfig) -> None:
        """``ValueError`` naming the field for the first impossible value of this group."""
        for key in self.at_least_one:
            if getattr(config, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(config, key)}.")
        for key, zero in self.non_negative.items():
            if getattr(config, key) < 0:
                raise ValueError(f"{key} must be >= 0{zero}, got {getattr(config, key)}.")
        for key, allowed in self.choices.items():
            if getattr(config, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(config, key)!r}.")
        if self.check is not None:
            self.check(config)


def _check_algorithm(config: TrainConfig) -> None:
    if not config.inner_lr > 0:
        raise ValueError(f"inner_lr must be > 0, got {config.inner_lr}.")
    if config.algorithm:
        from mamlkit.algorithm_config import algorithm_table

        config.algorithm = algorithm_table(config.algo, config.algorithm)


def _check_loop(config: TrainConfig) -> None:
    if not config.meta_lr > 0:
        raise ValueError(f"meta_lr must be > 0, got {config.meta_lr}.")
    if not 0 < config.lr_gamma <= 1:
        raise ValueError(f"lr_gamma must be in (0, 1], got {config.lr_gamma}.")


def _check_data(config: TrainConfig) -> None:
    if config.ways < 2:
        raise ValueError(f"ways must be >= 2 (a classification episode needs two classes), "
                         f"got {config.ways}.")
    if config.encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {config.encoder!r}.")
    if config.max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {config.max_tokens}.")
    if config.train_support_noise:
        _check_train_support_noise(config)
    smallest = 2 ** 4  # the cnn model's four max-pooling blocks each halve the side
    if 0 < config.image_size < smallest and (config.model or "cnn") == "cnn":
        raise ValueError(f"image_size={config.image_size} is too small for the cnn model's four "
                         f"max-pooling blocks (each halves the side); use --image-size "
                         f"{smallest} or more, or --model mlp.")


def _check_train_support_noise(config: TrainConfig) -> None:
    from mamlkit.experiments.vision_data import is_image_task

    if not 0 < config.train_support_noise < 1:
        raise ValueError(f"train_support_noise must be a fraction in [0, 1) (0 = off), got "
                         f"{config.train_support_noise}.")
    if not is_image_task(config.task):
        raise ValueError(f"train_support_noise corrupts the support labels of image episodes "
                         f"(omniglot, miniimagenet, cifar-fs, images); {config.task!r} does not "
                         "take it: drop --train-support-noise.")


def _check_execution(config: TrainConfig) -> None:
    from mamlkit.core.auto_compile import COMPILE_MODES

    if config.compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got "
                         f"{config.compile!r} (--compile auto|on|off; true / false in a file).")
    if config.task_threads > 1 and config.compile == "off":
        raise ValueError(f"task_threads = {config.task_threads} spreads the compiled meta-gradient "
                         "over threads: set compile = true as well (--compile), or "
                         "task_threads = 0.")


def _check_evaluation(config: TrainConfig) -> None:
    if not config.eval_shots or any(k < 1 for k in config.eval_shots):
        raise ValueError(f"eval_shots must be a non-empty list of sizes >= 1, "
                         f"got {config.eval_shots}.")


ENCODERS = ("pretrained", "bag", "cnn", "last-layer", "lora")
"""Text encoders (see :mod:`mamlkit.experiments.text`)."""

CONCERNS: dict[str, Concern] = {
    "algorithm": Concern(
        "what is meta-learned and how it adapts: the algorithm, its network and inner loop",
        ("algo", "model", "hidden", "inner_lr", "inner_steps", "first_order", "algorithm"),
        non_negative={"inner_steps": "", "hidden": ""}, check=_check_algorithm),
    "loop": Concern(
        "the outer loop: tasks per step, optimizer and schedule, length, validation, "
        "checkpoints, logging",
        ("seed", "meta_batch_size", "meta_lr", "optimizer", "weight_decay", "lr_schedule",
         "warmup_iterations", "lr_step_size", "lr_gamma", "grad_clip", "iterations",
         "baseline_iterations", "time_budget_minutes", "val_every", "val_tasks",
         "checkpoint_every", "keep_checkpoints", "on_nonfinite", "log_every", "tensorboard",
         "wandb", "notes"),
        at_least_one=("meta_batch_size", "iterations", "val_tasks", "checkpoint_every",
                      "log_every"),
        non_negative={"val_every": "", "baseline_iterations": "", "keep_checkpoints": "",
                      "time_budget_minutes": " (0 = no limit)", "weight_decay": " (0 = off)",
                      "grad_clip": " (0 = off)", "warmup_iterations": " (0 = off)",
                      "lr_step_size": " (0 = off)"},
        choices={"optimizer": ("adam", "sgd"), "lr_schedule": ("constant", "cosine", "step"),
                 "wandb": ("off", "offline", "online"), "on_nonfinite": ("stop", "skip")},
        check=_check_loop),
    "data": Concern(
        "the task stream: task family, episode shape, dataset files and their preprocessing",
        ("task", "ways", "shots", "queries", "trajectories", "data_root", "download",
         "class_split", "encoder", "cache_dir", "max_tokens", "max_per_class",
         "max_per_class_splits", "image_size", "channels", "invert", "normalize", "workers",
         "on_bad_image", "train_support_noise", "train_noise_kind"),
        at_least_one=("shots", "queries", "trajectories"),
        non_negative={"image_size": "", "workers": "", "max_per_class": " (0 = all examples)"},
        choices={"on_bad_image": ("stop", "skip"), "channels": (0, 1, 3),
                 "max_per_class_splits": ("all", "eval"),
                 "train_noise_kind": ("symmetric", "pair")}, check=_check_data),
    "execution": Concern(
        "where and how the computation runs; never changes what is computed beyond rounding",
        ("device", "batching", "amp", "chunk_size", "compile", "threads", "task_threads"),
        non_negative={"chunk_size": "", "threads": "", "task_threads": ""},
        choices={"batching": ("auto", "vmap", "loop"), "amp": ("none", "bf16")},
        check=_check_execution),
    "evaluation": Concern(
        "the final evaluation: test tasks, adaptation steps, episode shape, baselines, plots",
        ("test_tasks", "eval_inner_steps", "eval_shots", "eval_queries", "baseline", "plots"),
        at_least_one=("test_tasks",), non_negative={"eval_inner_steps": "", "eval_queries": ""},
        choices={"baseline": ("pretrained", "none")}, check=_check_evaluation),
}
"""The settings grouped by what they decide. ``mamlkit train --help`` lists them in these groups,
config files may write them in ``[loop]``, ``[data]``, ``[execution]`` and ``[evaluation]``
tables (or at the top level), and each group checks only its own values."""
