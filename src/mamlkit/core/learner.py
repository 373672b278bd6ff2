"""The shared driver of every gradient-based meta-learning algorithm.

:class:`MetaLearner` owns what all algorithms of the MAML family have in common: the functional
view of an unmodified ``nn.Module`` (``torch.func.functional_call``), the inner loop, first- vs
second-order meta-gradients, batching over tasks (``torch.func.vmap``, a per-task loop, or chunks
of either), the BatchNorm policy and test-time adaptation. An algorithm subclasses it and
overrides only what is specific to it:

- :meth:`MetaLearner.inner_update`: how adapted parameters move given their gradients
  (plain SGD here; learned per-element rates in Meta-SGD, per-step rates in MAML++);
- :meth:`MetaLearner.task_objective`: what one task contributes to the outer loss
  (query loss after adaptation here; multi-step loss in MAML++; a Reptile or implicit surrogate).

Everything works on parameter dicts, so the user's module is never cloned or patched.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from mamlkit.core.adaptation import adaptation_curve
from mamlkit.core.batching import (
    check_inner_lr,
    iterate_chunks,
    refuse_vmap,
    vmap_blocker,
)
from mamlkit.core.gradients import autograd_grad_and_value, functorch_grad_and_value
from mamlkit.core.kernels import DifferentiableKernels, explain_kernel_error, kernel_needs
from mamlkit.core.losses import LossFn, accuracy, is_classification, resolve_loss
from mamlkit.core.model_io import (
    ForwardFn,
    OutputSelector,
    call_model,
    describe,
    first_leaf,
    index_tree,
    select_output,
    shape_key,
    unwrap_inference,
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
from mamlkit.core.task_threads import map_interleaved
from mamlkit.core.transforms import plain_autograd_available
from mamlkit.tasks.base import TaskBatch

BATCHING_MODES = ("auto", "vmap", "loop")
"""How the tasks of a meta-batch are processed: ``vmap`` vectorises over tasks, ``loop`` runs
one task at a time, ``auto`` picks per model and device (see :meth:`MetaLearner.batching_for`)."""

Metrics = dict[str, Tensor]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d)
_RANDOM_TYPES = (nn.modules.dropout._DropoutNd, nn.RReLU)


class MetaLearner(nn.Module):
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
        compile: ``torch.compile`` the meta-gradient: :meth:`meta_backward` differentiates the
            objective with ``torch.func.grad`` inside one compiled graph (forward, inner and outer
            backward, no autograd engine at run time), per batch under ``vmap`` and per task in
            the loop; :meth:`meta_loss` compiles the objective and backpropagates through it.
            Compiles once per input shape, on the first call (seconds for an MLP, one to a few
            minutes for a CNN on a small CPU); if compilation fails the learner warns and runs
            eagerly.
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
            meta-learned temperature), a remedy for wrong support labels; ``None``: equal weights.
    """

    custom_support_loss: bool = True
    """Whether the inner loop takes its loss from :meth:`support_loss`, so that ``inner_loss``
    and ``support_weights`` apply (ANIL and MAML++ compute their own)."""

    task_threads_safe: bool = True
    """Whether :meth:`task_objective` may run for several tasks at once on different threads
    (no state shared between calls; an algorithm that hooks into the model sets it False)."""

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
        compile: bool = False,
        task_threads: int | None = None,
        forward: ForwardFn | None = None,
        output: OutputSelector = None,
        inner_loss: str | LossFn | None = None,
        support_weights: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise ValueError(
                "The model is wrapped in DistributedDataParallel, whose reducer cannot follow the "
                "inner loop's functional parameters. Wrap the learner instead: MAML(model), then "
                "DDP, Lightning (mamlkit.integrations.lightning) or Accelerate around it; or run "
                "mamlkit train under torchrun.")
        _check_steps("inner_steps", inner_steps)
        if eval_inner_steps is not None:
            _check_steps("eval_inner_steps", eval_inner_steps)
        if batching not in BATCHING_MODES:
            raise ValueError(f"Unknown batching {batching!r}; choose one of {BATCHING_MODES}.")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of tasks, got {chunk_size}.")
        self._check_task_threads(task_threads, compile)
        self.model = model
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = resolve_loss(loss)
        self.classification = is_classification(loss)
        self.batching = batching
        self.chunk_size = chunk_size
        self.batchnorm = check_policy(batchnorm)
        self.forward_fn = forward
        self.output = output
        self.aliases = parameter_aliases(model)
        self.adapted_names = select_names(named_params(model), adapt, self.aliases)
        self.inner_lr = check_inner_lr(inner_lr, self.adapted_names, self.aliases)
        self._norm_mode = (ComposableNorms(batchnorm == "transductive")
                           if has_norm_layers(model) else None)
        needs = kernel_needs(model)
        self._kernels = DifferentiableKernels(needs) if needs else None
        self._has_conv = any(isinstance(m, _CONV_TYPES) for m in model.modules())
        self._draws_random = any(isinstance(m, _RANDOM_TYPES) for m in model.modules())
        self.task_threads = task_threads
        self._warm_compiled: set[tuple] = set()
        self._threads_failed = False
        self._vmap_failed = False
        self._checked_shapes: set[tuple] = set()
        self.use_compile = bool(compile)
        self._compiled: dict[str, Callable[..., tuple[Tensor, Metrics]]] = {}
        self._compile_failed = False
        self._compiled_meta_gradients: dict[str, Callable[..., Any]] = {}
        self.inner_loss_name = inner_loss if isinstance(inner_loss, str) or inner_loss is None \
            else getattr(inner_loss, "__name__", "custom")
        self.support_objective: SupportLoss | None = support_loss_for(
            model, self.loss_name, inner_loss, support_weights, self.custom_support_loss,
            type(self).__name__)

    # ------------------------------------------------------------------ functional building blocks
    def meta_params(self) -> Params:
        """The model's parameters (the meta-learned initialisation) as a name -> tensor dict."""
        return named_params(self.model)

    def functional_forward(self, params: Params, x: Any, buffers: Params | None = None) -> Any:
        """Run the user's model on ``x`` (one task's inputs, any pytree of tensors) with
        ``params`` in place of its own, with ``buffers`` (default: the module's), and with the
        kernels it needs routed to exactly differentiable ones (:mod:`mamlkit.core.kernels`)."""
        buffers = named_buffers(self.model) if buffers is None else buffers
        if self._norm_mode is not None and self.batchnorm == "transductive":
            # Batch statistics only: BatchNorm's step counter is hidden (None for the call), so
            # nothing is mutated inside a transform.
            buffers = {n: None if n.endswith("num_batches_tracked") else b
                       for n, b in buffers.items()}
        return self.run_model(params, buffers, x, self._norm_mode)

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

    def support_loss(self, params: Params, x: Any, y: Any) -> Tensor:
        """The inner loop's loss of one task's support examples under ``params``: the task loss,
        or ``inner_loss`` / ``support_weights`` where given (:class:`SupportLoss`)."""
        if self.support_objective is None:
            return self.task_loss(params, x, y)[0]
        loss = self.support_objective(
            self.model, lambda: select_output(self.functional_forward(params, x), self.output), y)
        return _scalar_loss(loss)

    def inner_lrs(self, step: int) -> Mapping[str, float | Tensor]:
        """Learning rate of each adapted parameter at inner step ``step`` (algorithm hook)."""
        return self.inner_lr

    def inner_update(self, fast: Params, grads: Params, step: int) -> Params:
        """One inner-loop update of the adapted parameters (algorithm hook; SGD here)."""
        lrs = self.inner_lrs(step)
        return {name: value - lrs[name] * grads[name] for name, value in fast.items()}

    def inner_loop(
        self,
        params: Params,
        support_x: Any,
        support_y: Tensor,
        steps: int,
        first_order: bool,
    ) -> tuple[list[Params], list[Tensor]]:
        """Adapt ``params`` to one task's support set.

        Returns the full parameter dicts after 0, 1, ..., ``steps`` updates and the support loss
        before each update. The graph back to ``params`` is kept unless ``first_order`` (then the
        inner gradients are treated as constants) or autograd is off.

        Under ``first_order`` the gradients are computed on detached parameters, so no graph of
        the inner backward pass is recorded at all (the same constants, at the cost of a plain
        backward pass); the support losses returned then carry no graph either. Outside any
        ``torch.func`` transform (the per-task loop) the gradients come from
        ``torch.autograd.grad``, which skips functorch's wrapping of every tensor (same values).
        """
        frozen = {n: p for n, p in params.items() if n not in self.adapted_names}
        fast = {n: params[n] for n in self.adapted_names}
        if first_order:
            frozen_inner = {n: p.detach() for n, p in frozen.items()}
        else:
            frozen_inner = frozen

        def support_loss(fast_params: Params) -> Tensor:
            return self.support_loss({**frozen_inner, **fast_params}, support_x, support_y)

        trajectory = [params]
        losses = []
        gradient = autograd_grad_and_value if plain_autograd_available() else functorch_grad_and_value
        for step in range(steps):
            if first_order:
                grads, loss = gradient(support_loss, {n: p.detach() for n, p in fast.items()})
            else:
                grads, loss = gradient(support_loss, fast)
            fast = self.inner_update(fast, grads, step)
            trajectory.append({**frozen, **fast})
            losses.append(loss)
        return trajectory, losses

    def task_objective(
        self, params: Params, support_x: Any, support_y: Tensor, query_x: Any, query_y: Tensor
    ) -> tuple[Tensor, Metrics]:
        """One task's contribution to the outer loss, and its metrics (algorithm hook).

        MAML: adapt on the support set, score the adapted parameters on the query set.
        """
        trajectory, support_losses = self.inner_loop(
            params, support_x, support_y, self.inner_steps, self.first_order
        )
        loss, outputs = self.task_loss(trajectory[-1], query_x, query_y)
        return loss, self._metrics(loss, outputs, query_y, support_losses)

    def _metrics(
        self, loss: Tensor, outputs: Tensor, targets: Tensor, support_losses: list[Tensor]
    ) -> Metrics:
        metrics = {"query_loss": loss.detach()}
        if support_losses:
            metrics["support_loss"] = support_losses[0].detach()
        if self.classification:
            metrics["query_accuracy"] = accuracy(outputs.detach(), targets)
        return metrics

    # ------------------------------------------------------------------ batching over tasks
    def batching_for(self, batch: TaskBatch) -> str:
        """The batching mode used for ``batch``.

        ``auto`` picks ``vmap`` except for models that cannot be batched over tasks (RNNs,
        BatchNorm updating its running statistics: :func:`~mamlkit.core.batching.vmap_blocker`)
        and convolutional models on the CPU, where one task at a
        time (with PyTorch's fused normalisation kernels) is about as fast on small query sets,
        much faster on large ones, and needs a fraction of the memory (vmapped convolutions turn
        into grouped convolutions that the CPU kernels handle poorly, and every task's graph is
        alive at once); it falls back to ``loop`` for any model that ``vmap`` cannot handle.
        Measurements: ``docs/performance.md``.
        """
        if self.batching == "loop":
            return "loop"
        blocker = vmap_blocker(self.model, self.batchnorm)
        if self.batching == "vmap":
            if blocker is not None:
                raise ValueError(blocker)
            return "vmap"
        if self._vmap_failed or blocker is not None:
            return "loop"
        on_cpu = first_leaf(batch.support_x).device.type == "cpu"
        return "loop" if (self._has_conv and on_cpu) else "vmap"

    def batched_objective(self, batch: TaskBatch, mode: str | None = None) -> tuple[Tensor, Metrics]:
        """Per-task losses ``[tasks]`` and metrics for a batch, with the graph to the meta-params."""
        self._check_batch(batch)
        mode = mode or self.batching_for(batch)
        params = self.meta_params()
        args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        if self.use_compile and self._norm_mode is not None:
            self._norm_mode.vmapped = mode == "vmap"  # read by compiled code, no stack lookup
        if mode == "vmap":
            try:
                return self._objective("vmap")(params, *args)
            except (ValueError, TypeError):
                raise  # bad input: the same in the loop, said by the check that raised it
            except Exception as error:  # noqa: BLE001 - auto: any failure under vmap -> loop
                if self.batching != "auto":
                    raise refuse_vmap(error) from error
                warnings.warn(
                    f"torch.func.vmap cannot batch this model over tasks ({type(error).__name__}: "
                    f"{error}); falling back to a per-task loop. Pass batching='loop' to skip "
                    "the attempt.", RuntimeWarning, stacklevel=2)
                self._vmap_failed = True
        objective = self._objective("loop")
        results = [objective(params, *(index_tree(a, i) for a in args))
                   for i in range(batch.num_tasks)]
        losses = torch.stack([loss for loss, _ in results])
        metrics = {k: torch.stack([m[k] for _, m in results]) for k in results[0][1]}
        return losses, metrics

    def _eager_objective(self, mode: str) -> Callable[..., tuple[Tensor, Metrics]]:
        """``task_objective`` over a batch (``vmap``) or one task (``loop``)."""
        if mode == "vmap":
            return vmap(self.task_objective, in_dims=(None, 0, 0, 0, 0), randomness="different")
        return self.task_objective

    def _objective(self, mode: str) -> Callable[..., tuple[Tensor, Metrics]]:
        """:meth:`_eager_objective`, compiled if asked."""
        eager = self._eager_objective(mode)
        if not self.use_compile or self._compile_failed:
            return eager
        if mode not in self._compiled:
            compiled = _compile(eager, self._device())

            def run(*args: Any) -> tuple[Tensor, Metrics]:
                if self._compile_failed:
                    return eager(*args)
                try:
                    return compiled(*args)
                except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly
                    self._warn_compile_failure(error)
                    return eager(*args)

            self._compiled[mode] = run
        return self._compiled[mode]

    def forward(self, support_x: Any, support_y: Tensor, query_x: Any, query_y: Tensor,
                batched: bool = True) -> tuple[Tensor, Metrics]:
        """Outer losses and metrics: per task (``[tasks]``, ``vmap``-ped) for a batch, or scalars
        for one task's tensors (no task dimension) when ``batched`` is False.

        The learner as a function of all its parameters (the model's and any the algorithm
        learns, such as Meta-SGD's rates), which is what the compiled meta-gradient
        differentiates through ``torch.func.functional_call``. Prefer :meth:`meta_loss` or
        :meth:`meta_backward`, which also check the batch and pick the batching mode.
        """
        return self._eager_objective("vmap" if batched else "loop")(
            self.meta_params(), support_x, support_y, query_x, query_y)

    def _uses_compiled_meta_gradient(self) -> bool:
        """Whether :meth:`meta_backward` takes the compiled ``torch.func.grad`` path: asked for
        (``compile=True``) and the algorithm keeps the shared batching (an override of
        :meth:`batched_objective`, such as MAML++'s running statistics, needs the autograd path)."""
        return self.use_compile and not self._compile_failed and self._keeps_shared_batching()

    @classmethod
    def _keeps_shared_batching(cls) -> bool:
        """Whether the algorithm uses the driver's :meth:`batched_objective` (MAML++ does not)."""
        return cls.batched_objective is MetaLearner.batched_objective

    def task_threads_for(self, batch: TaskBatch) -> int:
        """How many worker threads :meth:`meta_backward` spreads ``batch``'s tasks over.

        Only the compiled meta-gradient of the per-task loop on the CPU runs on several threads:
        it spends its time in kernels that release Python's GIL, while the eager loop holds the
        GIL for most of its autograd and Python work. One task's small kernels keep one core
        busy but split poorly over two (PyTorch's own intra-op threads make a few-shot CNN step
        1.0-1.6x faster on two cores); whole tasks per core make it 1.9-2.2x faster
        (docs/performance.md). The threads' graph must compile whole (``fullgraph``: Python run
        between graphs would share the module between threads); if it does not, the learner
        warns and keeps the tasks on one thread. With ``task_threads=None`` the learner uses
        ``torch.get_num_threads()`` workers, unless the model draws random numbers (dropout: the
        draws would depend on the threads' timing), carries hooks, or has normalisation layers
        under the ``module`` policy (running statistics): state that threads would share. An
        explicit count applies as given. Either is capped at the number of tasks.
        """
        if (self.batching_for(batch) != "loop" or first_leaf(batch.query_y).device.type != "cpu"
                or not self._uses_compiled_meta_gradient() or not self.task_threads_safe
                or self._threads_failed):
            return 1
        if self.task_threads is not None:
            return max(1, min(self.task_threads, batch.num_tasks))
        module_norms = self._norm_mode is not None and self.batchnorm == "module"
        hooked = _has_hooks(self.model) or self.support_objective is not None  # per-call hooks
        if self._draws_random or module_norms or hooked:
            return 1
        return max(1, min(torch.get_num_threads(), batch.num_tasks))

    def execution_summary(self, batch: TaskBatch) -> str:
        """How :meth:`meta_backward` runs ``batch``, in one line (printed when training starts):
        the batching mode, compiled or eager, and the task threads."""
        mode = self.batching_for(batch)
        parts = [f"batching {mode}"]
        if mode == "vmap" and self.chunk_size and self.chunk_size < batch.num_tasks:
            parts[0] += f" in chunks of {self.chunk_size} tasks"
        parts.append("compiled" if self.use_compile and not self._compile_failed else "eager")
        threads = self.task_threads_for(batch)
        if threads > 1:
            parts.append(f"on {threads} task threads")
        return ", ".join(parts)

    def _compiled_gradient(self, chunk: TaskBatch, trainable: Params, factor: Tensor, mode: str,
                           threaded: bool) -> tuple[Params, Tensor, Metrics] | None:
        """``factor`` times the gradient of the chunk's summed losses with respect to every
        trainable parameter (``trainable``: their detached values), from one compiled call of
        ``torch.func.grad`` (see ``compile`` in the class docstring), and the chunk's losses and
        metrics; under ``loop`` the chunk is one task. ``threaded`` selects the variant compiled
        for worker threads. None, after a warning, if compilation failed (for that variant only,
        if ``threaded``)."""
        batched = mode == "vmap"
        key = (mode, threaded)
        if key not in self._compiled_meta_gradients:
            def scaled_loss(trainable: Params, factor: Tensor, *args: Any
                            ) -> tuple[Tensor, tuple[Tensor, Metrics]]:
                losses, metrics = functional_call(self, trainable, args, {"batched": batched},
                                                  strict=False)
                return losses.sum() * factor.to(losses.dtype), (losses.detach(), metrics)

            self._compiled_meta_gradients[key] = _compile(
                grad_and_value(scaled_loss, has_aux=True), self._device(), worker_threads=threaded)
        args = (chunk.support_x, chunk.support_y, chunk.query_x, chunk.query_y)
        if not batched:
            args = tuple(index_tree(a, 0) for a in args)
        try:
            grads, (_, (losses, metrics)) = self._compiled_meta_gradients[key](
                trainable, factor, *args)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly
            if threaded:
                warnings.warn(
                    f"The meta-gradient cannot be compiled as one graph for worker threads "
                    f"({type(error).__name__}: {error}); running its tasks on one thread. Pass "
                    "task_threads=1 to skip the attempt.", RuntimeWarning, stacklevel=2)
                self._threads_failed = True
            else:
                self._warn_compile_failure(error)
            return None
        return grads, losses, metrics

    def _compiled_meta_backward(self, chunks: list[TaskBatch], scale: float, mode: str,
                                threads: int) -> list[tuple[Tensor, Metrics] | None]:
        """Add ``scale`` times the gradient of every chunk's summed losses to ``.grad`` through
        :meth:`_compiled_gradient`, on ``threads`` worker threads if more than one, and return
        each chunk's losses and metrics; None for a chunk that could not be compiled (nothing of
        it was accumulated: the caller runs it eagerly)."""
        if self._norm_mode is not None:
            self._norm_mode.vmapped = mode == "vmap"  # read by compiled code, no stack lookup
        trainable = {n: p for n, p in self.named_parameters() if p.requires_grad}
        detached = {n: p.detach() for n, p in trainable.items()}
        dtype = next(iter(trainable.values())).dtype if trainable else torch.get_default_dtype()
        device = first_leaf(chunks[0].query_y).device
        factor = torch.tensor(scale, dtype=dtype, device=device)  # a tensor, not a constant
        threaded = threads > 1

        def run(indices: list[int]) -> tuple[Params | None, dict[int, tuple[Tensor, Metrics]]]:
            """Gradient summed over the given chunks (in order), and their losses and metrics."""
            total: Params | None = None
            done: dict[int, tuple[Tensor, Metrics]] = {}
            for index in indices:
                result = (self._compiled_gradient(chunks[index], detached, factor, mode, threaded)
                          if not self._compile_failed else None)
                if result is None:
                    continue
                grads, losses, metrics = result
                if total is None:
                    total = grads
                else:
                    for name, gradient in grads.items():
                        total[name].add_(gradient)
                done[index] = (losses, metrics)
            return total, done

        indices = list(range(len(chunks)))
        if not threaded:
            shares = [run(indices)]
        else:
            # The first call of a compiled function compiles it: alone, never on two threads.
            first = chunks[0]
            key = (mode, dtype, *(shape_key(a) for a in (
                first.support_x, first.support_y, first.query_x, first.query_y)))
            shares = []
            if key not in self._warm_compiled:
                shares += map_interleaved(run, indices[:1], threads)  # one share: one worker
                if self._threads_failed:  # nothing was accumulated: all tasks on one thread
                    return self._compiled_meta_backward(chunks, scale, mode, 1)
                indices = indices[1:]
                self._warm_compiled.add(key)
            shares += map_interleaved(run, indices, threads)
        results: list[tuple[Tensor, Metrics] | None] = [None] * len(chunks)
        for total, done in shares:
            for name, gradient in (total or {}).items():
                parameter = trainable[name]
                if parameter.grad is None:
                    parameter.grad = gradient
                else:
                    parameter.grad.add_(gradient)
            for index, result in done.items():
                results[index] = result
        return results

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _warn_compile_failure(self, error: Exception) -> None:
        warnings.warn(
            f"torch.compile could not compile the meta-objective ({type(error).__name__}:"
            f" {error}); running it eagerly. Pass compile=False to skip the attempt.",
            RuntimeWarning, stacklevel=4)
        self._compile_failed = True

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Mean outer loss over the batch's tasks (backprop it yourself) and mean metrics."""
        losses, metrics = self.batched_objective(batch)
        return losses.mean(), {k: float(v.mean()) for k, v in metrics.items()}

    def meta_backward(self, batch: TaskBatch, backward: Callable[[Tensor], Any] | None = None
                      ) -> dict[str, float]:
        """Accumulate the meta-gradient of the batch's mean loss into ``.grad``.

        Tasks are processed ``chunk_size`` at a time with one backward pass per chunk, so memory
        is bounded by the chunk, not the meta-batch; the accumulated gradient equals that of
        ``meta_loss(batch)[0].backward()``. Under the per-task loop each task is backpropagated
        as soon as it is computed (the same work, but only one task's graph is alive at a time),
        compiled on :meth:`task_threads_for` worker threads. Returns the mean metrics (``loss``
        included).

        ``backward``: called with each chunk's share of the loss instead of ``Tensor.backward``,
        so a training framework does the backward pass (``self.manual_backward`` in Lightning,
        ``accelerator.backward`` in Accelerate: loss scaling, DDP's gradient reduction); the
        autograd path is then taken even when compiled (the objective itself stays compiled).
        Inside a ``DistributedDataParallel`` forward (a Lightning ``training_step`` under DDP)
        every chunk but the last runs under ``no_sync``, so DDP reduces the summed gradient
        once; there a plain backward would bypass DDP's reducer and the processes would
        diverge, so ``backward`` is required. Outside one (``mamlkit.train``, the Accelerate
        recipe) the caller reduces ``.grad`` across processes itself.
        """
        total = batch.num_tasks
        self._check_batch(batch)
        mode = self.batching_for(batch)
        chunks = list(iterate_chunks(batch, 1 if mode == "loop" else (self.chunk_size or total)))
        ddp = _active_ddp_module()
        if ddp is not None and backward is None:
            raise RuntimeError(
                "meta_backward runs inside a DistributedDataParallel forward (e.g. a Lightning "
                "training_step under DDP), where a plain backward pass bypasses DDP's gradient "
                "reduction and the processes would silently diverge. Pass the framework's "
                "backward (meta_backward(batch, backward=self.manual_backward)), or return "
                "meta_loss(batch)[0] from the step instead.")
        results: list[tuple[Tensor, Metrics] | None] = [None] * len(chunks)
        if self._uses_compiled_meta_gradient() and backward is None:
            results = self._compiled_meta_backward(chunks, 1.0 / total, mode,
                                                   self.task_threads_for(batch))
        sums: dict[str, float] = {}
        for index, (chunk, result) in enumerate(zip(chunks, results)):
            if result is None:
                try:
                    losses, metrics = self.batched_objective(chunk)
                    share = losses.sum() / total
                    if backward is None:
                        share.backward()
                    else:  # DDP reduces once, on the last chunk (no_sync accumulates before it)
                        last = index == len(chunks) - 1
                        with contextlib.nullcontext() if ddp is None or last else ddp.no_sync():
                            backward(share)
                except RuntimeError as error:
                    explained = explain_kernel_error(error)
                    if explained is None:
                        raise
                    raise explained from error
            else:
                losses, metrics = result
            for k, v in {"loss": losses.detach(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
        return {k: v / total for k, v in sums.items()}

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

    def predict(self, params: Params, x: Any) -> Any:
        """Model outputs for ``x`` under (adapted) ``params`` (as the model returns them)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and _requires_grad(params)):
            return self.functional_forward(params, x)

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

    # ------------------------------------------------------------------ checks
    def _check_task_threads(self, task_threads: int | None, compile: bool) -> None:
        if task_threads is None:
            return
        if not isinstance(task_threads, int) or isinstance(task_threads, bool) or task_threads < 1:
            raise ValueError(f"task_threads must be a positive integer or None (pick per batch), "
                             f"got {task_threads!r}.")
        if task_threads == 1:
            return
        if not compile:
            raise ValueError(
                f"task_threads={task_threads} spreads the compiled per-task meta-gradient over "
                "threads; pass compile=True as well (the eager loop holds Python's GIL for most "
                "of its time and would not run faster), or leave task_threads at None.")
        if not self.task_threads_safe or not self._keeps_shared_batching():
            raise ValueError(
                f"{type(self).__name__} cannot process tasks on several threads (its objective "
                "shares state between tasks); leave task_threads at None or 1.")

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
        self._checked_shapes.add(key)


def _compile(fn: Callable[..., Any], device: torch.device, worker_threads: bool = False
             ) -> Callable[..., Any]:
    """``torch.compile`` for one input shape; on the CPU without Inductor's channels-last layout
    choice for convolutions, which makes the small-batch convolution backward passes of the inner
    loop slower (W2: 17-18 instead of 20-21 ms per task; docs/performance.md).

    ``worker_threads``: for calls on several threads at once (:mod:`mamlkit.core.task_threads`):
    one graph or an error (no Python between graphs, which would share the module between
    threads), single-threaded kernels, and the graph run from C++ (``cpp_wrapper``) rather than
    from a Python function that would hold the GIL between kernels (W3 on two workers: 170
    instead of 270 ms per meta-iteration).
    """
    if device.type != "cpu":
        return torch.compile(fn, dynamic=False)
    if not worker_threads:
        return torch.compile(fn, dynamic=False, options={"layout_optimization": False})
    return torch.compile(fn, dynamic=False, fullgraph=True, options={
        "layout_optimization": False, "cpp_wrapper": True, "cpp.threads": 1})


def _check_steps(name: str, steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {steps!r}.")


def _scalar_loss(loss: Any) -> Tensor:
    """``loss`` if it is a scalar tensor, else ``ValueError`` with the fix."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"The loss must return a scalar tensor per task, got {shape}. Reduce it (e.g. "
            "with .mean()) over the task's examples."
        )
    return loss


def _has_hooks(module: nn.Module) -> bool:
    """Whether any submodule has forward or backward hooks registered."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in module.modules())


def _active_ddp_module() -> nn.Module | None:
    """The ``DistributedDataParallel`` module whose forward is running, if any (DDP records it)."""
    from torch.nn.parallel import DistributedDataParallel

    return getattr(DistributedDataParallel, "_active_ddp_module", None)


def _requires_grad(params: Params) -> bool:
    return any(p.requires_grad for p in params.values())
