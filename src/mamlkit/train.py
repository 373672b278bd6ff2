"""The one meta-training loop, for supervised and reinforcement-learning meta-training.

:func:`train_loop` drives any :class:`MetaStep` (an object that does one meta-iteration and
returns its metrics, with ``state_dict``/``load_state_dict`` for resume) and owns everything
around it: stop signals (SIGINT/SIGTERM end the iteration, write ``last.pt`` and return), the
time budget, the non-finite policy, validation and the best checkpoint, ``last.pt`` and rotated
``iter_*.pt`` checkpoints (atomic, ``weights_only`` loadable), ``metrics.csv`` / TensorBoard /
Weights & Biases, and exact resumption from the newest readable checkpoint.

:func:`meta_train` is the supervised entry point (regression, images, text): it wraps the
learner and task sampler in a :class:`~mamlkit.supervised.SupervisedStep`. MAML-RL plugs in
with :class:`mamlkit.rl.step.RLStep`. In a data-parallel run (``torch.distributed`` initialised,
as ``mamlkit train`` does under torchrun) rank 0 logs and checkpoints.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from mamlkit.checkpoint import remove_stale_temporaries, save_checkpoint
from mamlkit.config import TrainConfig
from mamlkit.core.learner import MetaLearner
from mamlkit.distributed import SINGLE_PROCESS, DistributedContext, barrier, current_context, run_on_main
from mamlkit.integrations.wandb import log_row as log_wandb_row
from mamlkit.integrations.wandb import start_run as wandb_run
from mamlkit.loop_config import LoopConfig, loop_config
from mamlkit.metrics_log import BASE_FIELDS as CSV_FIELDS  # noqa: F401 - public name
from mamlkit.metrics_log import MetricsLog
from mamlkit.metrics_log import read_rows as _read_rows  # noqa: F401 - used by the tests
from mamlkit.run_guard import (  # noqa: F401 - NonFiniteError, ResumeWarning, stop_code: public here
    MAX_SKIPS_IN_A_ROW,
    NON_FINITE,
    NonFiniteError,
    Outcome,
    ResumeWarning,
    StopFlags,
    StopSignals,
    non_finite_message,
    restore,
    resume_point,
    stop_code,
)
from mamlkit.supervised import (  # noqa: F401 - public here, as before the step had a module
    SupervisedStep,
    TaskSampler,
    apply_training_options,
    autocast_factory,
    build_optimizer,
    check_model_fits_task,
    move_batch,
    pin_batch,
    preflight,
    validate,
)
from mamlkit.tasks.base import TaskBatch


class MetaStep(Protocol):
    """One meta-iteration of an algorithm, as :func:`train_loop` drives it.

    ``run`` computes the update of meta-iteration ``iteration`` (1-based), applies it when the
    loss and the update are finite (drops it otherwise) and returns an :class:`Outcome` with the
    metrics (``loss`` at least). ``state_dict``/``load_state_dict`` hold everything an exact
    resume needs (model, optimizer, task sampler and random states); the loop stores the dict at
    the top level of its checkpoints, so the weights live under ``learner``.
    """

    validates: bool
    """Whether :meth:`validate` scores held-out tasks (else it is never called)."""
    higher_is_better: bool
    """The validation metric: ``val_accuracy`` (higher is better) or ``val_loss``."""
    shown: dict[str, str]
    """Metrics the progress bar shows besides the loss (name -> label)."""

    def begin(self, resumed: bool, say: Callable[[str], None]) -> None: ...

    def run(self, iteration: int, stop: StopFlags) -> Outcome: ...

    def validate(self) -> dict[str, float]: ...

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


def meta_train(
    learner: MetaLearner,
    tasks: TaskSampler,
    config: LoopConfig | TrainConfig | Mapping[str, Any] | None = None,
    run_dir: str | Path = "",
    *,
    val_batch: TaskBatch | None = None,
    resume: bool = False,
    distributed: DistributedContext | None = None,
    progress: bool = True,
    title: str = "",
    **settings: Any,
) -> TrainResult:
    """Meta-train ``learner`` on tasks from ``tasks`` and checkpoint into ``run_dir``.

    Args:
        learner: the algorithm (its parameters are optimised in place).
        tasks: the meta-training task distribution.
        config: the loop's settings: a :class:`~mamlkit.loop_config.LoopConfig`, a
            :class:`~mamlkit.config.TrainConfig` (only its loop fields are read) or a dict of
            loop settings; ``settings`` (keywords) add to or override them. A dict key or keyword
            the loop does not use raises ``ValueError`` naming it. Checkpoints record a
            ``TrainConfig`` whole (under ``config``), else the loop's settings.
        run_dir: where ``checkpoints/``, ``metrics.csv`` and ``tensorboard/`` go.
        val_batch: fixed held-out tasks; validated every ``val_every`` iterations and used to
            keep ``checkpoints/best.pt`` (lowest loss, or highest accuracy when classifying; a
            non-finite validation result is never the best).
        resume: continue exactly where the newest readable checkpoint stopped (see
            :func:`train_loop`).
        distributed: the data-parallel context; ``None`` detects an initialised
            ``torch.distributed`` process group (see :mod:`mamlkit.distributed`). Every process
            calls ``meta_train`` with the same arguments; ``tasks`` is re-seeded per rank on a new
            run, rank 0 logs and writes checkpoints.
        progress: show a tqdm progress bar.
        title: the progress bar's title (default ``meta-train TASK``).
    """
    if not str(run_dir):
        raise ValueError("meta_train needs run_dir: the folder for checkpoints and metrics.csv.")
    loop = loop_config(config, **settings)
    if title:
        loop = loop_config(loop, title=title)
    context = current_context() if distributed is None else distributed
    step = SupervisedStep(learner, tasks, loop, context, val_batch)
    record = config if isinstance(config, TrainConfig) else loop
    return train_loop(step, loop, run_dir, resume=resume, context=context, progress=progress,
                      record=record)


def train_loop(step: MetaStep, config: LoopConfig, run_dir: str | Path, *, resume: bool = False,
               context: DistributedContext = SINGLE_PROCESS, progress: bool = True,
               record: Any = None) -> TrainResult:
    """Run ``step`` for ``config.iterations`` meta-iterations, checkpointing into ``run_dir``.

    ``resume`` continues exactly where the newest readable checkpoint stopped (the step's
    states, iteration counter, elapsed time, best metric): ``last.pt``, or when it is damaged the
    newest of ``iter_*.pt`` and ``best.pt``, with a :class:`ResumeWarning` naming it. A stage
    that never wrote a checkpoint starts from iteration 0 (also with a warning); one whose
    checkpoints are all gone or unreadable raises ``ValueError`` before anything is written.
    ``record`` (an object with ``to_dict()`` and ``wandb``; default ``config``) is stored in every
    checkpoint under ``config`` and given to Weights & Biases.

    A SIGINT or SIGTERM ends the current meta-iteration, writes ``last.pt`` and returns with
    ``stopped_early`` naming the signal; so does the time budget. A non-finite loss or update
    raises :class:`NonFiniteError` (``on_nonfinite='stop'``) or skips the step (``'skip'``,
    counted in ``skipped_steps``, in metrics.csv and in a warning); :data:`MAX_SKIPS_IN_A_ROW`
    skipped in a row still raise, and a run whose every step was skipped returns with
    ``stopped_early`` starting with :data:`NON_FINITE` (``mamlkit train`` exits 3).
    """
    record = config if record is None else record
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if config.threads:
        torch.set_num_threads(config.threads)
    if context.is_main and run_dir.is_dir():
        remove_stale_temporaries(ckpt_dir)
    start, elapsed, best, skipped = 0, 0.0, None, 0
    point = run_on_main(lambda: resume_point(run_dir, config.checkpoint_every), context) if resume else None
    if point is not None:
        restore(point, step, context)
        start, elapsed, best = point.state["iteration"], point.state["elapsed_s"], \
            point.state["best_metric"]
        skipped = int(point.state.get("skipped_steps", 0))
        if start > config.iterations:
            raise ValueError(
                f"{point.path} is at iteration {start}, past iterations = {config.iterations}: "
                f"resuming would rewind the run. Pass iterations >= {start} (--iterations).")
        point = None
    say = tqdm.write if progress and context.is_main else (lambda _: None)
    step.begin(bool(start), say)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    saved_at = start if resume and start else None

    def improved(metric: float) -> bool:
        if not math.isfinite(metric):
            return False
        if best is None:
            return True
        return metric > best if step.higher_is_better else metric < best

    def checkpoint(name: str, iteration: int) -> None:
        state = step.state_dict()  # collective in a distributed run
        if context.is_main:
            save_checkpoint(ckpt_dir / name, {
                "iteration": iteration, "elapsed_s": elapsed, "best_metric": best,
                "skipped_steps": skipped, **state, "world_size": context.world_size,
                "config": record.to_dict()})

    log = MetricsLog(run_dir, start if resume else None, config.tensorboard) \
        if context.is_main else None
    tracker = wandb_run(record, run_dir) if context.is_main else None
    result = TrainResult(iteration=start, elapsed_s=elapsed, best_metric=best)
    stops = StopSignals()
    budget_s = config.time_budget_minutes * 60.0
    bar = None  # opened after the first meta-iteration, so the lines it prints come before it
    iteration = start
    best_written = resume and best is not None and step.validates
    skipped_in_a_row = 0
    try:
        with stops.installed():
            for iteration in range(start + 1, config.iterations + 1):
                tick = time.perf_counter()
                outcome = step.run(iteration, StopFlags(bool(stops.received),
                                                        bool(budget_s and elapsed >= budget_s)))
                metrics = outcome.metrics
                if bar is None:
                    bar = tqdm(total=config.iterations, initial=iteration - 1,
                               disable=not (progress and context.is_main), mininterval=1.0,
                               desc=config.title, dynamic_ncols=True)
                if outcome.finite:
                    skipped_in_a_row = 0
                elif config.on_nonfinite == "stop":
                    raise NonFiniteError(non_finite_message(iteration, metrics["loss"], ckpt_dir,
                                                             saved_at))
                else:
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
                row = {"iteration": iteration, "elapsed_s": round(elapsed, 3), **metrics}
                if config.on_nonfinite == "skip":
                    row["skipped_steps"] = skipped
                if step.validates and config.val_every and iteration % config.val_every == 0:
                    row.update(step.validate())
                    metric = row["val_accuracy" if step.higher_is_better else "val_loss"]
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
                shown.update({label: f"{metrics[name]:.3f}" for name, label in step.shown.items()
                              if name in metrics})
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
                stop = outcome.stop or StopFlags(bool(stops.received),
                                                 bool(budget_s and elapsed >= budget_s))
                if stop.signal:
                    result.stopped_early = f"received {stops.received or 'a stop signal'}"
                    break
                if stop.budget:
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
                      UserWarning, stacklevel=3)
    result.iteration, result.elapsed_s = iteration, elapsed
    if not step.validates:
        best = None
    elif best is None and result.history and context.is_main:
        warnings.warn(f"{run_dir}: no validation gave a finite result, so best.pt holds the final "
                      "weights.", UserWarning, stacklevel=3)
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
