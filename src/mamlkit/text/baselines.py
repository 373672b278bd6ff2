"""Non-meta-learned baselines on episodes of fixed embeddings: prototypes and a linear probe.

Both are pure functions of a :class:`mamlkit.TaskBatch` whose ``x`` are embeddings
``[tasks, n, dim]`` and whose ``y`` are labels ``0 .. ways-1``; they return the query accuracy
of every task, ``[tasks]``. They tell how much a meta-learner adds over the frozen encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from mamlkit.tasks.base import TaskBatch


def _check_embedding_batch(batch: TaskBatch) -> int:
    """Number of ways; ``ValueError`` if the batch is not embeddings with integer labels."""
    if batch.support_x.dim() != 3 or not batch.support_x.is_floating_point():
        raise ValueError(
            f"expected float embeddings [tasks, n, dim], got support_x of shape "
            f"{tuple(batch.support_x.shape)} and dtype {batch.support_x.dtype}. Sample episodes "
            "from embeddings (embed_texts), not token ids."
        )
    if batch.support_y.dim() != 2 or batch.support_y.dtype != torch.int64:
        raise ValueError(
            f"expected int64 labels [tasks, n], got support_y of shape "
            f"{tuple(batch.support_y.shape)} and dtype {batch.support_y.dtype}."
        )
    ways = int(max(batch.support_y.max(), batch.query_y.max())) + 1
    present = torch.nn.functional.one_hot(batch.support_y, ways).sum(1)
    if bool((present == 0).any()):
        raise ValueError(
            "some task has a class without support examples; every label 0..ways-1 needs at "
            "least one support example."
        )
    return ways


def prototype_accuracy(batch: TaskBatch, metric: str = "euclidean") -> Tensor:
    """Query accuracy ``[tasks]`` of the nearest class centroid (prototype) classifier.

    Each class is the mean of its support embeddings; a query gets the class of the nearest mean
    (squared Euclidean distance, or largest cosine similarity with ``metric="cosine"``).
    Snell et al., 2017, "Prototypical Networks for Few-shot Learning", without a trained encoder.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; choose 'euclidean' or 'cosine'.")
    ways = _check_embedding_batch(batch)
    support, query = batch.support_x, batch.query_x
    if metric == "cosine":
        support = torch.nn.functional.normalize(support, dim=-1)
        query = torch.nn.functional.normalize(query, dim=-1)
    onehot = torch.nn.functional.one_hot(batch.support_y, ways).to(support.dtype)
    centroids = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)
    if metric == "cosine":
        scores = query @ torch.nn.functional.normalize(centroids, dim=-1).transpose(1, 2)
    else:
        scores = -torch.cdist(query, centroids).pow(2)
    return (scores.argmax(-1) == batch.query_y).to(torch.float32).mean(-1)


def _probe_loss(weight: Tensor, bias: Tensor, x: Tensor, y: Tensor, weight_decay: float) -> Tensor:
    logits = x @ weight.T + bias
    return (torch.nn.functional.cross_entropy(logits, y)
            + 0.5 * weight_decay * weight.pow(2).sum())


def linear_probe_accuracy(batch: TaskBatch, steps: int = 100, lr: float = 1.0,
                          weight_decay: float = 0.0, seed: int = 0) -> Tensor:
    """Query accuracy ``[tasks]`` of a linear head trained on each task's support set.

    The head starts from a random initialisation (weights ``N(0, 1/dim)``, zero bias; seeded) and
    takes ``steps`` full-batch gradient steps of size ``lr`` on the support cross-entropy (plus
    ``weight_decay``/2 times the squared weights); all tasks are trained at once with
    ``torch.func.vmap``. This is the "fine-tune a new head" baseline (Chen et al., 2019, "A Closer
    Look at Few-shot Classification").
    """
    if steps < 0 or lr <= 0:
        raise ValueError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}.")
    ways = _check_embedding_batch(batch)
    tasks, _, dim = batch.support_x.shape
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(tasks, ways, dim, generator=generator).to(batch.support_x) / dim**0.5
    bias = torch.zeros(tasks, ways, dtype=batch.support_x.dtype, device=batch.support_x.device)
    step = vmap(grad(_probe_loss, argnums=(0, 1)), in_dims=(0, 0, 0, 0, None))
    with torch.no_grad():
        for _ in range(steps):
            grad_w, grad_b = step(weight, bias, batch.support_x, batch.support_y, weight_decay)
            weight = weight - lr * grad_w
            bias = bias - lr * grad_b
        logits = batch.query_x @ weight.transpose(1, 2) + bias.unsqueeze(1)
    return (logits.argmax(-1) == batch.query_y).to(torch.float32).mean(-1)
