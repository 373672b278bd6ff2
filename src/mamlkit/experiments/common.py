"""Pieces every experiment shares: seeding, run folders, building the learner."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mamlkit.config import RECORD_KEYS, TrainConfig
from mamlkit.core.learner import MetaLearner


def setup_torch(config: TrainConfig) -> torch.device:
    """Seed torch, set the thread count and return the device (checked to exist)."""
    device = check_device(config.device)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    return device


def check_device(name: str) -> torch.device:
    """The torch device called ``name``; ``ValueError`` naming the fix when it cannot be used."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device={name!r} is not a torch device ({error}); use cpu, cuda or "
                         "cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} was requested but CUDA is not available; "
                             "use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} does not exist: {torch.cuda.device_count()} GPU(s) "
                             "are visible; use cuda:0 .. cuda:N-1.")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device={name!r} is not supported; use cpu or cuda.")
    return device


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create ``run_dir``; refuse to mix a new run into a non-empty one.

    A new run into a folder that already holds files raises unless ``overwrite`` (which deletes
    it) or ``resume`` (which continues it) is given, so an existing run is never destroyed by
    accident.
    """
    if resume:
        if not any(run_dir.glob("**/*.pt")):
            raise FileNotFoundError(
                f"--resume: no checkpoint at {run_dir} (no *.pt file below it). Start a new run "
                "without --resume, or point --run-dir at an existing run.")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"Run directory {run_dir} is not empty. Use --resume to continue that run, "
                "--overwrite to replace it, or choose another --run-dir.")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def save_config(config: TrainConfig, run_dir: Path) -> None:
    """Write the run's configuration as ``run_dir/config.json`` (by rank 0 only in a distributed
    run, so processes never write the same file at once), with its provenance (versions, git
    commit, command line: :func:`mamlkit.provenance.provenance`) under ``provenance``."""
    from mamlkit.distributed import current_context

    if current_context().is_main:
        from mamlkit.provenance import provenance

        record = {**config.to_dict(), "provenance": provenance()}
        (run_dir / "config.json").write_text(json.dumps(record, indent=2) + "\n")


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The configuration saved by :func:`save_config` (clear error when it is missing).

    Settings that this version of mamlkit no longer has (a run saved by an older version) are
    dropped with a warning, so such a run can still be evaluated or resumed.
    """
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a mamlkit run directory (no config.json). "
                                "Pass the --run-dir of a training run.")
    try:
        saved = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is corrupt ({error}); restore it from a backup, or start a new run "
                         "in another --run-dir (the checkpoints also hold the configuration).") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} does not hold a configuration object; restore it or start a new "
                         "run in another --run-dir.")
    known = {field.name for field in fields(TrainConfig)}
    unknown = sorted(set(saved) - known - set(RECORD_KEYS))
    if unknown:
        warnings.warn(f"{path} holds settings this version of mamlkit does not have "
                      f"({', '.join(unknown)}); they are ignored.", UserWarning, stacklevel=2)
    return {k: v for k, v in saved.items() if k in known}


def build_learner(config: TrainConfig, model: nn.Module, loss: str, **overrides: Any
                  ) -> MetaLearner:
    """The algorithm named by ``config.algo`` around ``model``, configured from ``config``."""
    from mamlkit.algorithms import make_algorithm

    kwargs: dict[str, Any] = {
        "inner_lr": config.inner_lr, "inner_steps": config.inner_steps,
        "first_order": config.first_order or config.algo == "fomaml", "loss": loss,
        "batching": config.batching,
        "chunk_size": config.chunk_size or None, "eval_inner_steps": config.eval_inner_steps,
        "compile": config.compile, "task_threads": config.task_threads or None,
    }
    kwargs.update(overrides)
    return make_algorithm(config.algo, model, **kwargs)
