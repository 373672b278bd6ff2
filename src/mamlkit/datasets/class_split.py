"""Class splits for your own data: which classes meta-train, meta-validate and meta-test.

Few-shot learning tests on classes never seen in meta-training, so a dataset's classes are split
three ways (``train``/``val``/``test``). Accepted forms (``--class-split``):

- ``folders``: the tree already has ``train/``, ``val/`` (optional) and ``test/`` sub-folders;
- fractions, ``0.6,0.2,0.2``: shares of the classes, after a seeded shuffle;
- counts, ``64,16,20``: numbers of classes, after the same shuffle (the rest are unused);
- class-list files, ``train.txt,val.txt,test.txt``: one class name per line.

A part may be empty only for validation (``0.7,0,0.3``): training then keeps the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROLES = ("train", "val", "test")
"""The three parts of a class split."""
SPLIT_FOLDERS = "folders"
"""The split given by ``train``/``val``/``test`` sub-folders of the tree."""


def has_split_folders(class_names: list[str]) -> bool:
    """Whether every class sits below a ``train``, ``val`` or ``test`` folder (train and test
    present)."""
    tops = {Path(n).parts[0] for n in class_names}
    return all(len(Path(n).parts) > 1 for n in class_names) and tops <= set(ROLES) \
        and {"train", "test"} <= tops


def _numbers(text: str) -> list[float] | None:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        return None
    return values if len(values) == 3 else None


def split_classes(class_names: list[str], spec: str, seed: int) -> dict[str, list[str]]:
    """Class names of each role under ``spec`` (see the module docstring); ``""`` means
    ``folders`` when the tree has them, else ``0.6,0.2,0.2``."""
    if not spec:
        spec = SPLIT_FOLDERS if has_split_folders(class_names) else "0.6,0.2,0.2"
    if spec == SPLIT_FOLDERS:
        if not has_split_folders(class_names):
            raise ValueError("--class-split folders needs the tree laid out train/<class>/..., "
                             "test/<class>/... (val/ optional); give fractions (0.6,0.2,0.2) or "
                             "counts instead.")
        return {role: [n for n in class_names if Path(n).parts[0] == role] for role in ROLES}
    values = _numbers(spec)
    if values is None:
        files = spec.split(",")
        if len(files) != 3:
            raise ValueError(f"--class-split {spec!r} is not understood: give fractions "
                             "(0.6,0.2,0.2), counts (64,16,20), three class-list files "
                             "(train.txt,val.txt,test.txt) or 'folders'.")
        return _from_files(class_names, files)
    if any(v < 0 for v in values):
        raise ValueError(f"--class-split {spec!r} has a negative part.")
    order = [class_names[i] for i in np.random.default_rng(seed).permutation(len(class_names))]
    if all(float(v).is_integer() for v in values) and sum(values) > 1:
        counts = [int(v) for v in values]
        if sum(counts) > len(class_names):
            raise ValueError(f"--class-split {spec} asks for {sum(counts)} classes but the data "
                             f"has {len(class_names)}; lower the counts.")
    else:
        if abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"--class-split {spec}: fractions must sum to 1, got {sum(values):g}.")
        train = int(round(values[0] * len(order)))
        val = int(round(values[1] * len(order)))
        counts = [train, val, len(order) - train - val]
    bounds = np.cumsum([0, *counts])
    return {role: order[bounds[i]:bounds[i + 1]] for i, role in enumerate(ROLES)}


def _from_files(class_names: list[str], files: list[str]) -> dict[str, list[str]]:
    known, parts = set(class_names), {}
    for role, name in zip(ROLES, files):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"class-list file {path} ({role} classes) does not exist.")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"{path} names {len(missing)} class(es) not in the data (e.g. "
                             f"{missing[0]!r}); class names are folder paths such as "
                             f"{class_names[0]!r}.")
        parts[role] = names
    overlap = set(parts["train"]) & set(parts["test"])
    if overlap:
        raise ValueError(f"{len(overlap)} class(es) are in both the train and test lists (e.g. "
                         f"{sorted(overlap)[0]!r}); meta-test classes must be unseen.")
    return parts


def check_split(parts: dict[str, list[str]], ways: int, roles: tuple[str, ...] = ROLES) -> None:
    """Refuse a split that leaves a used part with fewer classes than ``ways`` (validation may
    be empty)."""
    for role in roles:
        size = len(parts.get(role, []))
        if role == "val" and size == 0:
            continue
        if size < ways:
            raise ValueError(f"the class split leaves {size} classes for meta-{role} but "
                             f"episodes are {ways}-way; use --ways {max(size, 2)} or fewer, or "
                             "give that part more classes with --class-split.")
