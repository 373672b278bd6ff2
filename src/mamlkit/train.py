"""The meta-training loop shared by every supervised domain (regression, images, text).

One loop owns the outer optimizer, validation, best-model selection, metrics (CSV, optional
TensorBoard), atomic checkpoints and exact resumption; the algorithm only supplies
``meta_backward`` (see :class:`mamlkit.core.learner.MetaLearner`) and the domain only supplies a
task sampler with ``sample(n)`` and ``state_dict()``/``load_state_dict()``.
"""

from __future__ import annotations

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

from mamlkit.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mamlkit.config import TrainConfig
from mamlkit.core.learner import MetaLearner
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


def validate(learner: MetaLearner, batch: TaskBatch, steps: int) -> dict[str, float]:
    """Mean query loss (and accuracy) after ``steps`` adaptation steps on held-out tasks."""
    curve = learner.adaptation_curve(batch, steps)
    out = {"val_loss": float(curve["query_loss"][-1].mean())}
    if "query_accuracy" in curve:
        out["val_accuracy"] = float(curve["query_accuracy"][-1].mean())
    return out


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
        rows: list[dict[str, str]] = []
        if resume_from is not None and self.path.exists():
            with self.path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["iteration"]) <= resume_from]
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


def meta_train(
    learner: MetaLearner,
    tasks: TaskSampler,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    val_batch: TaskBatch | None = None,
    resume: bool = False,
    sync_gradients: Callable[[MetaLearner], None] | None = None,
    is_main_process: bool = True,
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
            task sampler and random states, iteration counter, elapsed time).
        sync_gradients: called after each backward pass (distributed all-reduce).
        is_main_process: only the main process logs and writes checkpoints.
        progress: show a tqdm progress bar.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    device = torch.device(config.device)
    params = list(learner.parameters())
    optimizer = build_optimizer(config, iter(params))
    start, elapsed, best = 0, 0.0, None
    if resume:
        state = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        tasks.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        start, elapsed, best = state["iteration"], state["elapsed_s"], state["best_metric"]
    classification = learner.classification
    higher_is_better = classification and val_batch is not None

    def improved(metric: float) -> bool:
        if best is None:
            return True
        return metric > best if higher_is_better else metric < best

    def checkpoint(name: str, iteration: int) -> None:
        if not is_main_process:
            return
        save_checkpoint(ckpt_dir / name, {
            "iteration": iteration, "elapsed_s": elapsed, "best_metric": best,
            "learner": learner.state_dict(), "optimizer": optimizer.state_dict(),
            "sampler": tasks.state_dict(), "rng": rng_state(), "config": config.to_dict(),
        })

    log = _MetricsLog(run_dir, start if resume else None, config.tensorboard) \
        if is_main_process else None
    result = TrainResult(iteration=start, elapsed_s=elapsed, best_metric=best)
    stops = _StopSignals()
    budget_s = config.time_budget_minutes * 60.0
    bar = tqdm(total=config.iterations, initial=start, disable=not (progress and is_main_process),
               desc=f"meta-train {config.task}", dynamic_ncols=True, mininterval=1.0)
    iteration = start
    try:
        with stops.installed():
            for iteration in range(start + 1, config.iterations + 1):
                if hasattr(learner, "set_iteration"):
                    learner.set_iteration(iteration - 1)
                tick = time.perf_counter()
                batch = tasks.sample(config.meta_batch_size).to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                metrics = learner.meta_backward(batch)
                if sync_gradients is not None:
                    sync_gradients(learner)
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
                if val_batch is not None and config.val_every and iteration % config.val_every == 0:
                    row.update(validate(learner, val_batch, config.eval_inner_steps))
                    metric = row["val_accuracy" if higher_is_better else "val_loss"]
                    if improved(metric):
                        best = metric
                        checkpoint("best.pt", iteration)
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
                        _prune(ckpt_dir, config.keep_checkpoints)
                if stops.received:
                    result.stopped_early = f"received {stops.received}"
                    break
                if budget_s and elapsed >= budget_s:
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
    if val_batch is None or not (ckpt_dir / "best.pt").exists():
        checkpoint("best.pt", iteration)
    return result


def _prune(ckpt_dir: Path, keep: int) -> None:
    periodic = sorted(ckpt_dir.glob("iter_*.pt"))
    for old in periodic[:-keep]:
        old.unlink(missing_ok=True)
