"""The functional view of an unmodified ``nn.Module``: its forward pass with given parameters
(``torch.func.functional_call``), the BatchNorm policy and exact kernels, the query and support
losses, and the check that the model runs on a batch's inputs.

:class:`FunctionalModel` is the base of :class:`~mamlkit.core.learner.MetaLearner`; it knows
nothing of inner loops or meta-gradients. Everything works on parameter dicts, so the user's
module is never cloned or patched.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.core.kernels import DifferentiableKernels, kernel_needs
from mamlkit.core.losses import LossFn, is_classification, resolve_loss
from mamlkit.core.model_io import (
    ForwardFn,
    OutputSelector,
    call_model,
    describe,
    index_tree,
    select_output,
    shape_key,
)
from mamlkit.core.norms import ComposableNorms, check_policy, has_norm_layers
from mamlkit.core.params import (
    AdaptSelector,
    Params,
    named_buffers,
    named_params,
    parameter_aliases,
    select_names,
)
from mamlkit.core.support_weights import SupportLoss, support_loss_for
from mamlkit.tasks.base import TaskBatch


def check_model(model: Any) -> None:
    """``TypeError``/``ValueError`` naming the fix unless ``model`` is a plain ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError(
            "The model is wrapped in DistributedDataParallel, whose reducer cannot follow the "
            "inner loop's functional parameters. Wrap the learner instead: MAML(model), then "
            "DDP, Lightning (mamlkit.integrations.lightning) or Accelerate around it; or run "
            "mamlkit train under torchrun.")


class FunctionalModel(nn.Module):
    """``model`` run with any parameter dict, scored by ``loss`` (arguments as in
    :class:`~mamlkit.core.learner.MetaLearner`).

    ``norms`` is the normalisation context of every forward pass (None without normalisation
    layers), ``adapted_names`` the parameters the inner loop adapts (canonical names).
    """

    custom_support_loss: bool = True
    """Whether the inner loop takes its loss from :meth:`support_loss`, so that ``inner_loss``
    and ``support_weights`` apply (ANIL and MAML++ compute their own)."""

    adapts_model: bool = True
    """Whether the inner loop adapts the model's own parameters (those ``adapt`` selects);
    False for an algorithm whose adapted state lives outside the model (CAVIA's context
    parameters, set up by its ``inner_problem``): ``adapted_names`` is then empty."""

    def __init__(self, model: nn.Module, *, loss: str | LossFn = "mse",
                 adapt: AdaptSelector = None, batchnorm: str = "transductive",
                 forward: ForwardFn | None = None, output: OutputSelector = None,
                 inner_loss: str | LossFn | None = None, support_weights: str | None = None
                 ) -> None:
        super().__init__()
        check_model(model)
        self.model = model
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = resolve_loss(loss)
        self.classification = is_classification(loss)
        self.batchnorm = check_policy(batchnorm)
        self.forward_fn = forward
        self.output = output
        self.aliases = parameter_aliases(model)
        self.adapted_names = (select_names(named_params(model), adapt, self.aliases)
                              if self.adapts_model else ())
        self.norms: ComposableNorms | None = (ComposableNorms(batchnorm == "transductive")
                                              if has_norm_layers(model) else None)
        needs = kernel_needs(model)
        self._kernels = DifferentiableKernels(needs) if needs else None
        self._checked_shapes: set[tuple] = set()
        self.inner_loss_name = inner_loss if isinstance(inner_loss, str) or inner_loss is None \
            else getattr(inner_loss, "__name__", "custom")
        self.support_objective: SupportLoss | None = support_loss_for(
            model, self.loss_name, inner_loss, support_weights, self.custom_support_loss,
            type(self).__name__)

    def meta_params(self) -> Params:
        """The model's parameters (the meta-learned initialisation) as a name -> tensor dict."""
        return named_params(self.model)

    def functional_forward(self, params: Params, x: Any, buffers: Params | None = None) -> Any:
        """Run the user's model on ``x`` (one task's inputs, any pytree of tensors) with
        ``params`` in place of its own, with ``buffers`` (default: the module's), and with the
        kernels it needs routed to exactly differentiable ones (:mod:`mamlkit.core.kernels`)."""
        buffers = named_buffers(self.model) if buffers is None else buffers
        if self.norms is not None and self.batchnorm == "transductive":
            # Batch statistics only: BatchNorm's step counter is hidden (None for the call), so
            # nothing is mutated inside a transform.
            buffers = {n: None if n.endswith("num_batches_tracked") else b
                       for n, b in buffers.items()}
        return self.run_model(params, buffers, x, self.norms)

    def run_model(self, params: Params, buffers: Params, x: Any, *contexts: Any) -> Any:
        """The model on ``x`` with ``params`` and ``buffers``, under ``contexts`` (None entries
        skipped) and the kernel routes it needs; the call every forward pass goes through."""
        contexts = tuple(c for c in (*contexts, self._kernels) if c is not None)
        if not contexts:
            return call_model(self.model, (params, buffers), x, self.forward_fn)
        with ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            return call_model(self.model, (params, buffers), x, self.forward_fn)

    def task_loss(self, params: Params, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        """Loss of one task's examples under ``params``, and the outputs it was computed from
        (the logits, or what ``output`` selects)."""
        outputs = select_output(self.functional_forward(params, x), self.output)
        if (self.loss_fn is torch.nn.functional.mse_loss and isinstance(y, Tensor)
                and outputs.shape != y.shape):
            raise ValueError(
                f"The model outputs shape {tuple(outputs.shape)} per task but the targets have "
                f"shape {tuple(y.shape)}; for the MSE loss they must match (e.g. targets "
                "[examples, 1] for a model with one output)."
            )
        return _scalar_loss(self.loss_fn(outputs, y)), outputs

    def support_loss(self, params: Params, x: Any, y: Any, weights: Tensor | None = None
                     ) -> Tensor:
        """The inner loop's loss of one task's support examples under ``params``: the task loss,
        or ``inner_loss`` / ``support_weights`` where given (:class:`SupportLoss`), with the
        fixed ``weights`` of :meth:`start_weights` where it gives them."""
        if self.support_objective is None:
            return self.task_loss(params, x, y)[0]
        loss = self.support_objective(
            self.model, lambda: select_output(self.functional_forward(params, x), self.output), y,
            weights)
        return _scalar_loss(loss)

    def start_weights(self, params: Params, x: Any, y: Any, first_order: bool = False
                      ) -> Tensor | None:
        """The support examples' weights held fixed through one task's inner loop
        (``support_weights="robust-prototype"``), from the features under its starting
        ``params`` (constants under ``first_order``); None for every other inner loss."""
        objective = self.support_objective
        if objective is None or not objective.at_start:
            return None
        weights = objective.weights_of(
            self.model, lambda: select_output(self.functional_forward(params, x), self.output), y)[1]
        return weights.detach() if first_order else weights

    def predict(self, params: Params, x: Any) -> Any:
        """Model outputs for ``x`` under (adapted) ``params`` (as the model returns them)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and _requires_grad(params)):
            return self.functional_forward(params, x)

    def _check_batch(self, batch: TaskBatch) -> None:
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"Expected a mamlkit.TaskBatch, got {type(batch).__name__}.")
        key = shape_key(batch.support_x, skip=2)
        if key in self._checked_shapes:
            return
        # On copies of the buffers: a BatchNorm under the module policy in train mode updates its
        # running statistics in each forward pass, and this check is not one of the task's.
        buffers = {n: b.clone() for n, b in named_buffers(self.model).items()}
        try:
            with torch.inference_mode(False), torch.no_grad():
                self.functional_forward(self.meta_params(), index_tree(batch.support_x, 0), buffers)
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"The model cannot run on this task batch's inputs: support_x has shape "
                f"{describe(batch.support_x)} ([tasks, examples, ...]), so the model receives "
                f"[examples, ...] = {describe(index_tree(batch.support_x, 0))}. Check that the "
                f"model's input size matches the task. Original error: {error}"
            ) from error
        self.check_task_inputs(index_tree(batch.support_x, 0))
        self._checked_shapes.add(key)

    def check_task_inputs(self, x: Any) -> None:
        """Further checks of one task's inputs, run once per input shape after the model ran on
        them (algorithm hook; ANIL checks that its head is applied last). None here."""


def _scalar_loss(loss: Any) -> Tensor:
    """``loss`` if it is a scalar tensor, else ``ValueError`` with the fix."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"The loss must return a scalar tensor per task, got {shape}. Reduce it (e.g. "
            "with .mean()) over the task's examples."
        )
    return loss


def _requires_grad(params: Params) -> bool:
    return any(p.requires_grad for p in params.values())
