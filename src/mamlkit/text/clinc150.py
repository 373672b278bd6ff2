"""CLINC150 (Larson et al., 2019): 150 intents in 10 domains, read from ``data_full.json``.

Reference: S. Larson, A. Mahendran, J. J. Peper, C. Clarke, A. Lee, P. Hill, J. K. Kummerfeld,
K. Leach, M. A. Laurenzano, L. Tang, J. Mars. "An Evaluation Dataset for Intent Classification and
Out-of-Scope Prediction". EMNLP 2019. Files ``data/data_full.json`` (150 intents x 100 train /
20 val / 30 test, plus out-of-scope queries) and ``data/domains.json`` (10 domains x 15 intents)
from the authors' repository clinc/oos-eval (license CC BY 3.0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mamlkit.text.data import TextClassificationData
from mamlkit.text.files import RemoteFile, resolve_files
from mamlkit.text.jsonfile import read_json

_BASE = "https://raw.githubusercontent.com/clinc/oos-eval/828f8093932c8fe6ca7936c3d2e52903b1c523de/"

CLINC150_FILES: dict[str, RemoteFile] = {
    "data_full": RemoteFile("data/data_full.json", _BASE + "data/data_full.json",
                            "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"),
    "domains": RemoteFile("data/domains.json", _BASE + "data/domains.json",
                          "b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a"),
}
"""The published files, at a pinned commit, with their sha256."""

OUT_OF_SCOPE = "oos"
"""Class name of CLINC150's out-of-scope queries (when included)."""

_PARTS = ("train", "val", "test")


def _pairs(path: Path, content: dict[str, Any], key: str) -> list[tuple[str, str]]:
    """The ``[text, intent]`` pairs under ``content[key]``, checked one by one."""
    entries = content.get(key)
    if not isinstance(entries, list):
        raise ValueError(
            f"{path}: key {key!r} is missing or not a list of [text, intent] pairs. Use the "
            "published data_full.json."
        )
    pairs = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2
                and all(isinstance(v, str) and v.strip() for v in entry)):
            raise ValueError(
                f"{path}: entry {key}[{i}] is {entry!r}, expected [text, intent] (two non-empty "
                "strings). Use the published data_full.json."
            )
        pairs.append((entry[0].strip(), entry[1].strip()))
    return pairs


def load_clinc150(root: str | os.PathLike[str], parts: Sequence[str] = _PARTS,
                  include_out_of_scope: bool = False, download: bool = False,
                  verify: bool = False) -> TextClassificationData:
    """Load CLINC150 from ``root`` (a folder holding ``clinc150/data/data_full.json``).

    By default the three published parts are pooled (150 texts per intent, 22,500 in all) because
    few-shot use splits by class. Out-of-scope queries are excluded by default; with
    ``include_out_of_scope=True`` they form one extra class named ``"oos"`` (the last class id) and
    belong to no domain. Class ids index the sorted intent names; ``class_groups`` maps each of
    the 10 domains to its 15 class ids (from ``domains.json``). ``download=True`` fetches missing
    files from the authors' repository at a pinned commit, checked by sha256.
    """
    parts = list(parts)
    unknown = [p for p in parts if p not in _PARTS]
    if not parts or unknown:
        raise ValueError(
            f"unknown CLINC150 parts {unknown or parts!r}; choose one or more of {list(_PARTS)}."
        )
    full_path, domains_path = resolve_files(
        root, "clinc150", [CLINC150_FILES["data_full"], CLINC150_FILES["domains"]], "CLINC150",
        download=download, verify=verify)
    content = read_json(full_path)
    domains = read_json(domains_path)
    if not isinstance(content, dict):
        raise ValueError(f"{full_path}: expected a JSON object with keys {list(_PARTS)}.")
    if not (isinstance(domains, dict)
            and all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                    for v in domains.values())):
        raise ValueError(
            f"{domains_path}: expected an object mapping each domain to a list of intent names."
        )
    rows: list[tuple[str, str, str]] = []
    for part in parts:
        rows += [(t, c, part) for t, c in _pairs(full_path, content, part)]
        if include_out_of_scope:
            rows += [(t, c, part) for t, c in _pairs(full_path, content, f"oos_{part}")]
    in_scope = sorted({c for _, c, _ in rows if c != OUT_OF_SCOPE})
    class_names = in_scope + ([OUT_OF_SCOPE] if include_out_of_scope else [])
    index = {name: i for i, name in enumerate(class_names)}
    groups: dict[str, list[int]] = {}
    for domain, intents in domains.items():
        missing = [n for n in intents if n not in index]
        if missing:
            raise ValueError(
                f"{domains_path}: domain {domain!r} lists intents {missing} that "
                f"{full_path.name} does not contain. Use matching published files."
            )
        groups[domain] = sorted(index[n] for n in intents)
    return TextClassificationData(
        texts=[t for t, _, _ in rows], labels=[index[c] for _, c, _ in rows],
        class_names=class_names, name="clinc150", parts=[p for _, _, p in rows],
        class_groups=groups)
