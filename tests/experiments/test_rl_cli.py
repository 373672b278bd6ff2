"""The RL task families through the mamlkit command: train, resume, evaluate, bad input, and the
shared training loop's guarantees (time budget, SIGTERM, SIGKILL then an exact resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("gymnasium", reason='the RL experiments need the rl extra: pip install "mamlkit[rl]"')

from mamlkit.checkpoint import load_checkpoint  # noqa: E402
from mamlkit.cli import main  # noqa: E402
from mamlkit.metrics_log import read_rows  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"

TINY = ["--iterations", "2", "--trajectories", "3", "--meta-batch-size", "2", "--test-tasks", "3",
        "--baseline-iterations", "1", "--checkpoint-every", "1", "--no-plots"]


def test_nav2d_trains_resumes_and_evaluates(tmp_path, capsys) -> None:
    run = tmp_path / "nav"
    assert main(["train", "nav2d", "--run-dir", str(run), "--no-eval", *TINY]) == 0
    assert main(["train", "nav2d", "--run-dir", str(run), "--resume", "--inner-lr", "0.5"]) == 2
    assert "--resume cannot change inner_lr 0.1 -> 0.5" in capsys.readouterr().err
    assert main(["train", "nav2d", "--run-dir", str(run), "--resume", "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "average return after k adaptation steps" in out
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results) == {"MAML", "pretrained", "random init"}
    assert len(results["MAML"]) == 4  # 0..3 adaptation steps
    assert json.loads((run / "config.json").read_text())["iterations"] == 3


@pytest.mark.parametrize("argv, message", [
    (["train", "nav3d"], "Unknown task 'nav3d'"),
    (["train", "nav2d", "--algo", "reptile"], "run MAML-TRPO only"),
    (["train", "nav2d", "--shots", "3"], "the rollouts per task are --trajectories"),
])
def test_rl_bad_input(argv, message, tmp_path, capsys) -> None:
    assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ the shared loop's guarantees
FAST = ["--trajectories", "2", "--meta-batch-size", "2", "--baseline-iterations", "1",
        "--checkpoint-every", "1", "--threads", "1", "--no-tensorboard", "--no-eval", "--no-plots"]
TIMINGS = {"elapsed_s", "sampling_s", "inner_s", "outer_s"}
"""Wall-clock columns of metrics.csv: the only ones that differ between identical runs."""


def _last(stage: Path) -> int:
    path = stage / "checkpoints" / "last.pt"
    return load_checkpoint(path)["iteration"] if path.exists() else 0


def _start(run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "mamlkit.cli", "train", "nav2d", "--run-dir",
                             str(run), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_until(condition, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be stopped:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run made no progress in time")
        time.sleep(0.02)


def _rows(stage: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS}
            for row in read_rows(stage / "metrics.csv", 10**9)]


def test_nav2d_time_budget_stops_with_a_checkpoint(tmp_path, capsys) -> None:
    run = tmp_path / "budget"
    assert main(["train", "nav2d", "--run-dir", str(run), "--iterations", "50",
                 "--time-budget-minutes", "0.0001", *FAST]) == 0
    assert "stopped (time budget of 0.0001 min)" in capsys.readouterr().out
    assert _last(run / "maml") == 1  # the first iteration spends the budget, then a checkpoint
    assert [r["iteration"] for r in read_rows(run / "maml" / "metrics.csv", 10**9)] == ["1"]
    assert not (run / "pretrained").exists()  # a stopped stage ends the run
    saved = json.loads((run / "config.json").read_text())
    assert saved["trajectories"] == 2 and saved["provenance"]["torch_version"] == torch.__version__
    assert sorted(p.name for p in run.glob("**/config.json")) == ["config.json"]  # one per run


def test_nav2d_sigterm_then_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path) -> None:
    iterations = ["--iterations", "7"]
    reference = tmp_path / "reference"
    assert main(["train", "nav2d", "--run-dir", str(reference), *iterations, *FAST]) == 0
    run = tmp_path / "stopped"
    process = _start(run, *iterations, *FAST)  # SIGTERM: ends the iteration, checkpoints, 143
    _wait_until(lambda: _last(run / "maml") >= 2, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    stopped_at = _last(run / "maml")
    assert stopped_at < 7 and int(read_rows(run / "maml" / "metrics.csv", 10**9)[-1]["iteration"]) \
        == stopped_at  # the checkpoint is of the last iteration taken
    process = _start(run, "--resume")  # SIGKILL: no chance to write anything
    _wait_until(lambda: _last(run / "maml") >= stopped_at + 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it was killed"
    assert main(["train", "nav2d", "--run-dir", str(run), "--resume"]) == 0
    for stage in ("maml", "pretrained"):
        expected = load_checkpoint(reference / stage / "checkpoints" / "last.pt")
        resumed = load_checkpoint(run / stage / "checkpoints" / "last.pt")
        assert resumed["iteration"] == expected["iteration"]
        for name, value in expected["learner"].items():
            assert torch.equal(resumed["learner"][name], value), (stage, name)
        assert _rows(run / stage) == _rows(reference / stage), stage
