"""Counts in words for tables, titles and progress lines: ``1 step``, ``2 steps``."""

from __future__ import annotations

_IRREGULAR = {"query": "queries"}


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``count(1, "query") == "1 query"``)."""
    return f"{n} {noun if n == 1 else _IRREGULAR.get(noun, noun + 's')}"
