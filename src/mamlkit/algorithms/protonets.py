"""Prototypical Networks: the metric-learning baseline of few-shot classification.

Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017. A network
embeds the support and query examples; each class's prototype is the mean embedding of its
support examples, and a query's logits are its negative squared Euclidean distances to the
prototypes. Trained episodically on the query cross-entropy, with no inner loop: "adapting" to a
task is computing its prototypes, so the accuracy is the same after any number of steps.

It speaks the interface of the gradient-based learners (``meta_loss``, ``meta_backward``,
``adapt``, ``predict``, ``adaptation_curve``), so the trainer and the evaluation protocol run it
like MAML: ``adapt`` returns the parameters with the task's prototypes under :data:`PROTOTYPES`,
and ``predict(params, x)`` returns the logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.algorithms.prototypes import (
    class_prototypes,
    head_input,
    refuse_regression,
    resolve_head,
    squared_distances,
)
from mamlkit.core.learner import MetaLearner
from mamlkit.core.model_io import select_output
from mamlkit.core.params import Params

PROTOTYPES = "prototypes"
"""The key of a task's class prototypes ``[ways, features]`` in ProtoNets' parameter dicts."""

EMBEDDINGS = ("head_input", "output")
"""Where ProtoNets reads the embedding: the input of the model's head (the network without its
classifier, the default) or the model's output."""


class ProtoNets(MetaLearner):
    """Prototypical Networks (Snell et al., NeurIPS 2017): classify by distance to class means.

    Args:
        model: the embedding network: a classifier whose head's input is the embedding
            (``embedding="head_input"``; the head itself is unused), or a network whose output
            is the embedding (``embedding="output"``).
        embedding: ``"head_input"`` or ``"output"`` (see :data:`EMBEDDINGS`).
        head: module name of the head for ``"head_input"`` (default: the last ``nn.Linear``).
        ways: classes per episode (labels ``0..ways-1``); default: the head's ``out_features``
            for ``"head_input"``, required for ``"output"``.
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`) that
            apply: the loss (default ``"cross_entropy"``), batching, chunks, compilation.
            ``inner_lr``, ``inner_steps`` and ``eval_inner_steps`` are accepted and unused
            (no inner loop); ``first_order``, ``inner_loss`` and ``support_weights`` are refused.
    """

    inner_checkpointable = False  # its inner problem is its own

    task_threads_safe = False  # the embedding is read by a hook on the shared head module
    custom_support_loss = False  # there is no inner loss

    def __init__(self, model: nn.Module, *, embedding: str = "head_input", head: str | None = None,
                 ways: int | None = None, **kwargs: Any) -> None:
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding={embedding!r} is unknown; use one of {EMBEDDINGS}.")
        if kwargs.get("first_order"):
            raise ValueError("ProtoNets has no inner loop, so first_order does not apply; drop "
                             "it (--first-order).")
        head_name = resolve_head(model, head, "ProtoNets") if embedding == "head_input" else None
        if ways is None and head_name is not None:
            ways = getattr(model.get_submodule(head_name), "out_features", None)
        if not isinstance(ways, int) or isinstance(ways, bool) or ways < 1:
            raise ValueError(f"ProtoNets needs the number of classes per episode; pass ways=<int> "
                             f"(got {ways!r}).")
        kwargs.setdefault("loss", "cross_entropy")
        super().__init__(model, **kwargs)
        refuse_regression(self, "ProtoNets")
        self.embedding, self.head_name, self.ways = embedding, head_name, ways

    def embed(self, params: Params, x: Any) -> Tensor:
        """Embeddings ``[examples, features]`` of ``x`` under ``params``, with their graph."""
        model_params = {n: p for n, p in params.items() if n != PROTOTYPES}
        if self.head_name is None:
            return select_output(self.functional_forward(model_params, x), self.output).flatten(1)
        return head_input(self.model, self.head_name,
                          lambda: self.functional_forward(model_params, x))

    def inner_loop(self, params: Params, support_x: Any, support_y: Tensor, steps: int,
                   first_order: bool) -> tuple[list[Params], list[Tensor]]:
        """The task's prototypes, as the same parameter dict after every one of ``steps + 1``
        "steps" (there is no gradient adaptation), and no support losses."""
        prototypes = class_prototypes(self.embed(params, support_x), support_y, self.ways)
        adapted = {**{n: p for n, p in params.items() if n != PROTOTYPES}, PROTOTYPES: prototypes}
        return [adapted] * (steps + 1), []

    def task_loss(self, params: Params, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        """Loss of examples ``x`` with labels ``y`` against the prototypes in ``params``, and the
        logits (negative squared distances)."""
        logits = self.predict(params, x)
        return self.loss_fn(logits, y), logits

    def predict(self, params: Params, x: Any) -> Tensor:
        """Logits ``[examples, ways]``: negative squared distances to ``params[PROTOTYPES]``."""
        if PROTOTYPES not in params:
            raise ValueError("ProtoNets classifies against a task's class prototypes; pass the "
                             "parameters from learner.adapt(support_x, support_y).")
        with torch.set_grad_enabled(torch.is_grad_enabled()
                                    and any(p.requires_grad for p in params.values())):
            return -squared_distances(self.embed(params, x), params[PROTOTYPES])
