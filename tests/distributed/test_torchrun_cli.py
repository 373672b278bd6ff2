"""``mamlkit train`` under torchrun: detects the environment, trains with 2 gloo processes, rank 0
alone reports and writes checkpoints that hold both processes' task streams."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from mamlkit.checkpoint import load_checkpoint
from mamlkit.cli import main

TINY = ["--iterations", "6", "--meta-batch-size", "4", "--val-every", "3", "--val-tasks", "5",
        "--checkpoint-every", "3", "--no-tensorboard", "--no-eval"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mamlkit_train_under_torchrun(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "mamlkit.cli", "train", "linear", "--run-dir", str(run), *TINY]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 only
    assert "(2 processes, gloo)" in done.stdout
    for name in ("maml", "pretrained"):
        state = load_checkpoint(run / name / "checkpoints" / "last.pt")
        assert state["iteration"] == 6 and state["world_size"] == 2 and len(state["ranks"]) == 2
    # one process cannot continue the two task streams exactly: clear error, checkpoint intact
    before = (run / "maml" / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", "linear", "--run-dir", str(run), "--resume", "--iterations", "9",
                 "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "written by a run with 2 process(es) but this run has 1" in err
    assert "--nproc-per-node 2" in err
    assert (run / "maml" / "checkpoints" / "last.pt").read_bytes() == before
