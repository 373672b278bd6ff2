"""Fault tolerance of the training loop, with real processes.

- SIGINT/SIGTERM: the run finishes its meta-iteration, writes ``last.pt`` and exits cleanly.
- SIGKILL at random moments, three times: every restart resumes from the last checkpoint (which
  always loads), and the final parameters and logged metrics equal those of a run that was never
  interrupted (same task, dropout and validation random streams).
- Leftovers of a kill (a torn temporary checkpoint, a torn metrics row) are cleaned up on resume.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mamlkit import MAML, Sinusoid
from mamlkit.checkpoint import load_checkpoint, remove_stale_temporaries
from mamlkit.cli import main
from mamlkit.config import make_config
from mamlkit.train import _read_rows, meta_train

HERE = Path(__file__).resolve().parent
ITERATIONS = 120


class SlowSinusoid(Sinusoid):
    """Sinusoid tasks with a pause per meta-batch, so a run lasts long enough to be interrupted."""

    def __init__(self, pause_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pause_s = pause_s

    def sample(self, num_tasks, generator=None):
        time.sleep(self.pause_s)
        return super().sample(num_tasks, generator)


def run_tiny(run_dir: str | Path, iterations: int = ITERATIONS, resume: bool = False,
             pause_s: float = 0.0):
    """A tiny second-order MAML run with dropout (so the dropout random stream matters)."""
    torch.set_num_threads(1)
    config = make_config({"iterations": iterations, "meta_batch_size": 4, "val_every": 20,
                          "val_tasks": 6, "checkpoint_every": 10, "keep_checkpoints": 2,
                          "tensorboard": False, "eval_inner_steps": 1, "inner_lr": 0.01})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    learner = MAML(model, inner_lr=0.01, inner_steps=1, loss="mse")
    result = meta_train(learner, SlowSinusoid(pause_s, seed=0), config, run_dir, resume=resume,
                        val_batch=Sinusoid().fixed_tasks(6, seed=1), progress=False)
    return learner, result


SCRIPT = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from test_fault_tolerance import run_tiny
run_dir, resume, iterations, pause = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), float(sys.argv[4])
_, result = run_tiny(run_dir, iterations, resume, pause)
print("finished", result.iteration, repr(result.stopped_early), flush=True)
"""


def _start(run_dir: Path, resume: bool, iterations: int = ITERATIONS, pause_s: float = 0.01
           ) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(run_dir), "1" if resume else "0",
                             str(iterations), str(pause_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _last_iteration(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "last.pt"
    return load_checkpoint(path)["iteration"] if path.exists() else 0


def _wait_for(condition, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the run ended before it could be interrupted:\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run made no progress in time")
        time.sleep(0.01)


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "elapsed_s"}
            for row in _read_rows(run_dir / "metrics.csv", 10**9)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_writes_a_checkpoint_and_exits_cleanly(tmp_path, sig) -> None:
    process = _start(tmp_path, resume=False, iterations=100_000)
    _wait_for(lambda: (tmp_path / "checkpoints" / "last.pt").exists(), process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"received {sig.name}" in out
    stopped_at = int(out.split()[1])
    assert 10 <= stopped_at < 100_000
    assert _last_iteration(tmp_path) == stopped_at  # the checkpoint is of the last step taken


def test_sigkill_three_times_then_resume_equals_an_uninterrupted_run(tmp_path) -> None:
    reference, _ = run_tiny(tmp_path / "reference")
    run_dir = tmp_path / "killed"
    chooser = random.Random()
    history = []
    for kill in range(3):
        before = _last_iteration(run_dir)
        process = _start(run_dir, resume=kill > 0)
        target = before + chooser.randint(1, 25)
        _wait_for(lambda: _last_iteration(run_dir) >= target, process)  # noqa: B023
        time.sleep(chooser.uniform(0.0, 0.05))  # anywhere: mid-step, mid-checkpoint, mid-log
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, "the run finished before it was killed"
        after = _last_iteration(run_dir)  # the checkpoint left behind always loads
        assert before < after < ITERATIONS, history
        history.append(after)
    print(f"killed with SIGKILL after the checkpoints of iterations {history}")
    process = _start(run_dir, resume=True)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.split()[:2] == ["finished", str(ITERATIONS)]
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed["learner"][name], value), (name, history)
    assert _metric_rows(run_dir) == _metric_rows(tmp_path / "reference"), history
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["best_metric"] == load_checkpoint(
        tmp_path / "reference" / "checkpoints" / "best.pt")["best_metric"]
    periodic = sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*.pt"))
    assert periodic == ["iter_00000110.pt", "iter_00000120.pt"]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_resume_cleans_up_what_a_kill_leaves_behind(tmp_path) -> None:
    run_tiny(tmp_path, iterations=20)
    ckpt_dir = tmp_path / "checkpoints"
    torn = ckpt_dir / ".last.pt.abc123.tmp"
    torn.write_bytes(b"half a checkpoint")
    with (tmp_path / "metrics.csv").open("a") as handle:
        handle.write("3")  # a row cut short at iteration 30 would read as iteration 3
    assert remove_stale_temporaries(ckpt_dir) == [torn]
    torn.write_bytes(b"half a checkpoint")
    straight, _ = run_tiny(tmp_path / "straight", iterations=30)
    resumed, _ = run_tiny(tmp_path, iterations=30, resume=True)
    assert not torn.exists()
    assert _metric_rows(tmp_path) == _metric_rows(tmp_path / "straight")
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_non_finite_loss_from_the_command_line(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), "--inner-lr", "1e30", "--iterations",
                 "5", "--meta-batch-size", "2", "--checkpoint-every", "2", "--no-tensorboard"]) == 3
    err = capsys.readouterr().err
    assert "stopped: Non-finite loss or gradient at meta-iteration 1" in err
    assert "--on-nonfinite skip" in err
    assert not (run / "eval").exists()
