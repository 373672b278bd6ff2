"""Pieces shared by the algorithms built on a model's head: finding the head, reading its input
(the embedding) in a functional forward pass, and class prototypes with their distances.

Used by ANIL (which adapts only the head), BOIL (which freezes the head in the inner loop),
ProtoMAML (which initialises the head from prototypes) and Prototypical Networks (which classify
by distance to prototypes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.core.support_weights import captured_input


def last_linear_name(model: nn.Module) -> str:
    """Module name of the last ``nn.Linear`` in ``model.named_modules()`` order (the default
    head); ``ValueError`` when there is none."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names or names[-1] == "":
        raise ValueError("the model has no nn.Linear submodule")
    return names[-1]


def resolve_head(model: nn.Module, head: str | None, algorithm: str) -> str:
    """The module name of ``model``'s head: ``head`` if given (checked), else its last
    ``nn.Linear``; ``ValueError`` naming the fix otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        name = last_linear_name(model) if head is None else head
    except ValueError:
        raise ValueError(f"{algorithm}'s default head is the model's last nn.Linear submodule, but "
                         "the model has no Linear submodule; pass head='<module name>' naming "
                         "the submodule that maps features to outputs.") from None
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise ValueError(f"{algorithm}: head={name!r} is not a submodule of the model. Known "
                         f"submodules: {sorted(n for n in modules if n)}")
    if not any(True for _ in modules[name].parameters()):
        raise ValueError(f"{algorithm}: the head {name!r} has no parameters to adapt or learn; "
                         "name the module that maps features to outputs (e.g. the final "
                         "nn.Linear) with head=.")
    return name


def in_module(name: str, module: str) -> bool:
    """Whether the parameter ``name`` belongs to the submodule called ``module``."""
    return name.startswith(module + ".")


@contextmanager
def capture_input(module: nn.Module, label: str) -> Iterator[list[Tensor]]:
    """Record the tensor ``module`` is called with during the block; it must be called exactly
    once, with a tensor (the embedding a head receives)."""
    with captured_input(module) as captured:
        yield captured
    if len(captured) != 1:
        raise ValueError(f"the head {label!r} received a tensor {len(captured)} times in one forward "
                         "pass; it must be applied exactly once, to one tensor (name another head "
                         "with head=).")


def head_input(model: nn.Module, head: str, forward: Callable[[], Any]) -> Tensor:
    """The input of ``model``'s submodule ``head`` while ``forward()`` runs the model, with its
    graph (the embedding of the examples before the head), as ``[examples, features]``."""
    with capture_input(model.get_submodule(head), head) as captured:
        forward()
    return captured[0].flatten(1)


def class_prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean embedding of each class ``0..ways-1`` (Snell et al., 2017), ``[ways, features]``.

    Written with a one-hot matrix (no data-dependent shapes), so it runs under ``vmap``; a class
    without examples gets a zero prototype.
    """
    one_hot = torch.nn.functional.one_hot(labels, ways).to(embeddings.dtype)  # [examples, ways]
    counts = one_hot.sum(0).clamp_min(1).unsqueeze(1)
    return one_hot.t() @ embeddings.flatten(1) / counts


def squared_distances(embeddings: Tensor, prototypes: Tensor) -> Tensor:
    """Squared Euclidean distance of every embedding to every prototype, ``[examples, ways]``."""
    flat = embeddings.flatten(1)
    return ((flat.unsqueeze(1) - prototypes.unsqueeze(0)) ** 2).sum(-1)


def refuse_regression(learner: Any, algorithm: str) -> None:
    """``ValueError`` when ``learner`` was built with the regression loss (MSE): prototypes
    need classes. Any other loss is taken to score logits against class labels."""
    if learner.loss_fn is torch.nn.functional.mse_loss:
        raise ValueError(f"{algorithm} classifies by class prototypes and needs a classification "
                         f"loss (loss='cross_entropy', not {learner.loss_name!r}); for regression "
                         "use maml, boil or cavia.")
