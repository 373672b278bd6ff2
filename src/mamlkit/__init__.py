"""mamlkit: model-agnostic meta-learning for any ``torch.nn.Module``, built on ``torch.func``."""

from mamlkit.algorithms import FOMAML, MAML
from mamlkit.core import MetaLearner
from mamlkit.tasks.base import TaskBatch

__all__ = ["FOMAML", "MAML", "MetaLearner", "TaskBatch"]
__version__ = "0.1.0"
