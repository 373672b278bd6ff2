"""Fixtures for the dataset tests: the real Omniglot files and one decoded cache per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def omniglot_root(data_root: Path) -> Path:
    """The staged official-layout Omniglot zips; skips when they are absent."""
    root = data_root / "omniglot"
    if not (root / "images_background.zip").is_file():
        pytest.skip(f"Omniglot zips not found in {root}")
    return root


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by this session's tests, so the 32,460 PNGs are decoded once."""
    return tmp_path_factory.mktemp("omniglot-cache")
