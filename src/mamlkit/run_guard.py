"""What keeps a meta-training run whole: stop signals, non-finite steps, and choosing and
restoring the checkpoint a resumed run continues from (used by :func:`mamlkit.train.train_loop`)."""

from __future__ import annotations

import math
import re
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mamlkit.checkpoint import ResumePoint, find_resume_point
from mamlkit.distributed import DistributedContext
from mamlkit.faults import EXIT_NON_FINITE, EXIT_SIGNAL_BASE
from mamlkit.metrics_log import read_log

if TYPE_CHECKING:
    from mamlkit.train import MetaStep

MAX_SKIPS_IN_A_ROW = 20
"""With ``on_nonfinite='skip'``, this many non-finite meta-iterations in a row stop the run: the
model is not going to recover by itself."""


class NonFiniteError(RuntimeError):
    """A meta-iteration produced a NaN or infinite loss or gradient."""


class ResumeWarning(UserWarning):
    """A resumed run did not continue from ``last.pt`` (damaged), or a stage starts over."""


@dataclass(frozen=True)
class StopFlags:
    """Whether a run should stop after this meta-iteration: a stop signal arrived, or the time
    budget is spent."""

    signal: bool = False
    budget: bool = False


@dataclass
class Outcome:
    """What one meta-iteration reports to the loop.

    ``metrics`` holds at least ``loss``; ``finite`` says whether the loss and the update were
    finite (a non-finite update has not been applied); ``stop`` is the stop decision all
    processes agreed on in a distributed run (``None``: the loop decides alone).
    """

    metrics: dict[str, float]
    finite: bool
    stop: StopFlags | None = None


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag so the loop can save a checkpoint before exiting."""

    def __init__(self) -> None:
        self.received: str = ""

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Catch SIGINT and SIGTERM while the block runs (main thread only), then restore."""
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


NON_FINITE = "non-finite"
"""How ``TrainResult.stopped_early`` begins when every meta-iteration was skipped."""


def stop_code(stopped_early: str) -> int:
    """The exit code a run stopped for ``stopped_early`` (``TrainResult``) ends with: 128 + N for
    signal N, 3 when every step was non-finite, 0 otherwise (finished, or its time budget)."""
    found = re.fullmatch(r"received (SIG[A-Z0-9]+)", stopped_early or "")
    if found:
        return EXIT_SIGNAL_BASE + int(signal.Signals[found.group(1)])
    return EXIT_NON_FINITE if (stopped_early or "").startswith(NON_FINITE) else 0


def all_finite(loss: float, params: list[torch.nn.Parameter]) -> bool:
    """Whether ``loss`` and every parameter's gradient are finite (one fused norm per tensor)."""
    if not math.isfinite(loss):
        return False
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.isfinite(torch.stack(norms)).all())


def restore(point: ResumePoint, step: MetaStep, context: DistributedContext) -> None:
    """Load a resume checkpoint into ``step`` (model, optimizer, task sampler and random states);
    ``ValueError`` naming the file when it was written by another model or process count."""
    state, path = point.state, point.path
    saved_world = int(state.get("world_size", 1))
    if saved_world != context.world_size:
        raise ValueError(
            f"{path} was written by a run with {saved_world} process(es) but this run has "
            f"{context.world_size}: each process's task stream is saved separately, so an exact "
            f"resume needs the same number of processes (torchrun --nproc-per-node "
            f"{saved_world} ...). Or start a new run from this checkpoint's weights.")
    try:
        step.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as error:
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise ValueError(
            f"{path} does not fit this model or algorithm ({type(error).__name__}: "
            f"{detail[:400]}). Resume with the configuration the run was started with, or start "
            "a new run.") from error


def resume_point(run_dir: Path, checkpoint_every: int, announce: bool = True
                 ) -> ResumePoint | None:
    """Where a resumed stage in ``run_dir`` continues from.

    The newest readable checkpoint (a :class:`ResumeWarning` names it when it is not
    ``last.pt``), or ``None`` when the stage never wrote one (it starts again from iteration 0,
    also announced when it had begun). Raises ``ValueError`` when every checkpoint is unreadable,
    or when there is none but ``metrics.csv`` logs iterations past the first checkpoint (they were
    deleted): a stage never restarts silently. ``announce=False`` only checks.
    """
    ckpt_dir = run_dir / "checkpoints"
    point = find_resume_point(ckpt_dir)
    if point is not None:
        if point.unreadable and announce:
            warnings.warn(
                f"resuming from {point.path} (iteration {point.state['iteration']}), the newest "
                f"checkpoint that loads; passed over: {'; '.join(point.unreadable)}",
                ResumeWarning, stacklevel=3)
        return point
    logged = [int(row["iteration"]) for row in read_log(run_dir / "metrics.csv", 10**18)[1]]
    if logged and max(logged) >= checkpoint_every:
        raise ValueError(
            f"{ckpt_dir} holds no checkpoint, but {run_dir / 'metrics.csv'} logs meta-iteration "
            f"{max(logged)}, past the first checkpoint (every {checkpoint_every}): the "
            "checkpoints were deleted or moved. Put them back, or start the run again with "
            "--overwrite.")
    if (logged or ckpt_dir.is_dir()) and announce:
        warnings.warn(f"{run_dir} stopped before its first checkpoint; it starts again from "
                      "iteration 0.", ResumeWarning, stacklevel=3)
    return None


def non_finite_message(iteration: int, loss: float, ckpt_dir: Path, saved_at: int | None,
                        what: str = "") -> str:
    """What happened, which checkpoint is kept, and the two ways on."""
    happened = what or f"Non-finite loss or gradient at meta-iteration {iteration} (loss {loss})"
    kept = (f"The last good checkpoint is {ckpt_dir / 'last.pt'} (iteration {saved_at})."
            if saved_at else "No checkpoint was written yet.")
    on = ("Start a new run with a lower meta_lr or inner_lr (--meta-lr, --inner-lr), or skip "
          "such steps with --on-nonfinite skip (on_nonfinite = 'skip')")
    on += " (with --resume, to continue from that checkpoint)." if saved_at else "."
    return f"{happened}. {kept} {on}"
