"""A ``LightningModule`` around any mamlkit learner (PyTorch Lightning 2).

::

    module = MetaLearningModule(MAML(model, inner_lr=0.01), meta_lr=1e-3)
    loader = DataLoader(TaskDataset(tasks), batch_size=meta_batch, collate_fn=collate_tasks)
    Trainer(strategy="ddp", devices=2).fit(module, loader, val_loader)

``objective="meta_backward"`` (the default) uses manual optimisation: the learner's chunked,
memory-bounded meta-gradient, with every backward pass handed to ``self.manual_backward``; under
DDP the chunks accumulate under ``no_sync`` and DDP reduces once (see
:meth:`mamlkit.core.learner.MetaLearner.meta_backward`). ``objective="meta_loss"`` returns the
mean outer loss from ``training_step`` and leaves the backward pass to Lightning's automatic
optimisation. Validation adapts to every held-out task and logs the query loss (and accuracy)
after ``val_steps`` steps. The learner is a submodule, so Lightning's checkpoints hold its
parameters; reload with ``MetaLearningModule.load_from_checkpoint(path, learner=fresh)``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from mamlkit.core.learner import MetaLearner
from mamlkit.outer_optimizer import meta_optimizer
from mamlkit.tasks.base import TaskBatch

OBJECTIVES = ("meta_backward", "meta_loss")


class MetaLearningModule(pl.LightningModule):
    """Meta-training of ``learner`` as a LightningModule.

    Args:
        learner: a mamlkit learner (``MAML(model)``, ``MetaSGD(model)``, ...).
        meta_lr: outer learning rate.
        optimizer: ``"adam"`` or ``"sgd"``.
        weight_decay: decoupled weight decay of the outer optimizer (AdamW when > 0 with adam).
        objective: ``"meta_backward"`` (manual optimisation) or ``"meta_loss"`` (automatic).
        val_steps: adaptation steps at validation (defaults to the learner's eval steps).
    """

    def __init__(self, learner: MetaLearner, meta_lr: float = 1e-3, optimizer: str = "adam",
                 weight_decay: float = 0.0, objective: str = "meta_backward",
                 val_steps: int | None = None) -> None:
        super().__init__()
        if not isinstance(learner, MetaLearner):
            raise TypeError(f"MetaLearningModule needs a mamlkit learner, got "
                            f"{type(learner).__name__}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}.")
        self.save_hyperparameters(ignore=["learner"])
        self.learner = learner
        self.automatic_optimization = objective == "meta_loss"

    def training_step(self, batch: TaskBatch, batch_idx: int) -> torch.Tensor | None:
        """One meta-iteration on this process's tasks."""
        if self.automatic_optimization:
            loss, metrics = self.learner.meta_loss(batch)
            self.log_dict({"train/loss": loss.detach(), **_prefixed("train", metrics)},
                          batch_size=batch.num_tasks)
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        metrics = self.learner.meta_backward(batch, backward=self.manual_backward)
        optimizer.step()
        self.log_dict(_prefixed("train", metrics), batch_size=batch.num_tasks)
        return None

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        """Query loss (and accuracy) after adapting to each held-out task."""
        steps = self.hparams.val_steps
        steps = self.learner.eval_inner_steps if steps is None else steps
        # Lightning validates under inference mode; adaptation needs the support-set gradients.
        with torch.inference_mode(False), torch.enable_grad():
            batch = _normal_tensors(batch)
            curve = self.learner.adaptation_curve(batch, steps)
        metrics = {"val/loss": curve["query_loss"][-1].mean()}
        if "query_accuracy" in curve:
            metrics["val/accuracy"] = curve["query_accuracy"][-1].float().mean()
        self.log_dict(metrics, batch_size=batch.num_tasks, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The outer optimizer over every trainable parameter of the learner."""
        params = [p for p in self.learner.parameters() if p.requires_grad]
        return meta_optimizer(self.hparams.optimizer, params, self.hparams.meta_lr,
                              self.hparams.weight_decay)


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _normal_tensors(batch: TaskBatch) -> TaskBatch:
    """``batch`` with inference-mode tensors copied to ordinary ones (autograd can use them)."""
    def plain(value: Any) -> Any:
        return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value

    return TaskBatch(plain(batch.support_x), plain(batch.support_y), plain(batch.query_x),
                     plain(batch.query_y), info=batch.info)
