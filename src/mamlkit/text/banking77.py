"""BANKING77 (Casanueva et al., 2020): 77 banking intents, read from the published CSVs.

Reference: I. Casanueva, T. Temcinas, D. Gerz, M. Henderson, I. Vulic. "Efficient Intent Detection
with Dual Sentence Encoders". NLP4ConvAI workshop, 2020. Files: ``banking_data/train.csv``
(10,003 rows) and ``banking_data/test.csv`` (3,080 rows), columns ``text,category``, from the
authors' repository PolyAI-LDN/task-specific-datasets (license CC BY 4.0).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from mamlkit.text.data import TextClassificationData
from mamlkit.text.files import RemoteFile, resolve_files

_BASE = ("https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/"
         "57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data/")

BANKING77_FILES: dict[str, RemoteFile] = {
    "train": RemoteFile("banking_data/train.csv", _BASE + "train.csv",
                        "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b"),
    "test": RemoteFile("banking_data/test.csv", _BASE + "test.csv",
                       "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d"),
}
"""The published files, at a pinned commit, with their sha256."""


def read_intent_csv(path: Path) -> list[tuple[str, str]]:
    """``(text, category)`` rows of a BANKING77-style CSV with header ``text,category``.

    Quoted fields may span lines (a few BANKING77 texts start with a newline), so rows come from the
    ``csv`` module; a malformed row raises ``ValueError`` naming the file and the line it ends on.
    Surrounding whitespace is stripped from texts.
    """
    rows: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
            if header != ["text", "category"]:
                raise ValueError(
                    f"{path}, line 1: header is {header!r}, expected ['text', 'category']. "
                    "Use the published BANKING77 CSV (or a file with that header)."
                )
            for row in reader:
                line = reader.line_num
                if len(row) != 2:
                    raise ValueError(
                        f"{path}, line {line}: expected 2 columns (text,category), got {len(row)}: "
                        f"{row!r}. Quote texts that contain commas."
                    )
                text, category = row[0].strip(), row[1].strip()
                if not text or not category:
                    raise ValueError(
                        f"{path}, line {line}: empty {'text' if not text else 'category'}. "
                        "Every row needs a text and an intent name."
                    )
                rows.append((text, category))
        except csv.Error as err:
            raise ValueError(
                f"{path}, line {reader.line_num}: malformed CSV ({err}). Check the quoting on that "
                "line."
            ) from err
    return rows


def load_banking77(root: str | os.PathLike[str], parts: Sequence[str] = ("train", "test"),
                   download: bool = False, verify: bool = False) -> TextClassificationData:
    """Load BANKING77 from ``root`` (a folder holding ``banking77/banking_data/*.csv``).

    ``parts`` picks the published files to pool; by default both, 13,083 texts over 77 intents
    (for few-shot use the intents are split into disjoint class sets, so the train/test files are
    pooled). Class ids index the sorted intent names. ``download=True`` fetches missing files from
    the authors' repository at a pinned commit and checks their sha256; ``verify=True`` checks
    existing files too.
    """
    parts = list(parts)
    unknown = [p for p in parts if p not in BANKING77_FILES]
    if not parts or unknown:
        raise ValueError(
            f"unknown BANKING77 parts {unknown or parts!r}; choose one or more of "
            f"{sorted(BANKING77_FILES)}."
        )
    paths = resolve_files(root, "banking77", [BANKING77_FILES[p] for p in parts], "BANKING77",
                          download=download, verify=verify)
    rows_by_part = {part: read_intent_csv(path) for part, path in zip(parts, paths)}
    class_names = sorted({c for rows in rows_by_part.values() for _, c in rows})
    index = {name: i for i, name in enumerate(class_names)}
    texts, labels, origin = [], [], []
    for part, rows in rows_by_part.items():
        for text, category in rows:
            texts.append(text)
            labels.append(index[category])
            origin.append(part)
    return TextClassificationData(texts, labels, class_names, name="banking77", parts=origin)
