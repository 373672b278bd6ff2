"""Reading a JSON dataset file with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    """Parse the JSON file at ``path``.

    A syntax error raises ``ValueError`` naming the file, line and column, so a damaged download
    can be found and replaced instead of surfacing as a bare decoder message.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}, line {err.lineno}, column {err.colno}: malformed JSON ({err.msg}). The file "
            "is damaged or not the published one: replace it (load with download=True)."
        ) from err
