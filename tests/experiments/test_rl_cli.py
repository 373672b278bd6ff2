"""The RL task families through the mamlkit command: train, resume, evaluate, bad input."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gymnasium", reason='the RL experiments need the rl extra: pip install "mamlkit[rl]"')

from mamlkit.cli import main  # noqa: E402

TINY = ["--iterations", "2", "--shots", "3", "--meta-batch-size", "2", "--test-tasks", "3",
        "--baseline-iterations", "1", "--checkpoint-every", "1", "--no-plots"]


def test_nav2d_trains_resumes_and_evaluates(tmp_path, capsys) -> None:
    run = tmp_path / "nav"
    assert main(["train", "nav2d", "--run-dir", str(run), "--no-eval", *TINY]) == 0
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
])
def test_rl_bad_input(argv, message, tmp_path, capsys) -> None:
    assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
