"""What the model is called with and what the loss reads off its outputs.

Inputs and targets may be any pytree of tensors (a tensor, a tuple, a dict such as Hugging Face's
``{"input_ids", "attention_mask"}``) whose leaves all have the examples on the leading dimension
(and, in a :class:`~mamlkit.tasks.base.TaskBatch`, the tasks before them). ``torch.func.vmap``
maps over every leaf, and the per-task loop indexes every leaf, so nothing has to be packed into
one tensor by hand.

The model is called as ``model(**x)`` for a dict and ``model(x)`` otherwise, unless a
``forward(model, x)`` callable says how. Its outputs may be a tensor, a tuple or list, a dict or a
Hugging Face ``ModelOutput``: losses and metrics read the logits (``.logits`` / ``["logits"]``,
else the first element) unless an ``output`` selector (a key or attribute name, or a callable)
says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_leaves, tree_map

from mamlkit.tasks.base import describe_shapes as describe
from mamlkit.tasks.base import first_leaf, index_tree

__all__ = ["call_model", "concat", "describe", "first_leaf", "index_tree", "leaves",
           "select_output", "shape_key", "unwrap_inference"]

ForwardFn = Callable[[nn.Module, Any], Any]
"""``forward(model, x) -> outputs``: how to call the model on one task's inputs ``x``."""

OutputSelector = None | str | Callable[[Any], Tensor]
"""Which tensor of the model's outputs the loss and metrics use: ``None`` (the logits, see the
module docstring), a key or attribute name, or a callable ``outputs -> tensor``."""


def leaves(tree: Any) -> list[Tensor]:
    """The tensors of a pytree, in a fixed order."""
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, Tensor)]


def concat(first: Any, second: Any) -> Any:
    """Two pytrees of the same structure joined along the examples (leading) dimension."""
    return tree_map(lambda a, b: torch.cat([a, b]), first, second)


def shape_key(tree: Any, skip: int = 0) -> tuple:
    """Shapes (after the first ``skip`` dimensions), dtypes and devices of a pytree's tensors:
    two inputs with the same key run through the model the same way."""
    return tuple((tuple(t.shape[skip:]), t.dtype, t.device) for t in leaves(tree))


def unwrap_inference(tree: Any) -> Any:
    """``tree`` with every inference-mode tensor cloned into an ordinary one (autograd may save
    ordinary tensors for backward, never inference tensors)."""
    def plain(leaf: Any) -> Any:
        if isinstance(leaf, Tensor) and leaf.is_inference():
            return leaf.clone()
        return leaf

    return tree_map(plain, tree)


def call_model(model: nn.Module, tensors: tuple[dict[str, Tensor], dict[str, Tensor]], x: Any,
               forward: ForwardFn | None = None) -> Any:
    """Run ``model`` on ``x`` with ``tensors`` (parameter and buffer dicts) in place of its own:
    ``forward(model, x)`` if given, else ``model(**x)`` for a dict and ``model(x)`` otherwise."""
    if forward is not None:
        merged = {**tensors[0], **tensors[1]}
        with _reparametrize_module(model, merged, tie_weights=True, strict=False):
            return forward(model, x)
    if isinstance(x, Mapping):
        return functional_call(model, tensors, (), dict(x))
    return functional_call(model, tensors, (x,))


def select_output(outputs: Any, selector: OutputSelector = None) -> Tensor:
    """The tensor the loss and metrics use (see :data:`OutputSelector`)."""
    if callable(selector):
        chosen = selector(outputs)
    elif isinstance(selector, str):
        chosen = _lookup(outputs, selector)
        if chosen is None:
            raise ValueError(f"output={selector!r} names nothing in the model's outputs "
                             f"({_fields(outputs)}); name one of those.")
    else:
        chosen = _default_output(outputs)
    if not isinstance(chosen, Tensor):
        raise TypeError(
            f"the model's outputs ({_fields(outputs)}) give no tensor for the loss; pass output="
            "'<key or attribute>' or output=callable(outputs) -> logits tensor.")
    return chosen


def _default_output(outputs: Any) -> Any:
    if isinstance(outputs, Tensor):
        return outputs
    logits = _lookup(outputs, "logits")
    if logits is not None:
        return logits
    if isinstance(outputs, Mapping):
        return next(iter(outputs.values()), None)
    if isinstance(outputs, (tuple, list)) and outputs:
        return outputs[0]
    return None


def _lookup(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _fields(outputs: Any) -> str:
    if isinstance(outputs, Mapping):
        return f"{type(outputs).__name__} with keys {list(outputs)}"
    if isinstance(outputs, (tuple, list)):
        return f"a {type(outputs).__name__} of {len(outputs)}"
    return type(outputs).__name__
