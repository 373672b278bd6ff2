"""The settings of the meta-training loop, and only those (:func:`mamlkit.train.meta_train`).

:class:`LoopConfig` holds what the loop itself reads: how long to train, the outer optimizer and
its schedule, validation and checkpoint cadence, the non-finite policy, logging, where to compute.
Its defaults are neutral (no task family's); an experiment's settings (ways, shots, the model, the
data) belong to the task sampler and the algorithm, not here. :func:`loop_config` takes a
``LoopConfig``, the loop's fields of a :class:`~mamlkit.config.TrainConfig`, or a plain mapping of
loop settings, refusing a mapping's keys that the loop would not use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "sgd"), "lr_schedule": ("constant", "cosine", "step"),
    "on_nonfinite": ("stop", "skip"), "wandb": ("off", "offline", "online"),
    "amp": ("none", "bf16"),
}
"""The allowed values of the loop's string settings."""


@dataclass
class LoopConfig:
    """What the meta-training loop reads; every other setting belongs to the task or algorithm."""

    iterations: int = 1000
    """Meta-iterations to run."""
    meta_batch_size: int = 16
    """Tasks per meta-iteration (summed over processes in a distributed run)."""
    optimizer: str = "adam"
    """Outer optimizer: adam (AdamW when weight_decay > 0) or sgd."""
    meta_lr: float = 1e-3
    """Outer optimizer learning rate."""
    weight_decay: float = 0.0
    """Weight decay of the outer optimizer (0 = none)."""
    lr_schedule: str = "constant"
    """Outer learning-rate schedule: constant, cosine or step (:mod:`mamlkit.schedules`)."""
    warmup_iterations: int = 0
    """Linear warm-up of the outer learning rate (0 = none)."""
    lr_step_size: int = 0
    """step schedule: iterations between steps (0 = a third of the run)."""
    lr_gamma: float = 0.1
    """step schedule: the factor applied at every step."""
    grad_clip: float = 0.0
    """Clip the meta-gradient to this global L2 norm (0 = no clipping)."""
    time_budget_minutes: float = 0.0
    """Stop after this many minutes of training wall-clock, with a checkpoint (0 = no limit)."""
    val_every: int = 100
    """Validate on the held-out tasks every this many meta-iterations (0 = never)."""
    val_inner_steps: int | None = None
    """Adaptation steps at validation (None = the learner's ``eval_inner_steps``)."""
    checkpoint_every: int = 100
    """Write ``last.pt`` every this many meta-iterations."""
    keep_checkpoints: int = 3
    """Periodic ``iter_*.pt`` checkpoints kept besides last and best (0 = none)."""
    seed: int = 0
    """Seed of the per-process task streams of a distributed run."""
    on_nonfinite: str = "stop"
    """A non-finite loss or update: stop (keep the last good checkpoint) or skip the step."""
    log_every: int = 1
    """Write a metrics.csv row every this many meta-iterations (validations are always logged)."""
    tensorboard: bool = False
    """Also log the metrics to TensorBoard (when it is installed)."""
    wandb: str = "off"
    """Also log to Weights & Biases: off, offline or online."""
    threads: int = 0
    """Torch intra-op threads (0 = torch's default)."""
    device: str = "cpu"
    """Torch device the meta-batches are moved to."""
    amp: str = "none"
    """Mixed precision of the meta-gradient: none or bf16."""
    title: str = "meta-train"
    """The progress bar's title."""

    def __post_init__(self) -> None:
        for key in ("iterations", "meta_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}.")
        for key in ("meta_lr", "weight_decay", "lr_gamma", "grad_clip", "time_budget_minutes"):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"{key} must be a finite number, got {getattr(self, key)}.")
        if not self.meta_lr > 0:
            raise ValueError(f"meta_lr must be > 0, got {self.meta_lr}.")
        for key in ("weight_decay", "grad_clip", "time_budget_minutes", "warmup_iterations",
                    "lr_step_size", "val_every", "keep_checkpoints", "threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 = off), got {getattr(self, key)}.")
        if self.val_inner_steps is not None and self.val_inner_steps < 0:
            raise ValueError(f"val_inner_steps must be >= 0, got {self.val_inner_steps}.")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}.")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dict (JSON and checkpoint friendly)."""
        return dataclasses.asdict(self)


LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(LoopConfig))
RENAMED = {"val_inner_steps": "eval_inner_steps"}
"""Loop settings that a :class:`~mamlkit.config.TrainConfig` spells differently."""


def loop_config(settings: Any = None, **more: Any) -> LoopConfig:
    """The :class:`LoopConfig` of ``settings``.

    ``settings`` is a ``LoopConfig``, an experiment configuration (an object with the loop's
    fields among others, such as :class:`~mamlkit.config.TrainConfig`: only the loop's fields are
    read, its ``task`` names the progress bar), or a mapping of loop settings; ``more`` adds or
    overrides loop settings. A mapping or keyword that the loop does not read raises one
    ``ValueError`` naming them all and the settings it does read.
    """
    if isinstance(settings, LoopConfig):
        return dataclasses.replace(settings, **_checked(more)) if more else settings
    if settings is None or isinstance(settings, Mapping):
        return LoopConfig(**_checked({**(settings or {}), **more}))
    values = {name: getattr(settings, RENAMED.get(name, name)) for name in LOOP_FIELDS
              if hasattr(settings, RENAMED.get(name, name))}
    if getattr(settings, "task", ""):
        values["title"] = f"meta-train {settings.task}"
    return LoopConfig(**{**values, **_checked(more)})


def _checked(values: Mapping[str, Any]) -> dict[str, Any]:
    unused = sorted(set(values) - set(LOOP_FIELDS))
    if unused:
        raise ValueError(
            f"The training loop does not use {', '.join(unused)}: it reads only "
            f"{', '.join(LOOP_FIELDS)}. Give task and model settings to the task sampler and the "
            "algorithm instead (or pass a TrainConfig, whose other fields the experiments read).")
    return dict(values)
