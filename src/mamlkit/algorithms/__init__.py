"""The MAML family: each algorithm is one small file on top of the shared driver."""

from __future__ import annotations

from typing import Any

from torch import nn

from mamlkit.algorithms.maml import FOMAML, MAML
from mamlkit.core.learner import MetaLearner

ALGORITHMS: dict[str, type[MetaLearner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
}
"""Algorithm name (as on the command line) -> class."""


def make_algorithm(name: str, model: nn.Module, **kwargs: Any) -> MetaLearner:
    """Instantiate the algorithm called ``name`` around ``model``."""
    if name not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}. Known algorithms: {', '.join(sorted(ALGORITHMS))}.")
    if name == "fomaml":
        kwargs = {**kwargs, "first_order": True}
    return ALGORITHMS[name](model, **kwargs)


__all__ = ["ALGORITHMS", "FOMAML", "MAML", "make_algorithm"]
