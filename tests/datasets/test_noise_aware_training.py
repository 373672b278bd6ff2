"""``mamlkit train images --train-support-noise``: noise-aware meta-training from the command
line, on real digits written as a folder tree: it changes the training, resumes exactly, and is
refused in one line where it does not apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from image_trees import write_digits

from mamlkit.checkpoint import load_checkpoint
from mamlkit.cli import main

TINY = ["--ways", "3", "--shots", "2", "--iterations", "4", "--meta-batch-size", "2",
        "--hidden", "4", "--image-size", "16", "--class-split", "4,3,3", "--val-tasks", "2",
        "--val-every", "0", "--checkpoint-every", "2", "--baseline", "none", "--no-eval",
        "--no-tensorboard", "--no-plots", "--threads", "1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("noise-trees")
    root = write_digits(base / "digits", per_class=8)
    return ["--data-root", str(root), "--cache-dir", str(base / "cache")]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "maml" / "checkpoints" / "last.pt")
    assert state["iteration"] == 4
    return state["step"]["learner"] if "step" in state else state["learner"]


def _train(digits: list[str], run: Path, *extra: str) -> int:
    return main(["train", "images", *digits, "--run-dir", str(run), *TINY, *extra])


def test_noise_aware_training_changes_the_run_and_resumes_exactly(digits, tmp_path) -> None:
    noisy = ["--train-support-noise", "0.5", "--train-noise-kind", "pair"]
    assert _train(digits, tmp_path / "clean") == 0
    assert _train(digits, tmp_path / "straight", *noisy) == 0
    assert _train(digits, tmp_path / "resumed", *noisy, "--iterations", "2") == 0
    assert main(["train", "images", "--run-dir", str(tmp_path / "resumed"), "--resume",
                 "--iterations", "4", "--no-eval"]) == 0
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    clean = _weights(tmp_path / "clean")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    assert any(not torch.equal(value, clean[name]) for name, value in straight.items())


def test_changing_the_noise_on_resume_is_refused(digits, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(digits, run, "--train-support-noise", "0.2", "--iterations", "2") == 0
    capsys.readouterr()
    assert main(["train", "images", "--run-dir", str(run), "--resume",
                 "--train-support-noise", "0.4"]) == 2
    assert "train_support_noise 0.2 -> 0.4" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["sinusoid", "--train-support-noise", "0.2"],
     "'sinusoid' does not take it: drop --train-support-noise"),
    (["omniglot", "--train-support-noise", "1.5"], "train_support_noise must be a fraction"),
    (["omniglot", "--train-support-noise", "0.2", "--train-noise-kind", "gaussian"],
     "train_noise_kind must be one of"),
])
def test_noise_aware_training_is_refused_where_it_does_not_apply(argv, message, tmp_path,
                                                                  capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *argv, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run.exists()
