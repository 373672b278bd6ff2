"""How a meta-batch is executed: ``vmap`` over tasks, a per-task loop or chunks of either, eager
or compiled, on one thread or on CPU task threads, with the fallbacks between them.

The choice is made from the learner's settings (``batching``, ``chunk_size``, ``compile``,
``task_threads``), from the model (what :mod:`~mamlkit.core.batching` says ``vmap`` cannot
batch, convolutions on the CPU) and from what the algorithm's class *declares* it supports
(:attr:`~mamlkit.core.learner.MetaLearner.task_threads_safe`,
:attr:`~mamlkit.core.learner.MetaLearner.compiled_meta_gradient`), never from which methods it
overrides. Measurements behind the choices: ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.utils._pytree import tree_map

from mamlkit.core.auto_compile import AutoCompile
from mamlkit.core.batching import (
    batch_norms,
    iterate_chunks,
    layer_vmap_blocker,
    refuse_vmap,
    running_stats_blocker,
)
from mamlkit.core.compiled import CompiledMetaGradient
from mamlkit.core.kernels import explain_kernel_error
from mamlkit.core.model_io import first_leaf, index_tree
from mamlkit.tasks.base import TaskBatch

if TYPE_CHECKING:
    from mamlkit.core.learner import MetaLearner

Metrics = dict[str, Tensor]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d)
_RANDOM_TYPES = (nn.modules.dropout._DropoutNd, nn.RReLU)


def check_task_threads(learner: MetaLearner, task_threads: int | None, compile: str) -> None:
    """``ValueError`` naming the fix when ``task_threads`` cannot apply to this learner."""
    if task_threads is None:
        return
    if not isinstance(task_threads, int) or isinstance(task_threads, bool) or task_threads < 1:
        raise ValueError(f"task_threads must be a positive integer or None (pick per batch), "
                         f"got {task_threads!r}.")
    if task_threads == 1:
        return
    if compile == "off":
        raise ValueError(
            f"task_threads={task_threads} spreads the compiled per-task meta-gradient over "
            "threads; pass compile=True or 'auto' (the eager loop holds Python's GIL for most "
            "of its time and would not run faster), or leave task_threads at None.")
    if not learner.task_threads_safe or not learner.compiled_meta_gradient:
        raise ValueError(
            f"{type(learner).__name__} cannot process tasks on several threads (its objective "
            "shares state between tasks); leave task_threads at None or 1.")


class Execution:
    """The execution of one learner's meta-batches: its settings are the learner's
    (``batching``, ``chunk_size``, ``compile_mode``, ``task_threads``, read at each call), the
    fallback flags, compile caches and the ``compile="auto"`` policy are kept here."""

    def __init__(self, learner: MetaLearner) -> None:
        model = learner.model
        self.learner = learner
        self.vmap_failed = False
        self.compiled = CompiledMetaGradient(learner)
        self.auto = AutoCompile(learner) if learner.compile_mode == "auto" else None
        # What the model's layers are is read once (every meta-batch asks); their modes are not.
        self.has_conv = any(isinstance(m, _CONV_TYPES) for m in model.modules())
        self.draws_random = any(isinstance(m, _RANDOM_TYPES) for m in model.modules())
        self.layer_blocker = layer_vmap_blocker(model)
        self.batch_norms = batch_norms(model)

    # ------------------------------------------------------------------ choices
    def batching_for(self, batch: TaskBatch) -> str:
        """The batching mode for ``batch``.

        ``auto`` picks ``vmap`` except for models that cannot be batched over tasks (RNNs,
        BatchNorm updating its running statistics: :mod:`mamlkit.core.batching`) and
        convolutional models on the CPU, where one task at a time (with PyTorch's fused
        normalisation kernels) is about as fast on small query sets, much faster on large ones,
        and needs a fraction of the memory (vmapped convolutions turn into grouped convolutions
        that the CPU kernels handle poorly, and every task's graph is alive at once); it falls
        back to ``loop`` for any model that ``vmap`` cannot handle.
        Measurements: ``docs/performance.md``.
        """
        if self.learner.batching == "loop":
            return "loop"
        blocker = self.layer_blocker or running_stats_blocker(self.batch_norms,
                                                              self.learner.batchnorm)
        if self.learner.batching == "vmap":
            if blocker is not None:
                raise ValueError(blocker)
            return "vmap"
        if self.vmap_failed or blocker is not None:
            return "loop"
        on_cpu = first_leaf(batch.support_x).device.type == "cpu"
        return "loop" if (self.has_conv and on_cpu) else "vmap"

    def uses_compiled_meta_gradient(self) -> bool:
        """Whether :meth:`meta_backward` takes the compiled ``torch.func.grad`` path: asked for
        (``compile=True``), not failed, and declared supported by the algorithm."""
        return (self.learner.use_compile and not self.compiled.failed
                and self.learner.compiled_meta_gradient)

    def may_compile_meta_gradient(self, batch: TaskBatch) -> bool:
        """Whether the compiled meta-gradient runs, or may run once ``compile="auto"`` has
        built it, for ``batch``."""
        if self.auto is None:
            return self.uses_compiled_meta_gradient()
        return self.auto.static_reason(batch) is None

    def compiled_backend(self, batch: TaskBatch, mode: str) -> CompiledMetaGradient | None:
        """The compiled meta-gradient to run ``batch`` with now, or None (eager)."""
        if self.uses_compiled_meta_gradient():
            return self.compiled
        return None if self.auto is None else self.auto.backend_for(batch, mode)

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
        learner = self.learner
        threads_failed = self.compiled.threads_failed or bool(self.auto and self.auto.threads_failed)
        if (learner.batching_for(batch) != "loop" or first_leaf(batch.query_y).device.type != "cpu"
                or not self.may_compile_meta_gradient(batch) or not learner.task_threads_safe
                or threads_failed):
            return 1
        if self.learner.task_threads is not None:
            return max(1, min(self.learner.task_threads, batch.num_tasks))
        module_norms = learner.norms is not None and learner.batchnorm == "module"
        hooked = has_hooks(learner.model) or learner.support_objective is not None
        if self.draws_random or module_norms or hooked:
            return 1
        return max(1, min(torch.get_num_threads(), batch.num_tasks))

    def summary(self, batch: TaskBatch) -> str:
        """The batching mode, compiled or eager, and the task threads, in one line."""
        mode = self.learner.batching_for(batch)
        parts = [f"batching {mode}"]
        if mode == "vmap" and self.learner.chunk_size and self.learner.chunk_size < batch.num_tasks:
            parts[0] += f" in chunks of {self.learner.chunk_size} tasks"
        if self.auto is not None:
            parts.append(self.auto.state(batch, mode))
        else:
            parts.append("compiled" if self.learner.use_compile and not self.compiled.failed
                         else "eager")
        threads = self.learner.task_threads_for(batch)
        if threads > 1:
            pending = self.auto is not None and self.compiled_backend(batch, mode) is None
            parts.append(f"on {threads} task threads{' once compiled' if pending else ''}")
        return ", ".join(parts)

    # ------------------------------------------------------------------ the objective
    def eager_objective(self, mode: str) -> Callable[..., tuple[Tensor, Any, Metrics]]:
        """``learner.task_objective`` over a batch (``vmap``) or one task (``loop``)."""
        if mode == "vmap":
            return vmap(self.learner.task_objective, in_dims=(None, 0, 0, 0, 0),
                        randomness="different")
        return self.learner.task_objective

    def objective(self, mode: str) -> Callable[..., tuple[Tensor, Any, Metrics]]:
        """:meth:`eager_objective`, compiled if asked."""
        eager = self.eager_objective(mode)
        return self.compiled.objective(mode, eager) if self.learner.use_compile else eager

    def batched_objective(self, batch: TaskBatch, mode: str | None = None
                          ) -> tuple[Tensor, Any, Metrics]:
        """Per-task losses ``[tasks]``, task states and metrics, with the graph to the
        meta-parameters; ``vmap`` falls back to the loop under ``batching="auto"``."""
        learner = self.learner
        mode = mode or self.learner.batching_for(batch)
        params = learner.meta_params()
        args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        if self.learner.use_compile and learner.norms is not None:
            learner.norms.vmapped = mode == "vmap"  # read by compiled code, no stack lookup
        if mode == "vmap":
            try:
                return self.objective("vmap")(params, *args)
            except (ValueError, TypeError):
                raise  # bad input: the same in the loop, said by the check that raised it
            except Exception as error:  # noqa: BLE001 - auto: any failure under vmap -> loop
                if self.learner.batching != "auto":
                    raise refuse_vmap(error) from error
                warnings.warn(
                    f"torch.func.vmap cannot batch this model over tasks ({type(error).__name__}: "
                    f"{error}); falling back to a per-task loop. Pass batching='loop' to skip "
                    "the attempt.", RuntimeWarning, stacklevel=3)
                self.vmap_failed = True
        objective = self.objective("loop")
        results = [objective(params, *(index_tree(a, i) for a in args))
                   for i in range(batch.num_tasks)]
        return stack_results(results)

    # ------------------------------------------------------------------ the meta-gradient
    def meta_backward(self, batch: TaskBatch, backward: Callable[[Tensor], Any] | None
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
        learner = self.learner
        total = batch.num_tasks
        mode = self.learner.batching_for(batch)
        chunks = list(iterate_chunks(batch, 1 if mode == "loop" else (self.learner.chunk_size or total)))
        ddp = _active_ddp_module()
        if ddp is not None and backward is None:
            raise RuntimeError(
                "meta_backward runs inside a DistributedDataParallel forward (e.g. a Lightning "
                "training_step under DDP), where a plain backward pass bypasses DDP's gradient "
                "reduction and the processes would silently diverge. Pass the framework's "
                "backward (meta_backward(batch, backward=self.manual_backward)), or return "
                "meta_loss(batch)[0] from the step instead.")
        compiled: list[Any] = [None] * len(chunks)
        backend = self.compiled_backend(batch, mode) if backward is None else None
        watching = self.auto is not None and backend is None and backward is None
        # Task threads serve the compiled path only (and auto's compile for it).
        threads = self.learner.task_threads_for(batch) if backend is not None or watching else 1
        tick = time.perf_counter()
        if backend is not None:
            compiled = backend.backward(chunks, 1.0 / total, mode, threads)
        sums: dict[str, float] = {}
        for index, (chunk, result) in enumerate(zip(chunks, compiled)):
            if result is None:
                try:
                    losses, metrics = learner.batched_objective(chunk)
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
                losses, state, metrics = result
                learner.absorb(state)
            for k, v in {"loss": losses.detach(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
        if watching:
            self.auto.observe(batch, chunks, mode, threads, time.perf_counter() - tick)
        return {k: v / total for k, v in sums.items()}


def stack_results(results: list[tuple[Tensor, Any, Metrics]]) -> tuple[Tensor, Any, Metrics]:
    """Per-task ``(loss, state, metrics)`` stacked along a new first (task) dimension."""
    losses = torch.stack([loss for loss, _, _ in results])
    states = tree_map(lambda *values: torch.stack(values), *[s for _, s, _ in results])
    metrics = {k: torch.stack([m[k] for _, _, m in results]) for k in results[0][2]}
    return losses, states, metrics


def has_hooks(module: nn.Module) -> bool:
    """Whether any submodule has forward or backward hooks registered."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in module.modules())


def _active_ddp_module() -> nn.Module | None:
    """The ``DistributedDataParallel`` module whose forward is running, if any (DDP records it)."""
    from torch.nn.parallel import DistributedDataParallel

    return getattr(DistributedDataParallel, "_active_ddp_module", None)
