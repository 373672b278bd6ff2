"""mamlkit: model-agnostic meta-learning for any ``torch.nn.Module``, built on ``torch.func``."""

from mamlkit.tasks.base import TaskBatch

__all__ = ["TaskBatch"]
__version__ = "0.1.0"
