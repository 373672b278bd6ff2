"""Checkpoints that survive crashes: atomic writes, safe loading, clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``FileNotFoundError`` or ``ValueError`` with the path and what to do when the file is
    missing, truncated or not a mamlkit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}. Check the run directory, or start a new run without "
            "--resume.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(
            f"Checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}). "
            "Delete it to resume from an older checkpoint in the same folder, or start a new run."
        ) from error
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(f"{path} is not a mamlkit checkpoint (no format_version field).")
    return state


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
