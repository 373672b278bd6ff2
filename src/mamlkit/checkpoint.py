"""Checkpoints that survive crashes: atomic writes, safe loading, clear errors."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mamlkit.faults import WRONG_MODEL_ADVICE, naming

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, which is flushed and fsynced before
    ``os.replace`` swaps it in, so a reader (or a run killed at any moment) sees either the old
    checkpoint or the new one, never a torn file. Only tensors and plain Python values may be
    stored, so the file loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise naming(error, path) from error
        raise
    _fsync_dir(path.parent)
    return path


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: ``problem`` says why (after the file's name)."""

    def __init__(self, path: Path, problem: str, advice: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"Checkpoint {path} {problem}. {advice}")


class UnsafeCheckpointError(CheckpointError):
    """A ``.pt`` file holds objects other than tensors and plain values (loading it could run code)."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``FileNotFoundError`` when the file is missing, :class:`UnsafeCheckpointError` when it
    holds arbitrary Python objects (it is never unpickled: torch's advice to load such a file
    with ``weights_only=False`` is never passed on), and :class:`CheckpointError` (a
    ``ValueError``) when it is truncated or not a mamlkit checkpoint; every message names the
    file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}. Check the run directory, or start a new run without "
            "--resume.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))  # a class or function to import
        if found is None:
            raise _corrupt(path, error) from None
        raise UnsafeCheckpointError(
            path, f"holds Python objects other than tensors and plain values ({found.group(1)})",
            "mamlkit refuses to load it, because unpickling such objects can run arbitrary code: "
            "use only checkpoints written by mamlkit, and delete or move this file.") from None
    except OSError as error:
        raise naming(error, path) from error
    except Exception as error:  # noqa: BLE001 - any other failure means a damaged file
        raise _corrupt(path, error) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(path, "is not a mamlkit checkpoint (no format_version field)",
                              "Move it away, or point at a mamlkit run.")
    return state


def _corrupt(path: Path, error: BaseException) -> CheckpointError:
    """The error for a checkpoint that cannot be read back (the first sentence of torch's)."""
    first = " ".join(str(error).split()).split(". ")[0][:200]
    return CheckpointError(
        path, f"is corrupt or unreadable ({type(error).__name__}: {first})",
        "It was probably cut short by a crash or damaged in a copy; move it away (a resumed run "
        "then uses the newest older checkpoint), or start a new run.")


def load_weights(module: torch.nn.Module, path: str | Path,
                 map_location: str | torch.device = "cpu", key: str = "learner") -> None:
    """Load the ``key`` state of checkpoint ``path`` into ``module``; ``ValueError`` naming the
    file when it was written for another model (another task family, width or algorithm)."""
    state = load_checkpoint(path, map_location=map_location)[key]
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(
            f"{path} does not fit the model this configuration builds ({detail}). "
            + WRONG_MODEL_ADVICE) from None


@dataclass
class ResumePoint:
    """The checkpoint a resumed run continues from, and the newer files that could not be read."""

    path: Path
    state: dict[str, Any]
    unreadable: list[str] = field(default_factory=list)
    """One line per newer checkpoint that was passed over: the file and its problem."""


def resume_candidates(folder: str | Path) -> list[Path]:
    """Checkpoint files of ``folder`` a run can resume from: ``last.pt``, then the periodic
    ``iter_*.pt`` (newest first), then ``best.pt``; all of them hold the full training state."""
    folder = Path(folder)
    periodic = sorted(folder.glob("iter_*.pt"), reverse=True)
    named = [folder / "last.pt", *periodic, folder / "best.pt"]
    return [path for path in named if path.is_file()]


def find_resume_point(folder: str | Path) -> ResumePoint | None:
    """The newest readable checkpoint of ``folder`` (``None`` when it holds none at all).

    ``last.pt`` is the newest when it loads; otherwise every other candidate is read and the one
    with the highest iteration wins, so one damaged file costs at most the iterations since the
    checkpoint before it. Raises ``ValueError`` listing every file and its problem when none of
    them loads (an unsafe file included: it is reported, never unpickled).
    """
    folder = Path(folder)
    candidates = resume_candidates(folder)
    if not candidates:
        return None
    unreadable = [] if candidates[0].name == "last.pt" else ["last.pt is missing"]
    readable: list[tuple[int, Path, dict[str, Any]]] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
            iteration = int(state["iteration"])
        except CheckpointError as error:
            unreadable.append(f"{path.name} {error.problem}")
            continue
        except (ValueError, KeyError, TypeError, OSError) as error:
            unreadable.append(f"{path.name}: {type(error).__name__}: {error}")
            continue
        readable.append((iteration, path, state))
        if path.name == "last.pt":
            break
    if not readable:
        raise ValueError(
            f"No checkpoint in {folder} can be read, so the run cannot resume ("
            + "; ".join(unreadable)
            + "). Restore the files from a backup, or start the run again with --overwrite.")
    _, path, state = max(readable, key=lambda item: item[0])
    return ResumePoint(path, state, unreadable)


def rng_state() -> dict[str, Any]:
    """The global torch random state: CPU, and the current CUDA device's when CUDA is in use.

    Only the current device is saved (one process per GPU in distributed runs), and CUDA is never
    initialised just to read its state, so CPU-only runs do not touch the GPUs.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also reads the older all-devices ``cuda`` list)."""
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files that a run killed during :func:`save_checkpoint` left behind.

    Call only while no other process writes checkpoints into ``folder`` (the start of a run).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(".*.pt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
