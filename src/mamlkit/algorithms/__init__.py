"""The MAML family: each algorithm is one small file on top of the shared driver."""

from mamlkit.algorithms.maml import FOMAML, MAML

__all__ = ["FOMAML", "MAML"]
