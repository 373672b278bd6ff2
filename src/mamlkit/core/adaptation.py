"""Test-time adaptation curves: query metrics after each inner step, for every task of a batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import vmap

from mamlkit.core.losses import accuracy
from mamlkit.core.model_io import index_tree, unwrap_inference
from mamlkit.core.params import Params
from mamlkit.tasks.base import TaskBatch

if TYPE_CHECKING:
    from mamlkit.core.learner import MetaLearner


def adaptation_curve(learner: MetaLearner, batch: TaskBatch, steps: int, vmapped: bool
                     ) -> dict[str, Tensor]:
    """Query loss (and accuracy, for classification) of ``learner`` after 0..``steps`` inner
    steps on each task's support set, ``[steps + 1, tasks]`` each, all tasks at once under
    ``vmap`` if ``vmapped`` or one at a time. No graph is built; under ``torch.inference_mode()``
    the inner gradients are computed outside it, on ordinary copies of the inputs."""

    def one_task(params: Params, sx: Any, sy: Any, qx: Any, qy: Any) -> dict[str, Tensor]:
        trajectory, _ = learner.inner_loop(params, sx, sy, steps, first_order=True)
        out: dict[str, list[Tensor]] = {"query_loss": []}
        if learner.classification:
            out["query_accuracy"] = []
        for p in trajectory:
            loss, outputs = learner.task_loss(p, qx, qy)
            out["query_loss"].append(loss)
            if learner.classification:
                out["query_accuracy"].append(accuracy(outputs, qy))
        return {k: torch.stack(v) for k, v in out.items()}

    params = {n: p.detach() for n, p in learner.meta_params().items()}
    with torch.inference_mode(False), torch.no_grad():
        args = tuple(unwrap_inference(a) for a in (
            batch.support_x, batch.support_y, batch.query_x, batch.query_y))
        if vmapped:
            result = vmap(one_task, in_dims=(None, 0, 0, 0, 0), randomness="different")(
                params, *args)
            return {k: v.transpose(0, 1) for k, v in result.items()}
        per_task = [one_task(params, *(index_tree(a, i) for a in args))
                    for i in range(batch.num_tasks)]
        return {k: torch.stack([r[k] for r in per_task], dim=1) for k in per_task[0]}
