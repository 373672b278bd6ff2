"""The one container every domain hands to the engine: a batch of tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map


@dataclass
class TaskBatch:
    """A meta-batch of tasks, each with a support set (to adapt on) and a query set (to score on).

    Every tensor has the task dimension first: ``support_x`` is ``[tasks, n_support, ...]``,
    ``support_y`` is ``[tasks, n_support, ...]``, likewise for the query set. Inputs and targets
    may also be pytrees of such tensors (a dict such as ``{"input_ids": ..., "attention_mask":
    ...}``, a tuple), every leaf with the tasks and then the examples first; the model receives one
    task's pytree (``model(**x)`` for a dict, see :mod:`mamlkit.core.model_io`). ``info`` carries
    per-task metadata (for example the sinusoid's amplitude and phase, ``[tasks]`` each) that the
    engine never reads but plots and evaluations may.
    """

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_task_batch(self)

    @property
    def num_tasks(self) -> int:
        """Number of tasks in the meta-batch."""
        return int(first_leaf(self.support_x).shape[0])

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> TaskBatch:
        """The same batch with ``fn`` applied to every tensor (of every pytree, and of ``info``)."""

        def apply(value: Any) -> Any:
            return tree_map(lambda leaf: fn(leaf) if isinstance(leaf, Tensor) else leaf, value)

        return TaskBatch(
            **{f.name: apply(getattr(self, f.name)) for f in fields(self) if f.name != "info"},
            info={k: apply(v) for k, v in self.info.items()},
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TaskBatch:
        """The same batch with every tensor moved to ``device``."""
        return self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, as a batch of one."""
        sl = slice(i, i + 1)
        return self.slice(sl)

    def slice(self, sl: slice) -> TaskBatch:
        """The tasks selected by ``sl``, as a smaller batch (views, no copies)."""
        info = {
            k: v[sl] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.num_tasks else v
            for k, v in self.info.items()
        }
        return TaskBatch(*(index_tree(getattr(self, name), sl) for name in _NAMES), info)


_NAMES = ("support_x", "support_y", "query_x", "query_y")


def first_leaf(tree: Any) -> Tensor:
    """The first tensor of a pytree (a tensor is its own first leaf)."""
    if isinstance(tree, Tensor):
        return tree
    for leaf in tree_leaves(tree):
        if isinstance(leaf, Tensor):
            return leaf
    raise TypeError(f"expected a tensor or a pytree of tensors, got {type(tree).__name__}.")


def index_tree(tree: Any, key: Any) -> Any:
    """Every tensor of a pytree indexed by ``key`` on its leading dimension (views, no copies)."""
    return tree_map(lambda leaf: leaf[key] if isinstance(leaf, Tensor) else leaf, tree)


def describe_shapes(tree: Any) -> str:
    """A short description of a pytree's tensor shapes, for error messages."""
    if isinstance(tree, Tensor):
        return str(tuple(tree.shape))
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_shapes(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (tuple, list)):
        return "(" + ", ".join(describe_shapes(v) for v in tree) + ")"
    return type(tree).__name__


def _example_shapes(tree: Any) -> Any:
    """The pytree's structure with each tensor replaced by its shape after [tasks, examples]."""
    return tree_map(lambda leaf: tuple(leaf.shape[2:]), tree)


def validate_task_batch(batch: TaskBatch) -> None:
    """Raise ``ValueError`` naming the problem when a batch's shapes do not fit together."""
    counts: dict[str, tuple[int, int]] = {}
    for name in _NAMES:
        value = getattr(batch, name)
        tensors = tree_leaves(value)
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError(f"TaskBatch.{name} must be a torch.Tensor or a pytree (dict, tuple, "
                            f"list) of tensors, got {type(value).__name__}")
        for t in tensors:
            if t.dim() < 2:
                raise ValueError(
                    f"TaskBatch.{name} has shape {describe_shapes(value)}; expected [tasks, examples, ...] "
                    "for every tensor. Add the task dimension first (e.g. x.unsqueeze(0) for a "
                    "single task)."
                )
        sizes = {(int(t.shape[0]), int(t.shape[1])) for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"the tensors of TaskBatch.{name} disagree on [tasks, examples]: "
                             f"shapes {describe_shapes(value)}. Every leaf needs the same leading two sizes.")
        counts[name] = sizes.pop()
    tasks = {name: count[0] for name, count in counts.items()}
    if len(set(tasks.values())) != 1:
        raise ValueError(f"TaskBatch tensors disagree on the number of tasks: {tasks}")
    for split in ("support", "query"):
        x, y = getattr(batch, f"{split}_x"), getattr(batch, f"{split}_y")
        if counts[f"{split}_x"][1] != counts[f"{split}_y"][1]:
            raise ValueError(
                f"{split}_x has {counts[f'{split}_x'][1]} examples per task but {split}_y has "
                f"{counts[f'{split}_y'][1]}: shapes {describe_shapes(x)} and "
                f"{describe_shapes(y)}. Each input needs exactly one target."
            )
    for kind, noun in (("x", "examples"), ("y", "targets")):
        support, query = getattr(batch, f"support_{kind}"), getattr(batch, f"query_{kind}")
        if _example_shapes(support) != _example_shapes(query):
            raise ValueError(
                f"support_{kind} {noun} have shape {_example_shapes(support)} but query_{kind} "
                f"{noun} have shape {_example_shapes(query)}: "
                + ("support and query must come from the same input space." if kind == "x"
                   else "support and query targets must match.")
            )
