"""``torch.compile`` of the meta-objective and of the meta-gradient, with their caches and their
fallback to eager execution, and the CPU task threads the compiled per-task gradient runs on.

:class:`CompiledMetaGradient` differentiates a learner's objective with ``torch.func.grad``
inside one compiled graph (forward, inner and outer backward, no autograd engine at run time),
per chunk under ``vmap`` and per task in the loop; :func:`compile_for` compiles one function for
one input shape. Any compiler failure warns once and the caller runs eagerly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value
from torch.utils._pytree import tree_map

from mamlkit.core.model_io import first_leaf, index_tree, shape_key
from mamlkit.core.params import Params
from mamlkit.core.task_threads import map_interleaved
from mamlkit.tasks.base import TaskBatch

if TYPE_CHECKING:
    from mamlkit.core.learner import MetaLearner

Metrics = dict[str, Tensor]
ChunkResult = tuple[Tensor, Any, Metrics]
"""One chunk's per-task losses, auxiliary task state and metrics."""


def compile_cache_dir() -> Path:
    """Where compiled artifacts are kept across runs: ``$MAMLKIT_CACHE/torch-compile``, else
    ``~/.cache/mamlkit/torch-compile``."""
    base = os.environ.get("MAMLKIT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mamlkit") / "torch-compile"


def use_user_cache() -> str:
    """Point Inductor's on-disk cache (its FX-graph and AOT-autograd caches) at
    :func:`compile_cache_dir` unless ``TORCHINDUCTOR_CACHE_DIR`` names another place: Inductor's
    own default is a temporary directory, emptied on reboot (importing ``torch._dynamo`` writes
    that default into the variable, so it is replaced where it is the default). Returns the
    directory in use."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, os.path.abspath(default_cache_dir())):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def compile_for(fn: Callable[..., Any], device: torch.device, worker_threads: bool = False
                ) -> Callable[..., Any]:
    """``torch.compile`` for one input shape, with the compiled artifacts cached across runs
    (:func:`use_user_cache`). On the CPU the graph runs from C++ (``cpp_wrapper``) rather than
    from a Python function that launches its kernels one by one (W1: 0.84-0.96x the time per
    meta-iteration; on worker threads it also releases the GIL between kernels), and without
    Inductor's channels-last layout choice for convolutions, which makes the small-batch
    convolution backward passes of the inner loop slower (W2: 17-18 instead of 20-21 ms per
    task). Measurements: docs/performance.md.

    ``worker_threads``: for calls on several threads at once (:mod:`mamlkit.core.task_threads`):
    one graph or an error (no Python between graphs, which would share the module between
    threads) and single-threaded kernels (W3 on two workers: 170 instead of 270 ms per
    meta-iteration with the Python wrapper).
    """
    use_user_cache()
    if device.type != "cpu":
        return torch.compile(fn, dynamic=False)
    options: dict[str, Any] = {"layout_optimization": False, "cpp_wrapper": True}
    if not worker_threads:
        return torch.compile(fn, dynamic=False, options=options)
    return torch.compile(fn, dynamic=False, fullgraph=True,
                         options={**options, "cpp.threads": 1})


class CompiledMetaGradient:
    """The compiled objective and meta-gradient of one learner, and whether compiling failed.

    ``failed`` turns every compiled path off (after a warning); ``threads_failed`` only the
    variant for worker threads, whose graph must compile whole. ``traced``: the module the
    meta-gradient is traced through, the learner itself or a twin sharing its tensors
    (:func:`mamlkit.core.auto_compile.make_twin`), so it can be compiled on another thread.
    """

    def __init__(self, learner: MetaLearner, traced: MetaLearner | None = None) -> None:
        self.learner = learner
        self.traced = learner if traced is None else traced
        self.failed = False
        self.threads_failed = False
        self.objectives: dict[str, Callable[..., Any]] = {}
        self.gradients: dict[tuple[str, bool], Callable[..., Any]] = {}
        self.warm: set[tuple] = set()

    def _device(self) -> torch.device:
        return next(self.learner.parameters()).device

    def warn_failure(self, error: Exception) -> None:
        """Warn that compiling failed and run eagerly from now on."""
        warnings.warn(
            f"torch.compile could not compile the meta-objective ({type(error).__name__}:"
            f" {error}); running it eagerly. Pass compile=False to skip the attempt.",
            RuntimeWarning, stacklevel=4)
        self.failed = True

    def objective(self, mode: str, eager: Callable[..., Any]) -> Callable[..., Any]:
        """``eager`` compiled (one cache entry per mode), falling back to ``eager`` on failure."""
        if self.failed:
            return eager
        if mode not in self.objectives:
            compiled = compile_for(eager, self._device())

            def run(*args: Any) -> Any:
                if self.failed:
                    return eager(*args)
                try:
                    return compiled(*args)
                except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly
                    self.warn_failure(error)
                    return eager(*args)

            self.objectives[mode] = run
        return self.objectives[mode]

    def _function(self, mode: str, threaded: bool) -> Callable[..., Any]:
        """The compiled ``grad_and_value`` of the traced learner's scaled summed losses."""
        key = (mode, threaded)
        if key not in self.gradients:
            traced, batched = self.traced, mode == "vmap"

            def scaled_loss(trainable: Params, factor: Tensor, *args: Any
                            ) -> tuple[Tensor, ChunkResult]:
                losses, state, metrics = functional_call(
                    traced, trainable, args, {"batched": batched, "with_state": True},
                    strict=False)
                return losses.sum() * factor.to(losses.dtype), (losses.detach(), state, metrics)

            self.gradients[key] = compile_for(grad_and_value(scaled_loss, has_aux=True),
                                              self._device(), worker_threads=threaded)
        return self.gradients[key]

    def _call(self, chunk: TaskBatch, trainable: Params, factor: Tensor, mode: str,
              threaded: bool) -> tuple[Params, ChunkResult]:
        """``factor`` times the gradient of the chunk's summed losses with respect to every
        trainable parameter (``trainable``: their detached values), from one compiled call of
        ``torch.func.grad`` over ``functional_call(traced, ...)``, and the chunk's losses, state
        and metrics; under ``loop`` the chunk is one task."""
        args = (chunk.support_x, chunk.support_y, chunk.query_x, chunk.query_y)
        if mode != "vmap":
            args = tuple(index_tree(a, 0) for a in args)
        # Contiguous, so strided views (a batch sliced from one tensor) reuse the graph that
        # contiguous inputs of the same shapes compiled, instead of recompiling for new strides.
        args = tree_map(Tensor.contiguous, args)
        self._set_vmapped(mode)
        grads, (_, result) = self._function(mode, threaded)(trainable, factor, *args)
        return grads, result

    def _set_vmapped(self, mode: str) -> None:
        """Tell the norm layers of the learner (and of its twin) whether tasks are vmapped: read
        by compiled code, no stack lookup."""
        for owner in {id(self.learner): self.learner, id(self.traced): self.traced}.values():
            if owner.norms is not None:
                owner.norms.vmapped = mode == "vmap"

    def build(self, chunk: TaskBatch, trainable: Params, mode: str, threaded: bool
              ) -> Exception | None:
        """Compile the meta-gradient for ``chunk``'s shapes by running it once (the result is
        discarded); the compiler's error, if any, is returned rather than raised or warned."""
        dtype = next(iter(trainable.values())).dtype if trainable else torch.get_default_dtype()
        factor = torch.tensor(1.0, dtype=dtype, device=first_leaf(chunk.query_y).device)
        try:
            self._call(chunk, trainable, factor, mode, threaded)
        except Exception as error:  # noqa: BLE001 - any compiler failure: reported to the caller
            return error
        if threaded:
            self.warm.add(self._warm_key(chunk, mode, dtype))
        return None

    @staticmethod
    def _warm_key(chunk: TaskBatch, mode: str, dtype: torch.dtype) -> tuple:
        return (mode, dtype, *(shape_key(a) for a in (
            chunk.support_x, chunk.support_y, chunk.query_x, chunk.query_y)))

    def _gradient(self, chunk: TaskBatch, trainable: Params, factor: Tensor, mode: str,
                  threaded: bool) -> tuple[Params, ChunkResult] | None:
        """:meth:`_call`, or None after a warning if compilation failed (for the threaded
        variant only, if ``threaded``)."""
        try:
            return self._call(chunk, trainable, factor, mode, threaded)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly
            if threaded:
                warnings.warn(
                    f"The meta-gradient cannot be compiled as one graph for worker threads "
                    f"({type(error).__name__}: {error}); running its tasks on one thread. Pass "
                    "task_threads=1 to skip the attempt.", RuntimeWarning, stacklevel=2)
                self.threads_failed = True
            else:
                self.warn_failure(error)
            return None

    def backward(self, chunks: list[TaskBatch], scale: float, mode: str, threads: int
                 ) -> list[ChunkResult | None]:
        """Add ``scale`` times the gradient of every chunk's summed losses to ``.grad``, on
        ``threads`` worker threads if more than one, and return each chunk's losses, state and
        metrics; None for a chunk that could not be compiled (nothing of it was accumulated: the
        caller runs it eagerly)."""
        learner = self.learner
        trainable = {n: p for n, p in learner.named_parameters() if p.requires_grad}
        detached = {n: p.detach() for n, p in trainable.items()}
        dtype = next(iter(trainable.values())).dtype if trainable else torch.get_default_dtype()
        device = first_leaf(chunks[0].query_y).device
        factor = torch.tensor(scale, dtype=dtype, device=device)  # a tensor, not a constant
        threaded = threads > 1

        def run(indices: list[int]) -> tuple[Params | None, dict[int, ChunkResult]]:
            """Gradient summed over the given chunks (in order), and their results."""
            total: Params | None = None
            done: dict[int, ChunkResult] = {}
            for index in indices:
                result = (self._gradient(chunks[index], detached, factor, mode, threaded)
                          if not self.failed else None)
                if result is None:
                    continue
                grads, done[index] = result
                if total is None:
                    total = grads
                else:
                    for name, gradient in grads.items():
                        total[name].add_(gradient)
            return total, done

        indices = list(range(len(chunks)))
        if not threaded:
            shares = [run(indices)]
        else:
            # The first call of a compiled function compiles it: alone, never on two threads.
            key = self._warm_key(chunks[0], mode, dtype)
            shares = []
            if key not in self.warm:
                shares += map_interleaved(run, indices[:1], threads)  # one share: one worker
                if self.threads_failed:  # nothing was accumulated: all tasks on one thread
                    return self.backward(chunks, scale, mode, 1)
                indices = indices[1:]
                self.warm.add(key)
            shares += map_interleaved(run, indices, threads)
        results: list[ChunkResult | None] = [None] * len(chunks)
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
