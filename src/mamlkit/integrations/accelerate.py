"""A meta-training step for Hugging Face Accelerate.

Usage, with any learner (``MAML(model)``, ...), in a script started by ``accelerate launch`` or
torchrun::

    accelerator = Accelerator()
    loader = DataLoader(TaskDataset(tasks), batch_size=tasks_per_process, shuffle=True,
                        collate_fn=collate_tasks)
    learner, optimizer, loader = accelerator.prepare(learner, optimizer, loader)
    for batch in loader:
        metrics = meta_step(accelerator, learner, optimizer, batch)

The backward pass goes through ``accelerator.backward`` (its loss scaling and gradient
accumulation), mixed precision through ``accelerator.autocast``; the meta-gradient is then
averaged over the processes with one all-reduce (:func:`mamlkit.distributed.synchronize_step`),
so every process takes the same step: the mean meta-gradient over all processes' tasks. The
learner's own meta-gradient runs outside DDP's forward, so DDP's reducer takes no part and
nothing is reduced twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mamlkit.core.learner import MetaLearner
from mamlkit.distributed import current_context, synchronize_step
from mamlkit.integrations.data import as_task_batch
from mamlkit.tasks.base import TaskBatch


def meta_step(accelerator: Any, learner: Any, optimizer: Any,
              batch: TaskBatch | Mapping[str, Tensor], *,
              objective: str = "meta_backward", max_grad_norm: float = 0.0) -> dict[str, float]:
    """One meta-iteration on this process's tasks ``batch``; returns metrics averaged over the
    processes (``loss`` included).

    Args:
        accelerator: the ``accelerate.Accelerator``.
        learner: the learner, as returned by ``accelerator.prepare`` (DDP-wrapped or not).
        optimizer: its outer optimizer (prepared or not).
        batch: this process's share of the meta-batch (a TaskBatch, or a dict from a prepared
            :class:`~mamlkit.integrations.data.TaskStream` loader).
        objective: ``"meta_backward"`` (chunked, memory-bounded) or ``"meta_loss"`` (one graph).
        max_grad_norm: clip the averaged meta-gradient to this norm (0 = no clipping).
    """
    inner = accelerator.unwrap_model(learner)
    if not isinstance(inner, MetaLearner):
        raise TypeError(f"meta_step needs a mamlkit learner (MAML(model), ...), got "
                        f"{type(inner).__name__}.")
    if objective not in ("meta_backward", "meta_loss"):
        raise ValueError(f"objective must be 'meta_backward' or 'meta_loss', got {objective!r}.")
    batch = as_task_batch(batch)
    optimizer.zero_grad(set_to_none=True)
    with accelerator.autocast():
        if objective == "meta_loss":
            loss, metrics = inner.meta_loss(batch)
            accelerator.backward(loss)
            metrics = {"loss": float(loss.detach()), **metrics}
        else:
            metrics = inner.meta_backward(batch, backward=accelerator.backward)
    params = [p for p in inner.parameters() if p.requires_grad]
    synced = synchronize_step(params, metrics, False, False, current_context())
    if max_grad_norm:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return synced.metrics
