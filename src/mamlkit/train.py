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
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from mamlkit.checkpoint import remove_stale_temporaries, rng_state, save_checkpoint
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
from mamlkit.integrations.wandb import log_row as log_wandb_row
from mamlkit.integrations.wandb import start_run as wandb_run
from mamlkit.metrics_log import BASE_FIELDS as CSV_FIELDS  # noqa: F401 - public name
from mamlkit.metrics_log import MetricsLog
from mamlkit.metrics_log import read_rows as _read_rows  # noqa: F401 - used by the tests
from mamlkit.run_guard import (  # noqa: F401 - NonFiniteError, ResumeWarning, stop_code: public here
    MAX_SKIPS_IN_A_ROW,
    NON_FINITE,
    NonFiniteError,
    ResumeWarning,
    StopSignals,
    all_finite,
    non_finite_message,
    restore,
    resume_point,
    stop_code,
)
from mamlkit.schedules import lr_factor
from mamlkit.tasks.base import TaskBatch


class TaskSampler(Protocol):
    """What the loop needs from a task distribution."""

    def sample(self, num_tasks: int) -> TaskBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
    """The outer optimizer named by ``config.optimizer`` (AdamW when adam has weight decay)."""
    if config.optimizer == "adam":
        if config.weight_decay:
            return torch.optim.AdamW(params, lr=config.meta_lr, weight_decay=config.weight_decay)
        return torch.optim.Adam(params, lr=config.meta_lr)
    return torch.optim.SGD(params, lr=config.meta_lr, weight_decay=config.weight_decay)


def apply_training_options(config: TrainConfig, optimizer: torch.optim.Optimizer,
                           params: list[torch.nn.Parameter], iteration: int) -> dict[str, float]:
    """Before the outer step of ``iteration``: set the scheduled learning rate
    (:mod:`mamlkit.schedules`) and clip the meta-gradient (``grad_clip``); returns what a run
    logs about it (``grad_norm``, the norm before clipping, when clipping)."""
    factor = lr_factor(config.lr_schedule, iteration, config.iterations, config.warmup_iterations,
                       config.lr_step_size, config.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
    if not config.grad_clip:
        return {}
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                          config.grad_clip)
    return {"grad_norm": float(norm)}


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
    title: str = "",
) -> TrainResult:
    """Meta-train ``learner`` on tasks from ``tasks`` and checkpoint into ``run_dir``.

    Args:
        learner: the algorithm (its parameters are optimised in place).
        tasks: the meta-training task distribution.
        config: iterations, optimizer, validation, logging and checkpoint settings.
        run_dir: where ``checkpoints/``, ``metrics.csv`` and ``tensorboard/`` go.
        val_batch: fixed held-out tasks; validated every ``config.val_every`` iterations and used
            to keep ``checkpoints/best.pt`` (lowest loss, or highest accuracy when classifying; a
            non-finite validation result is never the best).
        resume: continue exactly where the newest readable checkpoint stopped (model, optimizer,
            task sampler and random states of every process, iteration counter, elapsed time):
            ``last.pt``, or when it is damaged the newest of ``iter_*.pt`` and ``best.pt``, with a
            :class:`ResumeWarning` naming it. A stage that never wrote a checkpoint starts from
            iteration 0 (also with a warning); one whose checkpoints are all gone or unreadable
            raises ``ValueError`` before anything is written.
        distributed: the data-parallel context; ``None`` detects an initialised
            ``torch.distributed`` process group (see :mod:`mamlkit.distributed`). Every process
            calls ``meta_train`` with the same arguments; ``tasks`` is re-seeded per rank on a new
            run, rank 0 logs and writes checkpoints.
        progress: show a tqdm progress bar.
        title: the progress bar's title (default ``meta-train TASK``).

    A SIGINT or SIGTERM ends the current meta-iteration, writes ``last.pt`` and returns with
    ``stopped_early`` naming the signal. A non-finite loss or gradient raises
    :class:`NonFiniteError` (``on_nonfinite='stop'``) or skips the step (``'skip'``, counted in
    ``skipped_steps``, in metrics.csv and in a warning); :data:`MAX_SKIPS_IN_A_ROW` skipped in a
    row still raise, and a run whose every step was skipped returns with ``stopped_early``
    starting with :data:`NON_FINITE` (``mamlkit train`` exits 3).
    """
    context = current_context() if distributed is None else distributed
    local_tasks = check_divisible(config.meta_batch_size, context.world_size)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if config.threads:
        torch.set_num_threads(config.threads)  # TrainConfig.threads, as the CLI sets it
    device = torch.device(config.device)
    autocast = autocast_factory(config.amp, device)
    if context.is_main and run_dir.is_dir():
        remove_stale_temporaries(ckpt_dir)
    params = list(learner.parameters())
    optimizer = build_optimizer(config, iter(params))
    start, elapsed, best, skipped = 0, 0.0, None, 0
    point = run_on_main(lambda: resume_point(run_dir, config.checkpoint_every), context) if resume else None
    if point is not None:
        restore(point.state, point.path, learner, optimizer, tasks, context)
        start, elapsed, best = point.state["iteration"], point.state["elapsed_s"], \
            point.state["best_metric"]
        skipped = int(point.state.get("skipped_steps", 0))
        if start > config.iterations:
            raise ValueError(
                f"{point.path} is at iteration {start}, past iterations = {config.iterations}: "
                f"resuming would rewind the run. Pass iterations >= {start} (--iterations).")
        point = None
    elif context.enabled:
        broadcast_module(learner, context)
        seed_sampler_for_rank(tasks, config.seed, context.rank)
        if context.rank:
            torch.manual_seed(rank_seed(config.seed, context.rank))  # per-rank dropout streams
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    val_part = None
    if val_batch is not None:
        val_part = move_batch(val_batch.slice(shard_bounds(val_batch.num_tasks, context)), device)
    classification = learner.classification
    higher_is_better = classification and val_batch is not None
    saved_at = start if resume and start else None

    def improved(metric: float) -> bool:
        if not math.isfinite(metric):
            return False
        if best is None:
            return True
        return metric > best if higher_is_better else metric < best

    def checkpoint(name: str, iteration: int) -> None:
        # collective in a distributed run: every rank hands its sampler and random states to rank 0
        per_rank = gather_to_main({"sampler": tasks.state_dict(), "rng": rng_state()}, context)
        if not context.is_main:
            return
        state = {"iteration": iteration, "elapsed_s": elapsed, "best_metric": best,
                 "skipped_steps": skipped,
                 "learner": learner.state_dict(), "optimizer": optimizer.state_dict(),
                 "sampler": per_rank[0]["sampler"], "rng": per_rank[0]["rng"],
                 "world_size": context.world_size, "config": config.to_dict()}
        if context.enabled:
            state["ranks"] = per_rank
        save_checkpoint(ckpt_dir / name, state)

    log = MetricsLog(run_dir, start if resume else None, config.tensorboard) \
        if context.is_main else None
    tracker = wandb_run(config, run_dir) if context.is_main else None
    result = TrainResult(iteration=start, elapsed_s=elapsed, best_metric=best)
    stops = StopSignals()
    budget_s = config.time_budget_minutes * 60.0
    say = tqdm.write if progress and context.is_main else (lambda _: None)
    bar = None  # opened after the first meta-iteration, so the lines it prints come before it
    iteration = start
    best_written = resume and best is not None and val_batch is not None
    skipped_in_a_row = 0
    try:
        with stops.installed():
            for iteration in range(start + 1, config.iterations + 1):
                if hasattr(learner, "set_iteration"):
                    learner.set_iteration(iteration - 1)
                tick = time.perf_counter()
                batch = move_batch(tasks.sample(local_tasks), device)
                if iteration == start + 1:
                    preflight(learner, batch)
                    tasks_word = "task" if batch.num_tasks == 1 else "tasks"
                    say(f"meta-batch of {batch.num_tasks} {tasks_word}: "
                        f"{learner.execution_summary(batch)}")
                    if learner.use_compile:
                        say("compiling the meta-gradient with torch.compile (seconds for an MLP, "
                            "minutes for a CNN on a small CPU) ...")
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    metrics = learner.meta_backward(batch)
                if bar is None:
                    if learner.use_compile:
                        say(f"first meta-iteration done in {time.perf_counter() - tick:.1f} s "
                            f"({learner.execution_summary(batch)})")
                    bar = tqdm(total=config.iterations, initial=iteration - 1,
                               disable=not (progress and context.is_main), mininterval=1.0,
                               desc=title or f"meta-train {config.task}", dynamic_ncols=True)
                del batch
                synced = synchronize_step(params, metrics, bool(stops.received),
                                          bool(budget_s and elapsed >= budget_s), context)
                metrics = synced.metrics
                if all_finite(metrics["loss"], params):
                    metrics.update(apply_training_options(config, optimizer, params, iteration))
                    optimizer.step()
                    skipped_in_a_row = 0
                elif config.on_nonfinite == "stop":
                    raise NonFiniteError(non_finite_message(iteration, metrics["loss"], ckpt_dir,
                                                             saved_at))
                else:
                    optimizer.zero_grad(set_to_none=True)
                    skipped, skipped_in_a_row = skipped + 1, skipped_in_a_row + 1
                    result.skipped_steps += 1
                    if skipped_in_a_row == 1 and context.is_main:
                        say(f"meta-iteration {iteration}: non-finite loss or gradient, "
                            "step skipped (on_nonfinite = skip)")
                    if skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
                        raise NonFiniteError(non_finite_message(
                            iteration, metrics["loss"], ckpt_dir, saved_at,
                            f"{skipped_in_a_row} meta-iterations in a row were non-finite and "
                            f"skipped ({skipped} in all)"))
                elapsed += time.perf_counter() - tick
                row = {"iteration": iteration, "elapsed_s": round(elapsed, 3),
                       "meta_lr": optimizer.param_groups[0]["lr"], **metrics}
                if config.on_nonfinite == "skip":
                    row["skipped_steps"] = skipped
                if val_part is not None and config.val_every and iteration % config.val_every == 0:
                    row.update(validate(learner, val_part, config.eval_inner_steps, context))
                    metric = row["val_accuracy" if higher_is_better else "val_loss"]
                    if improved(metric):
                        best = metric
                        checkpoint("best.pt", iteration)
                        best_written = True
                    result.history.append(row)
                if log is not None and (iteration % config.log_every == 0 or "val_loss" in row):
                    log.write(row)
                    if tracker is not None:
                        log_wandb_row(tracker, row)
                bar.update(1)
                shown = {"loss": f"{metrics['loss']:.4f}"}
                if "query_accuracy" in metrics:
                    shown["acc"] = f"{metrics['query_accuracy']:.3f}"
                if "val_loss" in row:
                    shown["val"] = f"{row.get('val_accuracy', row['val_loss']):.4f}"
                bar.set_postfix(shown, refresh=False)
                if iteration % config.checkpoint_every == 0:
                    if log is not None:
                        log.sync()
                    checkpoint("last.pt", iteration)
                    saved_at = iteration
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
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if tracker is not None:
            tracker.finish()
    if skipped_in_a_row and skipped_in_a_row == iteration - start and not result.stopped_early:
        result.stopped_early = (f"{NON_FINITE}: all {skipped_in_a_row} meta-iterations had a "
                                "non-finite loss or gradient and were skipped")
    if result.skipped_steps and context.is_main:
        warnings.warn(f"{run_dir}: {result.skipped_steps} of {iteration - start} meta-iterations "
                      "had a non-finite loss or gradient and were skipped (on_nonfinite = skip).",
                      UserWarning, stacklevel=2)
    result.iteration, result.elapsed_s = iteration, elapsed
    if val_batch is None:
        best = None
    elif best is None and result.history and context.is_main:
        warnings.warn(f"{run_dir}: no validation gave a finite result, so best.pt holds the final "
                      "weights.", UserWarning, stacklevel=2)
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
