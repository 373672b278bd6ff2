"""The mamlkit command and its configuration: end to end on a tiny budget, and bad input."""

from __future__ import annotations

import json

import pytest

from mamlkit.cli import main
from mamlkit.config import make_config, read_config_file

TINY = ["--iterations", "6", "--meta-batch-size", "3", "--val-every", "3", "--val-tasks", "5",
        "--test-tasks", "20", "--eval-inner-steps", "2", "--checkpoint-every", "3",
        "--no-tensorboard"]


def test_train_then_eval_sinusoid_end_to_end(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "query MSE after k gradient steps" in out and "pretrained" in out
    assert "meta-batch of 3 tasks: batching vmap, eager" in out  # how the steps run
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["mse"]) == {"5", "10", "20"}
    assert len(results["mse"]["10"]["MAML"]) == 3  # 0, 1, 2 steps
    assert (run / "plots" / "fig2_regression_fits.png").stat().st_size > 1000
    assert (run / "plots" / "fig3_mse_vs_steps_k10.png").is_file()
    assert main(["eval", str(run), "--test-tasks", "10", "--no-plots"]) == 0
    assert "over 10 held-out tasks" in capsys.readouterr().out


def test_resume_extends_a_finished_run(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "linear", "--run-dir", str(run), "--no-eval", *TINY]) == 0
    assert main(["train", "linear", "--run-dir", str(run), "--resume", "--iterations", "9",
                 "--no-eval"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["maml"]["iterations"] == 9


@pytest.mark.parametrize("argv, message", [
    (["train", "sinewave"], "Unknown task 'sinewave'. Known tasks:"),
    (["train", "sinusoid", "--algo", "mamll"], "Unknown algorithm 'mamll'"),
    (["train", "sinusoid", "--inner-lr", "0"], "inner_lr must be > 0"),
    (["train", "sinusoid", "--ways", "1"], "ways must be >= 2"),
    (["train", "sinusoid", "--shots", "0"], "shots must be >= 1"),
    (["train", "sinusoid", "--inner-steps", "-1"], "inner_steps must be >= 0"),
    (["train", "sinusoid", "--resume"], "--resume needs --run-dir"),
    (["eval", "/nonexistent/run"], "is not a mamlkit run directory"),
])
def test_cli_bad_input(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_resume_with_missing_or_corrupt_checkpoint(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), "--resume"]) == 2
    assert "is not a mamlkit run directory" in capsys.readouterr().err
    assert main(["train", "linear", "--run-dir", str(run), "--no-eval", *TINY]) == 0
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("maml", "pretrained"):
        (run / name / "checkpoints").rename(aside / name)
    assert main(["train", "linear", "--run-dir", str(run), "--resume", "--no-eval"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    for name in ("maml", "pretrained"):
        (aside / name).rename(run / name / "checkpoints")
    (run / "maml" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert main(["train", "linear", "--run-dir", str(run), "--resume", "--no-eval"]) == 0
    assert "corrupt or unreadable" in capsys.readouterr().err  # said, then the older one is used


def test_new_run_refuses_a_non_empty_directory(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    assert main(["train", "linear", "--run-dir", str(run), *TINY]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (run / "precious.txt").read_text() == "keep me"


def test_config_file_errors(tmp_path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('meta_batch_size = 8\ninner_lr = 1\neval_shots = [5, 10]\n')
    assert read_config_file(good) == {"meta_batch_size": 8, "inner_lr": 1.0, "eval_shots": [5, 10]}
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("meta_batchsize = 8\n")
    with pytest.raises(ValueError, match="Unknown config key 'meta_batchsize'"):
        read_config_file(unknown)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('iterations = "many"\n')
    with pytest.raises(ValueError, match="'iterations' .* must be of type int"):
        read_config_file(wrong)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_config_file(broken)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_config({"optimizer": "lbfgs"})


def test_fomaml_by_name_trains(tmp_path) -> None:
    assert main(["train", "linear", "--algo", "fomaml", "--run-dir", str(tmp_path / "r"),
                 "--no-eval", *TINY]) == 0


def test_evaluation_names_the_trained_algorithm(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--algo", "metasgd", "--run-dir", str(run), *TINY,
                 "--eval-shots", "5", "--no-plots"]) == 0
    table = capsys.readouterr().out
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["mse"]["5"]) == {"Meta-SGD", "pretrained"}
    assert "  5 Meta-SGD " in table and " MAML " not in table
