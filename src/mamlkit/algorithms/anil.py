"""ANIL: Almost No Inner Loop -- only the head adapts, on features computed once per task.

Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020. The body is frozen in the inner loop, so its output on the
support set is the same at every inner step: we compute those features once per task and run the
inner loop on the head alone. The features keep their graph to the body, so the outer gradient
still reaches every body parameter (second order through the head's updates included); the
meta-gradient is exactly MAML's with ``adapt=<head>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit.algorithms.prototypes import resolve_head
from mamlkit.core.inner_loop import InnerProblem
from mamlkit.core.learner import MetaLearner
from mamlkit.core.model_io import select_output
from mamlkit.core.params import Params, named_buffers, named_params


class ANIL(MetaLearner):
    """ANIL (Raghu et al., ICLR 2020): adapt the head only, computing body features once per task.

    Args:
        model: any ``nn.Module`` whose output is ``head(features)`` for one submodule ``head``
            that is applied last, to a single tensor (checked on the first batch).
        head: module name of the head (``"classifier"``, ``"2"`` in an ``nn.Sequential``);
            default: the last ``nn.Linear`` layer.
        **kwargs: the driver's arguments (:class:`~mamlkit.core.learner.MetaLearner`), except
            ``adapt``, which is the head's parameters by definition.
    """

    inner_checkpointable = False  # its inner problem is its own

    task_threads_safe = False  # features are captured by a hook on the shared head module
    custom_support_loss = False  # the inner loop runs on the head's features

    def __init__(self, model: nn.Module, *, head: str | None = None, **kwargs: Any) -> None:
        if "adapt" in kwargs:
            raise ValueError("ANIL adapts exactly the head's parameters; choose them with head='<module "
                             "name>' instead of adapt=.")
        head = resolve_head(model, head, "ANIL")
        super().__init__(model, adapt=head, **kwargs)
        self.head_name = head

    @property
    def head(self) -> nn.Module:
        """The head submodule (looked up, not registered twice)."""
        return self.model.get_submodule(self.head_name)

    # ------------------------------------------------------------------ features and head
    def features(self, params: Params, x: Any) -> Tensor:
        """The head's input for ``x`` under ``params`` (the body's output), with its graph."""
        with self._capture_head_input() as captured:
            self.functional_forward(params, x)
        return captured[0]

    def head_forward(self, head_params: Params, features: Tensor) -> Tensor:
        """The head applied to ``features`` with ``head_params`` (full names, ``head.`` prefix)."""
        prefix = self.head_name + "."
        local = {n[len(prefix):]: p for n, p in head_params.items()}
        buffers = {n[len(prefix):]: b for n, b in named_buffers(self.model).items() if n.startswith(prefix)}
        if self.norms is None:
            return functional_call(self.head, (local, buffers), (features,))
        with self.norms:
            return functional_call(self.head, (local, buffers), (features,))

    @contextmanager
    def _capture_head_input(self) -> Iterator[list[Tensor]]:
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: tuple) -> None:
            if len(args) != 1 or not isinstance(args[0], Tensor):
                raise ValueError(f"ANIL needs a head called with one tensor; {self.head_name!r} got "
                                 f"{len(args)} positional arguments. Name another head.")
            captured.append(args[0])

        handle = self.head.register_forward_pre_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(f"The head {self.head_name!r} ran {len(captured)} times in one forward pass; "
                             "ANIL needs a head applied exactly once, last.")

    # ------------------------------------------------------------------ the inner loop on features
    def inner_problem(self, params: Params, support_x: Any, support_y: Any, first_order: bool
                      ) -> InnerProblem:
        """The head adapts on the support features, which the body computes once, at the first
        step (with their graph to the body, unless ``first_order`` makes the inner gradients
        constants anyway)."""
        body = {n: p for n, p in params.items() if n not in self.adapted_names}
        cache: list[Tensor] = []

        def loss(head_params: Params, step: int) -> tuple[Tensor, dict]:
            if not cache:
                feats = self.features(params, support_x)
                cache.append(feats.detach() if first_order else feats)
            return self.loss_fn(self.head_forward(head_params, cache[0]), support_y), {}

        return InnerProblem(start={n: params[n] for n in self.adapted_names}, loss=loss,
                            assemble=lambda fast, step: {**body, **fast})

    def check_task_inputs(self, x: Any) -> None:
        """The model's output must be ``head(features)``: checked once per input shape."""
        self._check_head_is_last(x)

    def _check_head_is_last(self, x: Any) -> None:
        params = {n: p.detach() for n, p in named_params(self.model).items()}
        with torch.no_grad(), self._capture_head_input() as captured:
            buffers = {n: b.clone() for n, b in named_buffers(self.model).items()}  # no stat update
            outputs = select_output(self.functional_forward(params, x, buffers), self.output)
        rebuilt = self.head_forward({n: params[n] for n in self.adapted_names}, captured[0])
        if not isinstance(outputs, Tensor) or outputs.shape != rebuilt.shape or not torch.allclose(
                outputs, rebuilt):
            raise ValueError(f"The model's output is not head(features) for head={self.head_name!r}: "
                             "ANIL needs the head to be the last module applied. Name the final "
                             "layer (or final block) with head=.")
