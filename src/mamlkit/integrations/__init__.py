"""Meta-learning inside the training frameworks people already use.

- :mod:`mamlkit.integrations.data`: ``TaskBatch`` through a ``torch.utils.data.DataLoader``
  (a task dataset and a collate function, or a stream of meta-batches), which both Lightning and
  ``accelerator.prepare`` accept;
- :mod:`mamlkit.integrations.lightning`: a ``LightningModule`` around any learner (needs
  ``lightning``: ``pip install "mamlkit[integrations]"``);
- :mod:`mamlkit.integrations.accelerate`: a meta-training step for Hugging Face Accelerate;
- :mod:`mamlkit.integrations.wandb`: an optional Weights & Biases logger for ``mamlkit train``.

Each framework is imported only by its own module.
"""

from mamlkit.integrations.data import TaskDataset, TaskStream, as_task_batch, collate_tasks
from mamlkit.tasks.base import TaskBatch

__all__ = ["TaskBatch", "TaskDataset", "TaskStream", "as_task_batch", "collate_tasks"]
