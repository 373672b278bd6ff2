"""The meta-training loop shared by every supervised domain (regression, images, text).

One loop owns the outer optimizer, validation, best-model selection, metrics (CSV, optional
TensorBoard), atomic checkpoints and exact resumption; the algorithm only supplies
``meta_backward`` (see :class:`mamlkit.core.learner.MetaLearner`) and the domain only supplies a
task sampler with ``sample(n)`` and ``state_dict()``/``load_state_dict()``.

The same loop runs data-parallel when a ``torch.distributed`` process group is initialised (as
``mamlkit train`` does under torchrun): each process samples ``meta_batch_size / world_size`` tasks
from its own task stream, the meta-gradients are averaged with an all-reduce
(:mod:`mamlkit.distributed`), validation is sharded, and rank 0 logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from mamlkit.checkpoint import (
    load_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mamlkit.config import TrainConfig
from mamlkit.core.learner import MetaLearner
from mamlkit.core.model_io import first_leaf, index_tree, select_output
from mamlkit.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    all_reduce_sums,
    barrier,
    broadcast_module,
    check_divisible,
    current_context,
    gather_to_main,
    rank_seed,
    run_on_main,
    seed_sampler_for_rank,
    shard_bounds,
    synchronize_step,
)
from mamlkit.tasks.base import TaskBatch

CSV_FIELDS = ["iteration", "elapsed_s", "loss", "support_loss", "query_accuracy", "val_loss",
              "val_accuracy", "meta_lr"]
LOG_EVERY = 10


class TaskSampler(Protocol):
    """What the loop needs from a task distribution."""

    def sample(self, num_tasks: int) -> TaskBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteError(RuntimeError):
    """A meta-iteration produced a NaN or infinite loss or gradient."""


@dataclass
class TrainResult:
    """What a finished (or stopped) meta-training run reached."""

    iteration: int
    elapsed_s: float
    best_metric: float | None
    stopped_early: str = ""
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_optimizer(config: TrainConfig, params: Iterator[torch.nn.Parameter]
                    ) -> torch.optim.Optimizer:
    """The outer optimizer named by ``config.optimizer``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.meta_lr)
    return torch.optim.SGD(params, lr=config.meta_lr)


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A callable that opens the mixed-precision context of ``amp`` (``none`` or ``bf16``).

    bf16 autocast runs matrix products and convolutions in bfloat16 while the parameters, the
    fast weights of the inner loop and their gradients stay float32 (autograd returns gradients
    in the dtype of the tensor they are taken with respect to), and losses are computed in
    float32; so the second-order meta-gradient is built from float32 inner-loop updates.
    """
    if amp == "none":
        return contextlib.nullcontext
    if amp != "bf16":
        raise ValueError(f"amp must be 'none' or 'bf16', got {amp!r}.")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp='bf16' was requested but {device} does not support bfloat16; "
                         "use --amp none.")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def move_batch(batch: TaskBatch, device: torch.device) -> TaskBatch:
    """``batch`` on ``device``, moved once; CPU tensors go through pinned memory to a GPU so the
    copy is asynchronous."""
    if device.type == "cuda" and first_leaf(batch.support_x).device.type == "cpu":
        batch = pin_batch(batch)
    return batch.to(device, non_blocking=True)


def pin_batch(batch: TaskBatch) -> TaskBatch:
    """A copy of a CPU ``batch`` in page-locked memory (fast, asynchronous host-to-GPU copies);
    every tensor of pytree inputs and targets is pinned."""
    return batch.map_tensors(lambda tensor: tensor.pin_memory())


def preflight(learner: MetaLearner, batch: TaskBatch) -> None:
    """Check that the model fits the task before the first meta-iteration of a session.

    Runs the engine's input check and :func:`check_model_fits_task` with the random state put back
    afterwards: their forward passes would otherwise consume random numbers (dropout) at the
    start of every session, and a resumed run would drift from an uninterrupted one.
    """
    device = batch.support_x.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        check_inputs = getattr(learner, "_check_batch", None)  # the engine's cached shape check
        if check_inputs is not None:
            check_inputs(batch)
        check_model_fits_task(learner, batch)


def check_model_fits_task(learner: MetaLearner, batch: TaskBatch) -> None:
    """Raise ``ValueError`` when a classifier's outputs cannot score the task's labels.

    Run once on the first batch: a model with fewer logits than the episode has classes would
    otherwise fail deep inside the loss (on a GPU, as an opaque device-side assertion).
    """
    if (not learner.classification or not isinstance(batch.support_y, torch.Tensor)
            or batch.support_y.dtype.is_floating_point):
        return
    buffers = {n: b.clone() for n, b in learner.model.named_buffers()}  # not a task's forward
    with torch.no_grad():
        outputs = select_output(learner.functional_forward(
            learner.meta_params(), index_tree(batch.support_x, 0), buffers), learner.output)
    classes = int(max(batch.support_y.max(), batch.query_y.max())) + 1
    if outputs.dim() < 2 or outputs.shape[-1] < classes:
        raise ValueError(
            f"The model outputs shape {tuple(outputs.shape)} for {batch.support_y.shape[1]} "
            f"examples but the task's labels go up to {classes - 1}: a classifier needs "
            f"[examples, {classes}] logits. Build the model with as many outputs as ways "
            f"({classes}).")


def validate(learner: MetaLearner, batch: TaskBatch, steps: int,
             context: DistributedContext = SINGLE_PROCESS) -> dict[str, float]:
    """Mean query loss (and accuracy) after ``steps`` adaptation steps on held-out tasks.

    ``batch`` is this process's share of the validation tasks; the per-task sums are added up
    over all processes, so every process gets the mean over all validation tasks.
    """
    keys = ["val_loss"] + (["val_accuracy"] if learner.classification else [])
    sums = dict.fromkeys(keys, 0.0)
    sums["count"] = float(batch.num_tasks)
    if batch.num_tasks:
        curve = learner.adaptation_curve(batch, steps)
        sums["val_loss"] = float(curve["query_loss"][-1].double().sum())
        if "val_accuracy" in sums:
            sums["val_accuracy"] = float(curve["query_accuracy"][-1].double().sum())
    totals = all_reduce_sums(sums, context, batch.support_x.device)
    return {k: totals[k] / totals["count"] for k in keys}


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag so the loop can save a checkpoint before exiting."""

    def __init__(self) -> None:
        self.received: str = ""

    @contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        handlers = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not in the main thread: leave the handlers alone
            pass
        try:
            yield self
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name


def _all_finite(loss: float, params: list[torch.nn.Parameter]) -> bool:
    if not math.isfinite(loss):
        return False
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.isfinite(torch.stack(norms)).all())


class _MetricsLog:
    """metrics.csv (rows beyond a resumed checkpoint are dropped) and optional TensorBoard."""

    def __init__(self, run_dir: Path, resume_from: int | None, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.csv"
        rows = _read_rows(self.path, resume_from) if resume_from is not None else []
        self.handle = self.path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, CSV_FIELDS, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.handle.flush()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tb = None
            else:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict[str, float]) -> None:
        self.writer.writerow(row)
        self.handle.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key != "iteration":
                    self.tb.add_scalar(key, value, int(row["iteration"]))

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


def _read_rows(path: Path, up_to: int) -> list[dict[str, str]]:
    """Complete rows of an existing metrics.csv up to iteration ``up_to`` (a torn last line, as a
    killed run may leave, is dropped)."""
    if not path.exists():
        return []
    kept = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if None in row or any(v is None for v in row.values()):
                continue
            try:
                iteration = int(row["iteration"])
            except (KeyError, TypeError, ValueError):
                continue
            if iteration <= up_to:
                kept.append(row)
    return kept


def _restore(state: dict[str, Any], path: Path, learner: MetaLearner,
             optimizer: torch.optim.Optimizer, tasks: TaskSampler,
             context: DistributedContext) -> None:
    saved_world = int(state.get("world_size", 1))
    if saved_world != context.world_size:
        raise ValueError(
            f"{path} was written by a run with {saved_world} process(es) but this run has "
            f"{context.world_size}: each process's task stream is saved separately, so an exact "
            f"resume needs the same number of processes (torchrun --nproc-per-node "
            f"{saved_world} ...). Or start a new run from this checkpoint's weights.")
    try:
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise ValueError(
            f"{path} does not fit this model or algorithm ({type(error).__name__}: "
            f"{detail[:400]}). Resume with the configuration the run was started with, or start "
            "a new run.") from error
    per_rank = state.get("ranks") or [{"sampler": state["sampler"], "rng": state["rng"]}]
    mine = per_rank[context.rank]
    tasks.load_state_dict(mine["sampler"])
    set_rng_state(mine["rng"])


def meta_train(
    learner: MetaLearner,
    tasks: TaskSampler,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    val_batch: TaskBatch | None = None,
    resume: bool = False,
    distributed: DistributedContext | None = None,
    progress: bool = True,
) -> TrainResult:
    """Meta-train ``learner`` on tasks from ``tasks`` and checkpoint into ``run_dir``.

    Args:
        learner: the algorithm (its parameters are optimised in place).
        tasks: the meta-training task distribution.
        config: iterations, optimizer, validation and checkpoint settings.
        run_dir: where ``checkpoints/``, ``metrics.csv`` and ``tensorboard/`` go.
        val_batch: fixed held-out tasks; validated every ``config.val_every`` iterations and used
            to keep ``checkpoints/best.pt`` (lowest loss, or highest accuracy when classifying).
        resume: continue from ``checkpoints/last.pt`` exactly where it stopped (model, optimizer,
            task sampler and random states of every process, iteration counter, elapsed time).
        distributed: the data-parallel context; ``None`` detects an initialised
            ``torch.distributed`` process group (see :mod:`mamlkit.distributed`). Every process
            calls ``meta_train`` with the same arguments; ``tasks`` is re-seeded per rank on a new
            run, rank 0 logs and writes checkpoints.
        progress: show a tqdm progress bar.
    """
    context = current_context() if distributed is None else distributed
    local_tasks = check_divisible(config.meta_batch_size, context.world_size)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    device = torch.device(config.device)
    autocast = autocast_factory(config.amp, device)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(ckpt_dir)
    params = list(learner.parameters())
    optimizer = build_optimizer(config, iter(params))
    start, elapsed, best = 0, 0.0, None
    if resume:
        path = ckpt_dir / "last.pt"
        state = run_on_main(lambda: load_checkpoint(path, map_location="cpu"), context)
        _restore(state, path, learner, optimizer, tasks, context)
        start, elapsed, best = state["iteration"], state["elapsed_s"], state["best_metric"]
        del state
    elif context.enabled:
        broadcast_module(learner, context)
        seed_sampler_for_rank(tasks, config.seed, context.rank)
        if context.rank:
            torch.manual_seed(rank_seed(config.seed, context.rank))  # per-rank dropout streams
    val_part = None
    if val_batch is not None:
        val_part = move_batch(val_batch.slice(shard_bounds(val_batch.num_tasks, context)), device)
    classification = learner.classification
    higher_is_better = classification and val_batch is not None

    def improved(metric: float) -> bool:
        if best is None:
            return True
        return metric > best if higher_is_better else metric < best

    def checkpoint(name: str, iteration: int) -> None:
        # collective in a distributed run: every rank hands its sampler and random states to rank 0
        per_rank = gather_to_main({"sampler": tasks.state_dict(), "rng": rng_state()}, context)
        if not context.is_main:
            return
        state = {"iteration": iteration, "elapsed_s": elapsed, "best_metric": best,
                 "learner": learner.state_dict(), "optimizer": optimizer.state_dict(),
                 "sampler": per_rank[0]["sampler"], "rng": per_rank[0]["rng"],
                 "world_size": context.world_size, "config": config.to_dict()}
        if context.enabled:
            state["ranks"] = per_rank
        save_checkpoint(ckpt_dir / name, state)

    log = _MetricsLog(run_dir, start if resume else None, config.tensorboard) \
        if context.is_main else None
    result = TrainResult(iteration=start, elapsed_s=elapsed, best_metric=best)
    stops = _StopSignals()
    budget_s = config.time_budget_minutes * 60.0
    bar = tqdm(total=config.iterations, initial=start, disable=not (progress and context.is_main),
               desc=f"meta-train {config.task}", dynamic_ncols=True, mininterval=1.0)
    iteration = start
    best_written = resume and best is not None and val_batch is not None
    try:
        with stops.installed():
            for iteration in range(start + 1, config.iterations + 1):
                if hasattr(learner, "set_iteration"):
                    learner.set_iteration(iteration - 1)
                tick = time.perf_counter()
                batch = move_batch(tasks.sample(local_tasks), device)
                if iteration == start + 1:
                    preflight(learner, batch)
                    if progress and context.is_main:
                        tasks_word = "task" if batch.num_tasks == 1 else "tasks"
                        bar.write(f"meta-batch of {batch.num_tasks} {tasks_word}: "
                                  f"{learner.execution_summary(batch)}")
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    metrics = learner.meta_backward(batch)
                del batch
                synced = synchronize_step(params, metrics, bool(stops.received),
                                          bool(budget_s and elapsed >= budget_s), context)
                metrics = synced.metrics
                if not _all_finite(metrics["loss"], params):
                    if config.on_nonfinite == "stop":
                        raise NonFiniteError(
                            f"Non-finite loss or gradient at meta-iteration {iteration} (loss "
                            f"{metrics['loss']}). The last good checkpoint is kept in {ckpt_dir}. "
                            "Lower meta_lr or inner_lr, or set on_nonfinite='skip' to skip such "
                            "steps.")
                    optimizer.zero_grad(set_to_none=True)
                    result.skipped_steps += 1
                    continue
                optimizer.step()
                elapsed += time.perf_counter() - tick
                row = {"iteration": iteration, "elapsed_s": round(elapsed, 3),
                       "meta_lr": optimizer.param_groups[0]["lr"], **metrics}
                if val_part is not None and config.val_every and iteration % config.val_every == 0:
                    row.update(validate(learner, val_part, config.eval_inner_steps, context))
                    metric = row["val_accuracy" if higher_is_better else "val_loss"]
                    if improved(metric):
                        best = metric
                        checkpoint("best.pt", iteration)
                        best_written = True
                    result.history.append(row)
                if log is not None and (iteration % LOG_EVERY == 0 or "val_loss" in row):
                    log.write(row)
                bar.update(1)
                shown = {"loss": f"{metrics['loss']:.4f}"}
                if "query_accuracy" in metrics:
                    shown["acc"] = f"{metrics['query_accuracy']:.3f}"
                if "val_loss" in row:
                    shown["val"] = f"{row.get('val_accuracy', row['val_loss']):.4f}"
                bar.set_postfix(shown, refresh=False)
                if iteration % config.checkpoint_every == 0:
                    checkpoint("last.pt", iteration)
                    if config.keep_checkpoints:
                        checkpoint(f"iter_{iteration:08d}.pt", iteration)
                        if context.is_main:
                            _prune(ckpt_dir, config.keep_checkpoints)
                if context.enabled:
                    signalled, out_of_time = synced.stop_signal, synced.stop_budget
                else:
                    signalled, out_of_time = bool(stops.received), bool(budget_s and elapsed >= budget_s)
                if signalled:
                    result.stopped_early = f"received {stops.received or 'a stop signal'}"
                    break
                if out_of_time:
                    result.stopped_early = f"time budget of {config.time_budget_minutes} min"
                    break
            else:
                iteration = config.iterations
    finally:
        bar.close()
        if log is not None:
            log.close()
    result.iteration, result.elapsed_s = iteration, elapsed
    if val_batch is None:
        best = None
    result.best_metric = best
    checkpoint("last.pt", iteration)
    if not best_written:
        checkpoint("best.pt", iteration)
    barrier(context)  # rank 0 has written the final checkpoints before any process reads them
    return result


def _prune(ckpt_dir: Path, keep: int) -> None:
    periodic = sorted(ckpt_dir.glob("iter_*.pt"))
    for old in periodic[:-keep]:
        old.unlink(missing_ok=True)
