"""The shared driver of every gradient-based meta-learning algorithm.

:class:`MetaLearner` owns what all algorithms of the MAML family have in common: the functional
view of an unmodified ``nn.Module`` (``torch.func.functional_call``), the support and query
losses, the BatchNorm policy, input checks and test-time adaptation. The work behind it lives in
seams that each say one thing: the update rule is a value (:mod:`mamlkit.core.inner_optim`), the
inner loop is one function (:mod:`mamlkit.core.inner_loop`), and how a meta-batch runs (vmap,
loop, chunks, compiled, task threads) is :mod:`mamlkit.core.execution`'s. An algorithm states
what is specific to it:

- ``inner_optimizer``: the rule adapted parameters move by (SGD here; learned per-element rates
  in Meta-SGD, per-step rates in MAML++, Adam in Reptile and iMAML);
- :meth:`MetaLearner.inner_problem`: what adapts, from which start, on which loss (the adapted
  parameters on the support loss here; the head on body features in ANIL);
- :meth:`MetaLearner.task_objective`: what one task contributes to the outer loss, as
  ``(loss, state, metrics)`` (query loss after adaptation here; multi-step loss in MAML++; a
  Reptile or implicit surrogate), and :meth:`MetaLearner.absorb` for the tasks' state;
- class-level declarations of what its objective supports (``task_threads_safe``,
  ``compiled_meta_gradient``, ``custom_support_loss``).

Everything works on parameter dicts, so the user's module is never cloned or patched.
See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.core.adaptation import adaptation_curve
from mamlkit.core.auto_compile import compile_mode
from mamlkit.core.batching import check_inner_lr
from mamlkit.core.execution import Execution, check_task_threads
from mamlkit.core.functional import FunctionalModel, check_model
from mamlkit.core.inner_checkpoint import checkpointed_inner_loop
from mamlkit.core.inner_loop import InnerProblem, InnerResult, inner_loop
from mamlkit.core.inner_optim import SGD, FixedRates, InnerOptimizer
from mamlkit.core.losses import LossFn, accuracy
from mamlkit.core.model_io import (
    ForwardFn,
    OutputSelector,
    unwrap_inference,
)
from mamlkit.core.params import (
    AdaptSelector,
    Params,
)
from mamlkit.tasks.base import TaskBatch

BATCHING_MODES = ("auto", "vmap", "loop")
"""How the tasks of a meta-batch are processed: ``vmap`` vectorises over tasks, ``loop`` runs
one task at a time, ``auto`` picks per model and device (see :meth:`MetaLearner.batching_for`)."""

Metrics = dict[str, Tensor]
TaskOutput = tuple[Tensor, Any, Metrics]
"""What :meth:`MetaLearner.task_objective` returns for one task: the outer loss, the auxiliary
task state (a pytree of tensors, ``{}`` for none; see :meth:`MetaLearner.absorb`) and metrics."""


class MetaLearner(FunctionalModel):
    """Gradient-based meta-learning over an unmodified ``nn.Module`` (the shared driver).

    Args:
        model: any ``nn.Module``; its parameters are the meta-parameters (the initialisation).
        inner_lr: inner-loop learning rate: a float (or 0-dim tensor) for all parameters, or a
            ``{name: float}`` dict covering every adapted parameter (any name of a tied one).
        inner_steps: gradient steps on the support set during meta-training (``>= 0``).
        first_order: drop the second-order term of the meta-gradient (FOMAML).
        loss: ``"mse"``, ``"cross_entropy"`` or ``loss(outputs, targets) -> scalar``.
        adapt: which parameters adapt in the inner loop (``None`` = all that require grad;
            names, prefixes or a predicate, matching any name of a tied parameter); the others
            are shared across tasks and only meta-learned (or frozen, without grad).
        batching: ``"auto"``, ``"vmap"`` or ``"loop"`` (see :data:`BATCHING_MODES`).
        chunk_size: process at most this many tasks at once in :meth:`meta_backward` to bound
            memory; gradients are accumulated and equal those of the whole batch.
        batchnorm: ``"transductive"`` (batch statistics everywhere, the paper's) or ``"module"``.
        eval_inner_steps: adaptation steps at test time (defaults to ``inner_steps``).
        compile: ``"auto"`` (the default), ``"on"`` (``True``) or ``"off"`` (``False``).
            Compiled, :meth:`meta_backward` differentiates the objective with
            ``torch.func.grad`` inside one ``torch.compile``d graph (forward, inner and outer
            backward, no autograd engine at run time), per batch under ``vmap`` and per task in
            the loop. ``"on"`` compiles on the first call for each input shape (seconds for an
            MLP, minutes for a CNN on a small CPU; :meth:`meta_loss` compiles the objective and
            backpropagates through it); ``"auto"`` runs eagerly and compiles the meta-gradient
            on a background thread once the same shapes keep coming back and the time still to
            come pays for it, then switches (:mod:`mamlkit.core.auto_compile`; it stays eager,
            saying why, where compiling cannot serve). Either falls back to eager on a compiler
            error. Compiled artifacts are cached across runs.
        task_threads: worker threads over which the compiled per-task loop spreads a batch's
            tasks on the CPU, each with one intra-op thread (see :meth:`task_threads_for`);
            ``None`` picks per batch, ``1`` keeps every task on the calling thread.
        forward: ``forward(model, x) -> outputs`` to call the model on one task's inputs; by
            default ``model(**x)`` for a dict and ``model(x)`` otherwise
            (:mod:`mamlkit.core.model_io`; inputs may be any pytree of tensors).
        output: which tensor of the model's outputs the loss and metrics use: ``None`` (a
            tensor, ``.logits`` of a Hugging Face output, else the first element), a key or
            attribute name, or a callable ``outputs -> tensor``.
        inner_loss: the loss of the inner loop (support set) if it differs from ``loss`` (which
            always scores the query set): a loss name, a robust one for noisy support sets
            (``"gce"``, ``"sce"``, ``"huber"``: :mod:`mamlkit.core.robust_losses`) or a callable.
        support_weights: ``"prototype"`` weights each support example of the inner loss by its
            agreement with its class prototype (:mod:`mamlkit.core.support_weights`, with a
            meta-learned temperature), a remedy for wrong support labels; ``"robust-prototype"``
            computes them once per task at the initialisation's features, by reweighted
            prototypes, and holds them fixed through the inner loop (the stronger remedy,
            ``docs/noise.md``); ``None``: equal weights.
        inner_checkpoint: keep the adapted parameters only every this many inner steps and
            recompute the steps between during the outer backward (0: off). The second-order
            meta-gradient is the same; the memory it holds no longer grows with the activations
            of every step (``benchmarks/inner_memory.py``), for about one more forward and
            inner backward pass per step. Plain gradient steps only (MAML, Meta-SGD, BOIL).
    """

    task_threads_safe: bool = True
    """Whether :meth:`task_objective` may run for several tasks at once on different threads
    (no state shared between calls; an algorithm that hooks into the model sets it False)."""

    inner_checkpointable: bool = True
    """Whether ``inner_checkpoint`` applies: the inner problem is the driver's (the adapted
    parameters on :meth:`support_loss`) moved by plain gradient steps. An algorithm with an inner
    problem of its own (ANIL, CAVIA, ProtoMAML, MAML++'s multi-step loss, ...) declares False."""

    compiled_meta_gradient: bool = True
    """Whether ``compile=True`` may differentiate the objective with ``torch.func.grad`` inside
    one compiled graph in :meth:`meta_backward`; otherwise the compiled objective is
    backpropagated by autograd (see ``compile``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float | Mapping[str, float] = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss: str | LossFn = "mse",
        adapt: AdaptSelector = None,
        batching: str = "auto",
        chunk_size: int | None = None,
        batchnorm: str = "transductive",
        eval_inner_steps: int | None = None,
        compile: bool | str = "auto",
        task_threads: int | None = None,
        forward: ForwardFn | None = None,
        output: OutputSelector = None,
        inner_loss: str | LossFn | None = None,
        support_weights: str | None = None,
        inner_checkpoint: int = 0,
    ) -> None:
        check_model(model)
        if not isinstance(inner_checkpoint, int) or isinstance(inner_checkpoint, bool) \
                or inner_checkpoint < 0:
            raise ValueError(f"inner_checkpoint must be an integer >= 0 (0: off; N: keep the "
                             f"parameters every N inner steps), got {inner_checkpoint!r}.")
        if inner_checkpoint and not self.inner_checkpointable:
            raise ValueError(f"{type(self).__name__} adapts through an inner problem of its own, "
                             "which inner_checkpoint cannot recompute; drop inner_checkpoint "
                             "(it applies to MAML, Meta-SGD and BOIL).")
        _check_steps("inner_steps", inner_steps)
        if eval_inner_steps is not None:
            _check_steps("eval_inner_steps", eval_inner_steps)
        if batching not in BATCHING_MODES:
            raise ValueError(f"Unknown batching {batching!r}; choose one of {BATCHING_MODES}.")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of tasks, got {chunk_size}.")
        mode = compile_mode(compile)
        check_task_threads(self, task_threads, mode)
        super().__init__(model, loss=loss, adapt=adapt, batchnorm=batchnorm, forward=forward,
                         output=output, inner_loss=inner_loss, support_weights=support_weights)
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order
        self.inner_lr = check_inner_lr(inner_lr, self.adapted_names, self.aliases)
        self.inner_optimizer: InnerOptimizer = SGD(FixedRates(self.inner_lr))
        if inner_checkpoint and getattr(self.support_objective, "at_start", False):
            raise ValueError("inner_checkpoint recomputes each step's support loss alone, but "
                             "support_weights='robust-prototype' weights it from the first "
                             "step's features; use support_weights='prototype' or drop "
                             "inner_checkpoint.")
        self.inner_checkpoint = inner_checkpoint
        self.batching = batching
        self.chunk_size = chunk_size
        self.compile_mode = mode
        self.task_threads = task_threads
        self.execution = Execution(self)

    # ------------------------------------------------------------------ the inner loop
    def inner_update(self, fast: Params, grads: Params, step: int) -> Params:
        """One step of a stateless ``inner_optimizer`` (SGD with fixed, learned or per-step
        rates), through which the inner loop routes such rules."""
        return self.inner_optimizer.update(grads, (), fast, step)[0]

    def inner_problem(self, params: Params, support_x: Any, support_y: Any, first_order: bool
                      ) -> InnerProblem:
        """What adapts, from where, on which loss, for one task (algorithm hook).

        Here: the adapted parameters start at ``params`` and follow :meth:`support_loss` with
        the other parameters fixed (detached under ``first_order``, whose gradients are
        constants); every step's parameters are the full dict. An algorithm may adapt something
        else (a head on body features, context parameters, a head built from prototypes) by
        returning another :class:`~mamlkit.core.inner_loop.InnerProblem`.
        """
        frozen = {n: p for n, p in params.items() if n not in self.adapted_names}
        frozen_inner = {n: p.detach() for n, p in frozen.items()} if first_order else frozen
        weights = self.start_weights(params, support_x, support_y, first_order)

        def loss(fast: Params, step: int) -> tuple[Tensor, dict]:
            return self.support_loss({**frozen_inner, **fast}, support_x, support_y, weights), {}

        return InnerProblem(start={n: params[n] for n in self.adapted_names}, loss=loss,
                            assemble=lambda fast, step: {**frozen, **fast})

    def run_inner_loop(self, params: Params, support_x: Any, support_y: Any, steps: int,
                       first_order: bool, keep_all: bool = True) -> InnerResult:
        """:meth:`inner_problem` adapted by ``inner_optimizer`` for ``steps`` steps through the
        package's one inner loop (:func:`mamlkit.core.inner_loop.inner_loop`)."""
        optimizer = self.inner_optimizer
        if self.inner_checkpoint and steps and not first_order and torch.is_grad_enabled():
            return self._checkpointed_inner_loop(params, support_x, support_y, steps)
        update = None
        if optimizer.stateless:
            def update(grads: Params, state: Any, fast: Params, step: int) -> tuple[Params, Any]:
                return self.inner_update(fast, grads, step), state
        return inner_loop(self.inner_problem(params, support_x, support_y, first_order),
                          optimizer, steps, first_order, update=update, keep_all=keep_all)

    def _checkpointed_inner_loop(self, params: Params, support_x: Any, support_y: Any,
                                 steps: int) -> InnerResult:
        """The driver's inner problem by ``steps`` SGD steps that keep only every
        ``inner_checkpoint``-th parameter set and recompute the rest in the outer backward
        (:func:`mamlkit.core.inner_checkpoint.checkpointed_inner_loop`: the same meta-gradient,
        memory flat in the number of steps)."""
        optimizer = self.inner_optimizer
        if not isinstance(optimizer, SGD):
            raise ValueError(f"inner_checkpoint recomputes plain gradient steps, but the inner "
                             f"optimizer is {type(optimizer).__name__}; drop inner_checkpoint.")
        if self.norms is not None and self.batchnorm == "module":
            raise ValueError("inner_checkpoint evaluates each support loss twice, which would "
                             "update BatchNorm's running statistics twice; use "
                             "batchnorm='transductive' or drop inner_checkpoint.")
        frozen = {n: p for n, p in params.items() if n not in self.adapted_names}
        fast = {n: params[n] for n in self.adapted_names}
        as_data = isinstance(support_x, Tensor) and isinstance(support_y, Tensor)

        def loss(all_params: Params, *data: Tensor) -> Tensor:
            x, y = data if as_data else (support_x, support_y)
            return self.support_loss(all_params, x, y)

        adapted, losses = checkpointed_inner_loop(
            loss, fast, frozen, optimizer.rates, steps,
            data=(support_x, support_y) if as_data else (), every=self.inner_checkpoint,
            preserve_rng_state=self.execution.draws_random)
        return InnerResult([params, {**frozen, **adapted}], losses)

    def inner_loop(self, params: Params, support_x: Any, support_y: Tensor, steps: int,
                   first_order: bool) -> tuple[list[Params], list[Tensor]]:
        """Adapt ``params`` to one task's support set.

        Returns the full parameter dicts after 0, 1, ..., ``steps`` updates and the support loss
        before each update. The graph back to ``params`` is kept unless ``first_order`` (then the
        inner gradients are treated as constants and no graph of the inner backward pass is
        recorded; the support losses carry no graph either) or autograd is off. Outside any
        ``torch.func`` transform the gradients come from ``torch.autograd.grad`` (same values).
        """
        result = self.run_inner_loop(params, support_x, support_y, steps, first_order)
        return result.trajectory, result.losses

    # ------------------------------------------------------------------ the outer objective
    def task_objective(
        self, params: Params, support_x: Any, support_y: Tensor, query_x: Any, query_y: Tensor
    ) -> TaskOutput:
        """One task's contribution to the outer loss, its auxiliary state and its metrics
        (algorithm hook; see :data:`TaskOutput`).

        MAML: adapt on the support set, score the adapted parameters on the query set.
        """
        trajectory, support_losses = self.inner_loop(
            params, support_x, support_y, self.inner_steps, self.first_order
        )
        loss, outputs = self.task_loss(trajectory[-1], query_x, query_y)
        return loss, {}, self.query_metrics(loss, outputs, query_y, support_losses)

    def absorb(self, state: Any) -> None:
        """Fold the tasks' auxiliary state (stacked ``[tasks, ...]``) into the learner after a
        batch's objective has run (algorithm hook; MAML++'s per-step BatchNorm statistics). No
        state here."""

    def query_metrics(
        self, loss: Tensor, outputs: Tensor, targets: Tensor, support_losses: list[Tensor]
    ) -> Metrics:
        """The standard metrics of one task: query loss, first support loss, query accuracy."""
        metrics = {"query_loss": loss.detach()}
        if support_losses:
            metrics["support_loss"] = support_losses[0].detach()
        if self.classification:
            metrics["query_accuracy"] = accuracy(outputs.detach(), targets)
        return metrics

    # ------------------------------------------------------------------ execution
    def batching_for(self, batch: TaskBatch) -> str:
        """The batching mode used for ``batch`` (:meth:`Execution.batching_for
        <mamlkit.core.execution.Execution.batching_for>`: ``auto`` picks per model and device)."""
        return self.execution.batching_for(batch)

    def batched_objective(self, batch: TaskBatch, mode: str | None = None) -> tuple[Tensor, Metrics]:
        """Per-task losses ``[tasks]`` and metrics for a batch, with the graph to the
        meta-params; the tasks' state is passed to :meth:`absorb`."""
        self._check_batch(batch)
        losses, state, metrics = self.execution.batched_objective(batch, mode)
        self.absorb(state)
        return losses, metrics

    def forward(self, support_x: Any, support_y: Tensor, query_x: Any, query_y: Tensor,
                batched: bool = True, with_state: bool = False) -> tuple[Tensor, ...]:
        """Outer losses and metrics (and the tasks' state, ``with_state``): per task
        (``[tasks]``, ``vmap``-ped) for a batch, or scalars for one task's tensors (no task
        dimension) when ``batched`` is False.

        The learner as a function of all its parameters (the model's and any the algorithm
        learns, such as Meta-SGD's rates), which is what the compiled meta-gradient
        differentiates through ``torch.func.functional_call``. Prefer :meth:`meta_loss` or
        :meth:`meta_backward`, which also check the batch and pick the batching mode.
        """
        losses, state, metrics = self.execution.eager_objective("vmap" if batched else "loop")(
            self.meta_params(), support_x, support_y, query_x, query_y)
        return (losses, state, metrics) if with_state else (losses, metrics)

    def task_threads_for(self, batch: TaskBatch) -> int:
        """How many worker threads :meth:`meta_backward` spreads ``batch``'s tasks over
        (:meth:`Execution.task_threads_for <mamlkit.core.execution.Execution.task_threads_for>`)."""
        return self.execution.task_threads_for(batch)

    def execution_summary(self, batch: TaskBatch) -> str:
        """How :meth:`meta_backward` runs ``batch``, in one line (printed when training starts):
        the batching mode, compiled or eager, and the task threads."""
        return self.execution.summary(batch)

    @property
    def use_compile(self) -> bool:
        """Whether everything is compiled from the first call (``compile="on"``)."""
        return self.compile_mode == "on"

    def expect_meta_batches(self, count: int | None) -> None:
        """Tell ``compile="auto"`` how many more meta-batches of the current shapes are coming
        (the trainer does, every iteration): it then compiles as soon as that pays, and never
        for a short run. ``None``: unknown (it judges from the time spent so far)."""
        if self.execution.auto is not None:
            self.execution.auto.meta_batches_left = count

    def compile_messages(self) -> list[str]:
        """Progress lines of ``compile="auto"`` since the last call (compile started, done or
        declined), for a trainer to print; also logged to the ``mamlkit.compile`` logger."""
        auto = self.execution.auto
        return auto.take_messages() if auto is not None else []

    @property
    def _compile_failed(self) -> bool:
        """Whether compiling failed (the learner has run eagerly since)."""
        return self.execution.compiled.failed

    @property
    def _compiled_meta_gradients(self) -> dict[tuple[str, bool], Callable[..., Any]]:
        """The compiled ``torch.func.grad`` functions by ``(mode, threaded)``."""
        return self.execution.compiled.gradients

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean outer loss over the batch's tasks (backprop it yourself) and mean metrics."""
        losses, metrics = self.batched_objective(batch)
        return losses.mean(), {k: float(v.mean()) for k, v in metrics.items()}

    def meta_backward(self, batch: TaskBatch, backward: Callable[[Tensor], Any] | None = None
                      ) -> dict[str, float]:
        """Accumulate the meta-gradient of the batch's mean loss into ``.grad``, ``chunk_size``
        tasks at a time (memory bounded by the chunk; the gradient equals that of
        ``meta_loss(batch)[0].backward()``), and return the mean metrics (``loss`` included).

        ``backward``: called with each chunk's share of the loss instead of ``Tensor.backward``
        (a framework's backward: Lightning's ``manual_backward``, Accelerate's); required inside
        a ``DistributedDataParallel`` forward. Details: :meth:`Execution.meta_backward
        <mamlkit.core.execution.Execution.meta_backward>`.
        """
        self._check_batch(batch)
        return self.execution.meta_backward(batch, backward)

    # ------------------------------------------------------------------ test-time adaptation
    def adapt(
        self,
        support_x: Any,
        support_y: Tensor,
        steps: int | None = None,
        params: Params | None = None,
        create_graph: bool = False,
    ) -> Params:
        """Adapted parameters for one task (no task dimension) after ``steps`` updates.

        By default no graph is built (memory stays flat in evaluation); ``create_graph=True``
        keeps the graph to the meta-parameters (used by RL's outer loop). Works under
        ``torch.inference_mode()`` too: the inner loop's gradients are computed outside it (on
        ordinary copies of inference-mode inputs), and the adapted parameters carry no graph.
        """
        steps = self.eval_inner_steps if steps is None else steps
        _check_steps("steps", steps)
        start = self.meta_params() if params is None else params
        if not create_graph:
            start = {n: p.detach() for n, p in start.items()}
        with torch.inference_mode(False), torch.set_grad_enabled(create_graph):
            trajectory, _ = self.inner_loop(unwrap_inference(start), unwrap_inference(support_x),
                                            unwrap_inference(support_y), steps,
                                            first_order=not create_graph)
        return trajectory[-1]

    def adapted_model(self, support_x: Any, support_y: Tensor, steps: int | None = None
                      ) -> Callable[[Any], Tensor]:
        """A callable ``x -> outputs`` of the model adapted to the given support set."""
        params = self.adapt(support_x, support_y, steps)
        return lambda x: self.predict(params, x)

    def adaptation_curve(self, batch: TaskBatch, steps: int) -> Metrics:
        """Query loss (and accuracy) after 0..``steps`` adaptation steps for every task.

        Returns tensors of shape ``[steps + 1, tasks]``; no graph is built (under
        ``torch.inference_mode()`` too). See :func:`mamlkit.core.adaptation.adaptation_curve`.
        """
        self._check_batch(batch)
        return adaptation_curve(self, batch, steps, self.batching_for(batch) == "vmap")


def _check_steps(name: str, steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {steps!r}.")


