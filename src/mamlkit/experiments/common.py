"""Pieces every experiment shares: seeding, run folders, building the learner."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mamlkit.config import RECORD_KEYS, TrainConfig, read_text_file
from mamlkit.core.learner import MetaLearner
from mamlkit.datasets._files import write_text_atomic
from mamlkit.faults import naming


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
    accident. The folder must be writable: that is checked here, before any work starts.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--run-dir {run_dir} is a file, not a folder. Choose another "
                                 "--run-dir, or move the file away.")
    if resume:
        if not any(run_dir.glob("**/*.pt")):
            raise FileNotFoundError(
                f"--resume: no checkpoint at {run_dir} (no *.pt file below it), so there is "
                "nothing to continue (a run stopped before its first checkpoint leaves none). "
                "Start it again with --overwrite, or point --run-dir at another run.")
        check_writable(run_dir)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            has_checkpoint = any(run_dir.glob("**/*.pt"))
            raise FileExistsError(
                f"Run directory {run_dir} is not empty. Use "
                + ("--resume to continue that run, " if has_checkpoint else "")
                + "--overwrite to replace it, or choose another --run-dir.")
        check_writable(run_dir.parent)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_writable(run_dir)


def check_writable(folder: Path) -> None:
    """Raise the ``OSError`` (``PermissionError``, a read-only file system, ...) naming ``folder``
    when files cannot be created in it."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:  # name the folder, not the random name of the probe file
        raise OSError(error.errno, error.strerror, str(folder)) from None


def check_resumable(run_dir: Path, checkpoint_every: int) -> None:
    """Refuse (``ValueError``) before anything is written when a stage of the run in ``run_dir``
    cannot resume: checkpoint files but none that loads, or a log past the first checkpoint but
    no checkpoint (see :func:`mamlkit.run_guard.resume_point`)."""
    from mamlkit.run_guard import resume_point

    for stage in sorted(path.parent for path in run_dir.glob("**/checkpoints") if path.is_dir()):
        resume_point(stage, checkpoint_every, announce=False)


def check_writable_run(run_dir: Path) -> None:
    """Before evaluating a run: its results go to ``run_dir/eval`` and ``run_dir/plots``, so a
    read-only run folder is refused before seconds of computation rather than after."""
    if not (run_dir / "config.json").is_file():
        return  # not a run: loading its configuration says so
    for folder in (run_dir / "eval", run_dir):
        if folder.is_dir():
            check_writable(folder)
            return


def save_config(config: TrainConfig, run_dir: Path) -> None:
    """Write the run's configuration as ``run_dir/config.json`` atomically (by rank 0 only in a
    distributed run, so processes never write the same file at once), with its provenance
    (versions, git commit, command line: :func:`mamlkit.provenance.provenance`) under
    ``provenance``."""
    from mamlkit.distributed import current_context

    if current_context().is_main:
        from mamlkit.provenance import provenance

        path = run_dir / "config.json"
        record = {**config.to_dict(), "provenance": provenance()}
        try:
            write_text_atomic(path, json.dumps(record, indent=2) + "\n")
        except OSError as error:
            raise naming(error, path) from error


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
        saved = json.loads(read_text_file(path, "config.json"))
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
    """The algorithm named by ``config.algo`` around ``model``, configured from ``config``: its
    top-level settings, then its ``[algorithm]`` table, then ``overrides``.

    ``first_order`` is passed only when it is set, so an algorithm that is first order by
    definition (FOMAML) keeps its own default and one that never unrolls (Reptile, iMAML) is not
    handed the flag.
    """
    from mamlkit.algorithms import make_algorithm

    kwargs: dict[str, Any] = {
        "inner_lr": config.inner_lr, "inner_steps": config.inner_steps, "loss": loss,
        "batching": config.batching,
        "chunk_size": config.chunk_size or None, "eval_inner_steps": config.eval_inner_steps,
        "compile": config.compile, "task_threads": config.task_threads or None,
        **({"first_order": True} if config.first_order else {}),
        **config.algorithm,
    }
    kwargs.update(overrides)
    return make_algorithm(config.algo, model, **kwargs)


def baseline_settings(config: TrainConfig, algo: str, **changes: Any) -> TrainConfig:
    """``config`` for a baseline trained or fine-tuned as ``algo``: the ``[algorithm]`` table of
    the run's own algorithm does not apply to it."""
    return TrainConfig(**{**config.to_dict(), "algo": algo, "algorithm": {}, **changes})
