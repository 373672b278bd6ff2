"""``compile="auto"``, the default: run eagerly, and compile the meta-gradient in the background
once it pays, then switch to it.

Compiling the meta-gradient (:mod:`mamlkit.core.compiled`) makes a meta-iteration 1.3-2.5x
faster on the CPU (``docs/performance.md``) but costs seconds to minutes up front, which a short
run never earns back. So under ``auto`` the first meta-batches run eagerly while
:class:`AutoCompile` watches them; once the same shapes have come back :attr:`AutoCompile.repeats`
times and the eager time still to come on them (the trainer says how many meta-batches are
left; otherwise the time already spent, a run that has lasted *T* being likely to last about *T*
more) reaches :attr:`AutoCompile.pays_after_s`, it compiles on a background thread and training
goes on eagerly. The compiled step is used from the first meta-batch after it is ready.

The background thread compiles a *twin* of the learner: a copy of its modules that shares every
parameter and buffer with it, whose trainable parameters are replaced at each call by the
learner's own (``torch.func.functional_call``). The compiled graph therefore always runs the
learner's current weights, and the thread never touches the modules the main thread runs. What
the graph was traced with that is not a tensor (the learner's settings, the modules' train/eval
modes, which parameters are trainable) is checked at every call; if it changed, auto runs
eagerly again and recompiles when the new settings repeat.

Auto stays eager, saying why, where compiling cannot serve: no C++ compiler (CPU) or Triton
(CUDA); an algorithm whose objective changes between iterations (it declares
``compiled_meta_gradient = False``); hooks on the model, or running statistics under
``batchnorm="module"`` (state the twin would not see); autocast; a compiler error. Compiled
artifacts are cached across runs (:func:`~mamlkit.core.compiled.use_user_cache`), so a second
run of the same shapes starts compiled in seconds rather than minutes.

Switching happens when the compile is ready, so the meta-batch at which eager turns compiled
(and with it the last bits of floating-point rounding) depends on timing: for runs that must
repeat bit for bit, pass ``compile="off"`` or ``"on"``.
"""

from __future__ import annotations

import collections
import copy
import functools
import logging
import shutil
import statistics
import threading
import time
from typing import TYPE_CHECKING, Any

import torch

from mamlkit.core.compiled import CompiledMetaGradient, use_user_cache
from mamlkit.core.model_io import first_leaf, shape_key
from mamlkit.tasks.base import TaskBatch

if TYPE_CHECKING:
    from mamlkit.core.learner import MetaLearner

COMPILE_MODES = ("auto", "on", "off")
"""``compile`` settings: ``auto`` (compile in the background once it pays), ``on`` (compile on
the first meta-batch, ``True``), ``off`` (eager, ``False``)."""

log = logging.getLogger("mamlkit.compile")


def compile_mode(value: bool | str) -> str:
    """``value`` as one of :data:`COMPILE_MODES` (``True`` is ``"on"``, ``False`` ``"off"``)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)} (or True / False), "
                     f"got {value!r}.")


@functools.cache
def compiler_missing(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot build code for devices of ``device_type`` here, or None
    (looked up once per process)."""
    use_user_cache()
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device_type == "cpu":
        from torch._inductor import cpp_builder

        compiler = cpp_builder.get_cpp_compiler()
        if shutil.which(compiler) is None:
            return f"no C++ compiler ({compiler}) on the PATH"
    elif device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed"
    return None


def batch_key(batch: TaskBatch, mode: str) -> tuple:
    """What a compiled meta-gradient is specialised to: the batching mode and the shapes, dtypes
    and devices of the batch (tasks included)."""
    return (mode, *(shape_key(a) for a in (
        batch.support_x, batch.support_y, batch.query_x, batch.query_y)))


def settings_fingerprint(learner: MetaLearner) -> tuple:
    """What a compiled graph depends on besides tensors: the learner's scalar settings, every
    module's train/eval mode, and the names, dtypes and devices of the trainable parameters."""
    scalars = tuple(sorted((k, v) for k, v in vars(learner).items()
                           if isinstance(v, (bool, int, float, str)) or v is None))
    modes = tuple(m.training for m in learner.modules())
    trainable = tuple((n, p.dtype, p.device) for n, p in learner.named_parameters()
                      if p.requires_grad)
    return scalars, modes, trainable


def make_twin(learner: MetaLearner) -> MetaLearner:
    """A copy of ``learner``'s modules that shares its parameters and buffers (no tensor is
    copied) and runs eagerly, for the background compile to trace."""
    from mamlkit.core.execution import Execution

    memo: dict[int, Any] = {id(learner.execution): None}
    for tensor in (*learner.parameters(), *learner.buffers()):
        memo[id(tensor)] = tensor
    twin = copy.deepcopy(learner, memo)
    twin.compile_mode = "off"
    twin.execution = Execution(twin)
    return twin


class _Seen:
    """How often a batch key came back, the eager seconds spent on it, the latest durations."""

    def __init__(self) -> None:
        self.count, self.total = 0, 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=25)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.recent.append(seconds)


class AutoCompile:
    """The ``compile="auto"`` policy of one learner (see the module docstring)."""

    repeats: int = 3
    """Meta-batches of the same shapes seen before compiling for them is considered."""
    pays_after_s: float = 30.0
    """Eager seconds still expected on the same shapes for which compiling pays: warm compiles
    take 5-20 s on a small CPU, cold ones 15 s (MLP) to minutes (CNN), in the background."""

    def __init__(self, learner: MetaLearner) -> None:
        self.learner = learner
        self.declined: str | None = None
        self.backend: CompiledMetaGradient | None = None
        self.key: tuple | None = None
        self.fingerprint: tuple | None = None
        self.seen: dict[tuple, _Seen] = {}
        self.meta_batches_left: int | None = None
        self.meta_batches = 0
        self.compile_seconds: float | None = None
        self.messages: list[str] = []
        self.threads_failed = False
        self._job: threading.Thread | None = None
        self._outcome: tuple[CompiledMetaGradient, Exception | None, float] | None = None

    # ------------------------------------------------------------------ what it says
    def say(self, line: str) -> None:
        """Queue a progress line for the trainer (:meth:`take_messages`) and log it."""
        self.messages.append(line)
        log.info(line)

    def take_messages(self) -> list[str]:
        """The progress lines since the last call (compile started, done, declined)."""
        lines, self.messages = self.messages, []
        return lines

    def static_reason(self, batch: TaskBatch) -> str | None:
        """Why auto will never compile for this learner and batch, as far as is known up front."""
        from mamlkit.core.execution import has_hooks

        learner = self.learner
        if self.declined:
            return self.declined
        if not learner.compiled_meta_gradient:
            return f"{type(learner).__name__}'s objective changes between meta-iterations"
        if has_hooks(learner.model) or learner.support_objective is not None:
            return "the model carries hooks"
        if learner.norms is not None and learner.batchnorm == "module":
            return "BatchNorm updates its running statistics (batchnorm='module')"
        return compiler_missing(first_leaf(batch.query_y).device.type)

    def state(self, batch: TaskBatch, mode: str) -> str:
        """One phrase for the execution summary."""
        if self.backend is not None and self.key == batch_key(batch, mode):
            return "compiled (compile=auto)"
        reason = self.static_reason(batch)
        if reason:
            return f"eager (compile=auto: {reason})"
        if self._job is not None:
            return "eager while the meta-gradient compiles in the background (compile=auto)"
        return "eager, compiled in the background once it pays (compile=auto)"

    # ------------------------------------------------------------------ the switch
    def backend_for(self, batch: TaskBatch, mode: str) -> CompiledMetaGradient | None:
        """The compiled meta-gradient to run ``batch`` with now, or None (run it eagerly)."""
        self._collect()
        if self.backend is None or self.key != batch_key(batch, mode):
            return None
        if self.backend.failed:
            self.declined, self.backend = "the compiled meta-gradient failed", None
            return None
        if settings_fingerprint(self.learner) != self.fingerprint:
            self.say("compile=auto: the learner's settings changed since the meta-gradient was "
                     "compiled; running eagerly, and compiling again if the new ones repeat")
            self.backend = self.key = None
            self.seen.clear()
            return None
        return self.backend

    def observe(self, batch: TaskBatch, chunks: list[TaskBatch], mode: str, threads: int,
                seconds: float) -> None:
        """Record an eager meta-batch (``seconds`` long) and start the background compile once
        the same shapes have repeated and the time still to come on them pays for it."""
        self.meta_batches += 1
        if self.declined or self._job is not None or self.backend is not None:
            return
        seen = self.seen.setdefault(batch_key(batch, mode), _Seen())
        seen.add(seconds)
        if seen.count < self.repeats:
            return
        ahead = (seen.total if self.meta_batches_left is None
                 else self.meta_batches_left * statistics.median(seen.recent))
        if ahead < self.pays_after_s:
            return
        device = first_leaf(batch.query_y).device
        reason = self.static_reason(batch)
        if reason is None and torch.is_autocast_enabled(device.type):
            reason = "autocast (mixed precision) is on"
        if reason is not None:
            self.declined = reason
            return
        try:
            twin = make_twin(self.learner)
        except Exception as error:  # noqa: BLE001 - an uncopyable model: stay eager
            self.declined = f"the learner cannot be copied ({type(error).__name__}: {error})"
            self.say(f"compile=auto: {self.declined}; running eagerly")
            return
        self._start(twin, batch_key(batch, mode), chunks, mode, threads)

    def _start(self, twin: MetaLearner, key: tuple, chunks: list[TaskBatch], mode: str,
               threads: int) -> None:
        """Compile the meta-gradient for ``chunks``' shapes on a background thread."""
        learner = self.learner
        self.key, self.fingerprint = key, settings_fingerprint(learner)
        backend = CompiledMetaGradient(learner, traced=twin)
        # Copies, so the thread reads nothing the main thread writes meanwhile.
        shapes = {batch_key(c, mode): c for c in chunks}
        samples = [c.map_tensors(torch.Tensor.clone) for c in shapes.values()]
        trainable = {n: p.detach().clone() for n, p in learner.named_parameters()
                     if p.requires_grad}
        first = chunks[0]
        per_task = f"{first_leaf(first.support_x).shape[1]}+{first_leaf(first.query_x).shape[1]}"
        self.say(f"compile=auto: compiling the meta-gradient for {chunks[0].num_tasks * len(chunks)}"
                 f" tasks x {per_task} examples in the background (cache: {use_user_cache()};"
                 " the first run of these shapes takes longest); training goes on eagerly")

        def build() -> None:
            tick = time.perf_counter()
            error = None
            threaded = threads > 1
            for sample in samples:
                error = backend.build(sample, trainable, mode, threaded)
                if error is not None and threaded:  # the tasks will run on one thread
                    self.threads_failed, threaded = True, False
                    error = backend.build(sample, trainable, mode, threaded)
                if error is not None:
                    break
            self._outcome = (backend, error, time.perf_counter() - tick)

        self._job = threading.Thread(target=build, name="mamlkit-compile", daemon=True)
        self._job.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background compile to finish (benchmarks and tests); True if none is
        running any more."""
        if self._job is not None:
            self._job.join(timeout)
        self._collect()
        return self._job is None

    def _collect(self) -> None:
        """Take the background compile's outcome once it has finished."""
        if self._job is None or self._job.is_alive() or self._outcome is None:
            return
        backend, error, seconds = self._outcome
        self._job, self._outcome = None, None
        self.compile_seconds = seconds
        if error is not None:
            self.declined = f"could not compile ({type(error).__name__}: {error})"
            self.backend = self.key = None
            self.say(f"compile=auto: the meta-gradient could not be compiled "
                     f"({type(error).__name__}: {error}); running eagerly. compile='off' skips "
                     "the attempt.")
            return
        self.backend = backend
        self.say(f"compile=auto: compiled the meta-gradient in {seconds:.1f} s; it runs "
                 f"compiled from meta-batch {self.meta_batches + 1}")

