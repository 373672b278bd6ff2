"""Locating, checking and downloading the published dataset files (pinned URL + sha256)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mamlkit.datasets._files import download_file as _download
from mamlkit.datasets._files import sha256_file


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it lives under the dataset folder, its source URL and sha256.

    The URL points at a fixed commit of the authors' repository, so the bytes (and therefore the
    checksum) never change under a user.
    """

    relpath: str
    url: str
    sha256: str


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return sha256_file(path)


def check_sha256(path: Path, expected: str) -> None:
    """Raise ``ValueError`` when ``path``'s sha256 is not ``expected``."""
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"{path} has sha256 {actual} but the published file has {expected}: the file is "
            "corrupt, truncated or a different version. Delete it and load again with "
            "download=True, or copy the original file there."
        )


def download_file(url: str, destination: Path, sha256: str) -> Path:
    """Fetch ``url`` to ``destination``, verifying its sha256 before the file appears there
    (the shared atomic downloader of :mod:`mamlkit.datasets`)."""
    return _download(url, destination, sha256)


def resolve_files(root: str | os.PathLike[str], folder: str, files: Sequence[RemoteFile],
                  dataset: str, download: bool = False, verify: bool = False) -> list[Path]:
    """Paths of a dataset's files under ``root``, downloading the missing ones if asked.

    A file is looked for at ``root/folder/relpath`` and then at ``root/relpath`` (so ``root`` may be
    either a data root holding ``folder`` or the dataset folder itself). Missing files raise
    ``FileNotFoundError`` naming every path tried and both fixes, before anything is read.
    """
    root_path = Path(root).expanduser()
    found: list[Path] = []
    missing: list[RemoteFile] = []
    for remote in files:
        candidates = [root_path / folder / remote.relpath, root_path / remote.relpath]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            missing.append(remote)
        found.append(hit if hit is not None else candidates[0])
    if missing and not download:
        tried = ", ".join(str(root_path / folder / m.relpath) for m in missing)
        raise FileNotFoundError(
            f"{dataset} files not found: {tried}. Pass download=True to fetch them from the "
            f"authors' release (checked by sha256), or point root at a folder that holds "
            f"'{folder}/' (e.g. the MAMLKIT_DATA data root)."
        )
    for i, remote in enumerate(files):
        if remote in missing:
            download_file(remote.url, found[i], remote.sha256)
        elif verify:
            check_sha256(found[i], remote.sha256)
    return found
