"""Task distributions and the TaskBatch container shared by every domain."""

from mamlkit.tasks.base import TaskBatch
from mamlkit.tasks.regression import Linear, RegressionTasks, Sinusoid

__all__ = ["Linear", "RegressionTasks", "Sinusoid", "TaskBatch"]
