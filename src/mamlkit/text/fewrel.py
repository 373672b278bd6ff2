"""FewRel (Han et al., 2018) relation classification, read from the released ``val_wiki.json``.

Reference: X. Han, H. Zhu, P. Yu, Z. Wang, Y. Yao, Z. Liu, M. Sun. "FewRel: A Large-Scale
Supervised Few-Shot Relation Classification Dataset with State-of-the-Art Evaluation". EMNLP 2018.
FewRel 2.0's domain-adaptation validation sets (Gao et al., EMNLP 2019) share the format and can
be read with ``file="val_pubmed"`` / ``"val_nyt"`` / ``"val_semeval"``. Source: the authors'
repository thunlp/FewRel (license MIT).

Only the validation relations are read: FewRel 1.0's training file (64 relations) is not part of
this loader's file set and the 20 test relations were never released. Few-shot use therefore
splits the 16 validation relations into disjoint meta-train / meta-validation / meta-test classes
(see :mod:`mamlkit.text.splits`), which is smaller and not comparable to the paper's protocol.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mamlkit.text.data import TextClassificationData
from mamlkit.text.files import RemoteFile, download_file, resolve_files
from mamlkit.text.jsonfile import read_json

_BASE = "https://raw.githubusercontent.com/thunlp/FewRel/278a2315d2138810a379cd8d5718914dc56e2582/"

FEWREL_FILES: dict[str, RemoteFile] = {
    "val_wiki": RemoteFile("data/val_wiki.json", _BASE + "data/val_wiki.json",
                           "76bb44c2485b6faed358a3ce040eadafcc8a8835245cd7e6afc1bef672d4a0bf"),
    "val_pubmed": RemoteFile("data/val_pubmed.json", _BASE + "data/val_pubmed.json",
                             "fc0f13b534f6664fe0d8aec231d7590313bc6510d00dbc1b6746147f6a2b46e6"),
    "val_nyt": RemoteFile("data/val_nyt.json", _BASE + "data/val_nyt.json",
                          "b519adc61a2bab0f05178e33a3cd8f284338b635629493e9e09616ba81bb428e"),
    "val_semeval": RemoteFile("data/val_semeval.json", _BASE + "data/val_semeval.json",
                              "fd79cf35481f6596c23b92cd3ded3265481f3027a4b78d99921104f8fe632eb5"),
    "pid2name": RemoteFile("data/pid2name.json", _BASE + "data/pid2name.json",
                           "eeedd25512a8e4c2bc06b78009836d27de81807bcba6ed929debd5cd713c07ea"),
}
"""The published files, at a pinned commit, with their sha256."""

ENTITY_MARKERS = ("<e1>", "</e1>", "<e2>", "</e2>")
"""Default markers put around the head (``<e1>``) and tail (``<e2>``) entity tokens."""


def _span(path: Path, where: str, entity: Any, num_tokens: int) -> tuple[int, int]:
    """First and last token index of an entity's first mention (``[name, id, [[positions]]]``)."""
    if not (isinstance(entity, list) and len(entity) == 3 and isinstance(entity[2], list)
            and entity[2] and isinstance(entity[2][0], list) and entity[2][0]
            and all(isinstance(p, int) and 0 <= p < num_tokens for p in entity[2][0])):
        raise ValueError(
            f"{path}: {where} is {entity!r}, expected [name, id, [[token positions]]] with "
            f"positions in 0..{num_tokens - 1}. Use the published FewRel file."
        )
    return min(entity[2][0]), max(entity[2][0])


def mark_entities(tokens: list[str], head: tuple[int, int], tail: tuple[int, int],
                  markers: tuple[str, str, str, str] = ENTITY_MARKERS) -> str:
    """The sentence as one string with the head and tail spans wrapped in ``markers``.

    ``head`` and ``tail`` are inclusive ``(first, last)`` token indices. Relation classification
    needs to know which two entities the relation is about; the markers carry that into a plain
    text encoder (Baldini Soares et al., 2019, "Matching the Blanks", use the same idea).
    """
    head_open, head_close, tail_open, tail_close = markers
    words: list[str] = []
    for i, token in enumerate(tokens):
        if i == head[0]:
            words.append(head_open)
        if i == tail[0]:
            words.append(tail_open)
        words.append(token)
        if i == tail[1]:
            words.append(tail_close)
        if i == head[1]:
            words.append(head_close)
    return " ".join(words)


def load_fewrel(root: str | os.PathLike[str], file: str = "val_wiki",
                 markers: tuple[str, str, str, str] = ENTITY_MARKERS, download: bool = False,
                 verify: bool = False) -> TextClassificationData:
    """Load FewRel relation instances from ``root`` (a folder holding ``fewrel/data/<file>.json``).

    Each instance becomes one text: its tokens joined by spaces with the first mention of the head
    entity wrapped in ``markers[0:2]`` and the tail in ``markers[2:4]``. Class ids index the sorted
    relation ids (``P177``, ...); ``class_descriptions`` holds the Wikidata relation names when
    ``pid2name.json`` lies beside the file. ``val_wiki`` has 16 relations x 700 instances; since
    the training file is not available, few-shot use splits these relations into disjoint class
    sets. ``download=True`` fetches missing files at a pinned commit, checked by sha256.
    """
    if file not in FEWREL_FILES or file == "pid2name":
        choices = [k for k in FEWREL_FILES if k != "pid2name"]
        raise ValueError(f"unknown FewRel file {file!r}; choose one of {choices}.")
    if len(markers) != 4 or not all(isinstance(m, str) and m for m in markers):
        raise ValueError(
            f"markers must be 4 non-empty strings (head open, head close, tail open, tail "
            f"close), got {markers!r}."
        )
    (path,) = resolve_files(root, "fewrel", [FEWREL_FILES[file]], "FewRel", download=download,
                            verify=verify)
    content = read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object mapping relation id -> instances.")
    class_names = sorted(content)
    texts: list[str] = []
    labels: list[int] = []
    for label, relation in enumerate(class_names):
        instances = content[relation]
        if not isinstance(instances, list):
            raise ValueError(f"{path}: relation {relation!r} does not map to a list of instances.")
        for i, instance in enumerate(instances):
            where = f"{relation}[{i}]"
            tokens = instance.get("tokens") if isinstance(instance, dict) else None
            if not (isinstance(tokens, list) and tokens
                    and all(isinstance(t, str) for t in tokens)):
                raise ValueError(
                    f"{path}: instance {where} has no 'tokens' list of strings. Use the published "
                    "FewRel file."
                )
            head = _span(path, f"instance {where}['h']", instance.get("h"), len(tokens))
            tail = _span(path, f"instance {where}['t']", instance.get("t"), len(tokens))
            texts.append(mark_entities(tokens, head, tail, markers))
            labels.append(label)
    descriptions = _relation_names(path.parent / "pid2name.json", class_names, download)
    return TextClassificationData(texts, labels, class_names, name=f"fewrel_{file}",
                                  parts=[file] * len(texts), class_descriptions=descriptions)


def _relation_names(path: Path, relations: list[str], download: bool) -> list[str]:
    """Readable relation names from ``pid2name.json`` (empty when it is absent or does not fit)."""
    if not path.is_file():
        if not download:
            return []
        download_file(FEWREL_FILES["pid2name"].url, path, FEWREL_FILES["pid2name"].sha256)
    names = read_json(path)
    if not isinstance(names, dict) or not all(r in names for r in relations):
        return []
    return [str(names[r][0]) if isinstance(names[r], list) and names[r] else r for r in relations]
