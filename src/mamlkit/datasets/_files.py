"""File plumbing shared by the dataset loaders: checksums, downloads, the cache folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

CACHE_ENV = "MAMLKIT_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/mamlkit``)."""


def default_cache_dir() -> Path:
    """``$MAMLKIT_CACHE`` if set, else ``~/.cache/mamlkit``: where decoded datasets are kept."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mamlkit"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, destination: Path, sha256: str | None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``destination`` atomically; verify its sha256 when one is given.

    The bytes go to a temporary file beside ``destination`` that is renamed into place only after
    the checksum matches, so an interrupted or corrupt download never looks like a finished one.
    Raises ``OSError`` when the source cannot be reached and ``ValueError`` on a checksum mismatch.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part",
                                    dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as error:
            raise OSError(
                f"could not download {url}: {error}. Check the network connection, or download the "
                f"file by hand and place it at {destination}."
            ) from error
        if sha256 is not None:
            actual = sha256_file(tmp)
            if actual != sha256.lower():
                raise ValueError(
                    f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. The "
                    "download is corrupt or the source changed; it was discarded. Retry, or fetch "
                    f"the file by hand to {destination}."
                )
        tmp.chmod(0o644)  # mkstemp makes owner-only files; data files are for everyone
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()
    return destination


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) through a temporary file, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; a cache is meant to be shared
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file that is flushed to disk and then
    renamed over ``path``: readers, and a process killed at any moment, see the old text or the
    new one, never part of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
