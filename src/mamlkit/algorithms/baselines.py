"""Non-meta-learning baselines, run through the same driver so they see identical episodes.

- :class:`Pretrained`: joint training on every task's data as one ordinary regression or
  classification problem (no inner loop), then fine-tuning on each test task's support set --
  the "pretrained" baseline of Finn, Abbeel & Levine, ICML 2017 (Section 5.1).
- :class:`RandomInitFineTune`: no meta-training at all; the model's own initialisation is
  fine-tuned on each test task's support set (the "random initialisation" reference point).

Both adapt at test time exactly like MAML (``adapt``/``predict``/``adaptation_curve``, SGD with
``inner_lr`` for ``eval_inner_steps`` steps), so their numbers are directly comparable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mamlkit.core.learner import MetaLearner, TaskOutput
from mamlkit.core.model_io import concat
from mamlkit.core.params import Params


class Pretrained(MetaLearner):
    """Joint-training baseline (Finn et al., ICML 2017): minimise the loss of ``theta`` itself on
    the union of each task's support and query sets; fine-tune at test time.

    ``inner_steps`` is the number of fine-tuning steps at test time (training takes none). Note
    that for few-shot classification with labels re-drawn per episode, joint training on episode
    labels learns features but no meaningful shared head; that is the baseline as defined.
    """

    def task_objective(self, params: Params, support_x: Any, support_y: Tensor, query_x: Any,
                       query_y: Tensor) -> TaskOutput:
        """Loss of the unadapted parameters on the task's support and query examples together."""
        loss, _ = self.task_loss(params, concat(support_x, query_x), concat(support_y, query_y))
        with torch.no_grad():
            query_loss, outputs = self.task_loss(params, query_x, query_y)
        metrics = self.query_metrics(query_loss, outputs, query_y, [])
        metrics["joint_loss"] = loss.detach()
        return loss, {}, metrics


class RandomInitFineTune(MetaLearner):
    """No meta-training: the model's own (random) initialisation, fine-tuned per test task.

    ``meta_trainable`` is ``False``: a training loop should skip the outer updates. If it does
    call ``meta_loss``, the loss value is the fine-tuned query loss and its gradient is exactly
    zero, so an optimizer step without weight decay leaves the parameters unchanged.
    """

    meta_trainable = False

    def task_objective(self, params: Params, support_x: Any, support_y: Tensor, query_x: Any,
                       query_y: Tensor) -> TaskOutput:
        """Fine-tuned query loss (no graph to the parameters; zero meta-gradient)."""
        start = {n: p.detach() for n, p in params.items()}
        trajectory, support_losses = self.inner_loop(start, support_x, support_y, self.inner_steps,
                                                     first_order=True)
        with torch.no_grad():
            loss, outputs = self.task_loss(trajectory[-1], query_x, query_y)
        zero = sum((p * 0).sum() for p in params.values())
        return loss.detach() + zero, {}, self.query_metrics(loss, outputs, query_y, support_losses)
