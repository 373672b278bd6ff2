"""Lake et al.'s one-shot classification benchmark (Science 2015): 20 runs of 20-way
within-alphabet one-shot classification on Omniglot's evaluation alphabets.

``all_runs.zip`` of the official Omniglot repository holds ``runNN/training/classKK.png`` (one
drawing of each of 20 characters), ``runNN/test/itemKK.png`` (another drawing of each, by other
people) and ``runNN/class_labels.txt`` pairing each test item with its training class. Lake et
al. report 4.5% error for people and 3.3% for Bayesian Program Learning.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALL_RUNS_SHA256 = "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"
"""sha256 of the official ``all_runs.zip`` (brendenlake/omniglot, python/one-shot-classification)."""
RUNS, WAYS = 20, 20
"""Runs of the benchmark and characters per run."""
PLACES = ("all_runs.zip", "omniglot/all_runs.zip",
          "omniglot/original/one-shot-classification/all_runs.zip",
          "original/one-shot-classification/all_runs.zip")
"""Where ``all_runs.zip`` is looked for below a data folder."""


@dataclass(frozen=True)
class LakeRun:
    """One run: ``training`` and ``test`` images ``[20, ...]`` and, for each test image, the
    index of its training image."""

    name: str
    training: np.ndarray
    test: np.ndarray
    answers: np.ndarray


def find_all_runs(*roots: str | Path) -> Path:
    """``all_runs.zip`` below the first of ``roots`` (then ``$MAMLKIT_DATA``) that holds it."""
    folders = [Path(r).expanduser() for r in roots if r]
    if os.environ.get("MAMLKIT_DATA"):
        folders.append(Path(os.environ["MAMLKIT_DATA"]))
    for folder in folders:
        for place in PLACES:
            if (folder / place).is_file():
                return folder / place
    raise FileNotFoundError(
        "all_runs.zip (Lake et al.'s 20 one-shot runs) not found below "
        f"{', '.join(map(str, folders)) or 'any data folder'}; put it in <data root>/omniglot/ "
        "and pass --data-root <data root> (or set MAMLKIT_DATA).")


def load_lake_runs(path: Path, preprocess: Callable[[bytes], np.ndarray]) -> list[LakeRun]:
    """The 20 runs of ``all_runs.zip`` at ``path`` (sha256 checked), each image given by
    ``preprocess(png_bytes)``."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ALL_RUNS_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, not the official {ALL_RUNS_SHA256}; "
                         "fetch all_runs.zip again from the Omniglot repository.")
    runs = []
    with zipfile.ZipFile(path) as archive:
        for r in range(1, RUNS + 1):
            name = f"run{r:02d}"
            pairs = [line.split() for line in
                     archive.read(f"{name}/class_labels.txt").decode().splitlines() if line.strip()]
            training = sorted({t for _, t in pairs})
            test = [q for q, _ in pairs]
            answers = np.array([training.index(t) for _, t in pairs], dtype=np.int64)
            read = lambda member: preprocess(archive.read(member))  # noqa: E731
            runs.append(LakeRun(name, np.stack([read(m) for m in training]),
                                np.stack([read(m) for m in test]), answers))
    return runs


def raw_pixel_hashes(path: Path) -> set[str]:
    """sha256 of every benchmark image's decoded pixels (to find them in training data)."""
    import io

    from PIL import Image

    hashes = set()
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith(".png"):
                with Image.open(io.BytesIO(archive.read(member))) as image:
                    hashes.add(pixel_hash(image))
    return hashes


def pixel_hash(image: object) -> str:
    """sha256 of an image's greyscale pixels and size (the same drawing gives the same hash
    whatever its PNG encoding)."""
    grey = image.convert("L")  # type: ignore[attr-defined]
    return hashlib.sha256(repr(grey.size).encode() + grey.tobytes()).hexdigest()
