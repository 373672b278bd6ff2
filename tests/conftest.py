"""Shared test fixtures: where the real datasets live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_data_root() -> Path:
    """``$MAMLKIT_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("MAMLKIT_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the real datasets; skips the test when they are truly absent."""
    root = find_data_root()
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set MAMLKIT_DATA to their folder)")
    return root


# Tests run small tensors, where one intra-op thread is fastest and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
