"""Faults met from the command line leave the run whole, print one line and exit honestly.

Exit codes (docs/reliability.md): 0 done, 1 a bug, 2 bad input, 3 non-finite, 4 the system refused,
128 + N stopped by signal N. What is about the process itself (signals, a traceback-free failed
download, a refused resume) runs ``mamlkit`` in a subprocess; the rest calls the same entry point,
``mamlkit.cli.main``, in this process to keep the suite fast.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mamlkit import MAML
from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.cli import main
from mamlkit.config import make_config
from mamlkit.models import MLP

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ["--iterations", "20", "--meta-batch-size", "2", "--val-every", "10", "--val-tasks", "4",
        "--checkpoint-every", "10", "--keep-checkpoints", "2", "--test-tasks", "4",
        "--eval-shots", "5", "--eval-inner-steps", "1", "--baseline-iterations", "4",
        "--no-plots", "--no-tensorboard"]


def mamlkit(*argv: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """``mamlkit ARGV`` in a subprocess, importing this checkout's source."""
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "mamlkit.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment, **kwargs)


def run(*argv: str, **kwargs) -> tuple[int, str, str]:
    process = mamlkit(*argv, **kwargs)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mamlkit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny sinusoid run (MAML 20 iterations, baseline 4), copied by each test."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--no-eval", *TINY]) == 0
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


# 1 -------------------------------------------------------------------------------------------
def test_refused_resume_writes_nothing_and_the_run_still_resumes(run_dir, capsys) -> None:
    before = snapshot(run_dir)
    code, _, err = run("train", "sinusoid", "--run-dir", str(run_dir), "--resume",
                       "--algo", "metasgd")
    assert code == 2
    assert "--resume cannot change algo 'maml' -> 'metasgd'" in one_error_line(err)
    assert snapshot(run_dir) == before  # config.json included
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations", "30",
                 "--no-eval"]) == 0
    assert load_checkpoint(run_dir / "maml" / "checkpoints" / "last.pt")["iteration"] == 30
    assert main(["eval", str(run_dir)]) == 0


@pytest.mark.parametrize("option", [["--ways", "3"], ["--hidden", "16"]])
def test_refused_omniglot_resume_keeps_its_config(tmp_path, capsys, option) -> None:
    run_dir = tmp_path / "omni"
    run_dir.mkdir()
    text = json.dumps(make_config({"task": "omniglot"}).to_dict())
    (run_dir / "config.json").write_text(text)
    assert main(["train", "omniglot", "--run-dir", str(run_dir), "--resume", *option]) == 2
    assert f"--resume cannot change {option[0][2:]}" in capsys.readouterr().err
    assert (run_dir / "config.json").read_text() == text


# 2 -------------------------------------------------------------------------------------------
def test_damaged_last_checkpoint_falls_back_and_says_which(run_dir, capsys) -> None:
    ckpt = run_dir / "maml" / "checkpoints"
    (ckpt / "last.pt").write_bytes(b"torn")
    rows_before = (run_dir / "maml" / "metrics.csv").read_text().splitlines()
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations", "30",
                 "--no-eval"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "iter_00000020.pt (iteration 20)" in err
    assert "last.pt is corrupt or unreadable" in err
    rows = (run_dir / "maml" / "metrics.csv").read_text().splitlines()
    assert rows[: len(rows_before)] == rows_before and len(rows) > len(rows_before)
    assert load_checkpoint(ckpt / "last.pt")["iteration"] == 30


def test_no_silent_restart_when_the_checkpoints_are_gone(run_dir, capsys) -> None:
    for path in (run_dir / "maml" / "checkpoints").iterdir():
        path.unlink()
    before = snapshot(run_dir)
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations",
                 "30"]) == 2
    assert "holds no checkpoint, but" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_unreadable_checkpoints_are_listed_and_nothing_is_written(run_dir, capsys) -> None:
    for path in (run_dir / "maml" / "checkpoints").iterdir():
        path.write_bytes(b"\0" * 10)
    before = snapshot(run_dir)
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "No checkpoint in" in err and "iter_00000010.pt is corrupt" in err
    assert snapshot(run_dir) == before


# 3 -------------------------------------------------------------------------------------------
def test_resume_cannot_rewind_the_iteration_counter(run_dir, capsys) -> None:
    before = snapshot(run_dir)
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations",
                 "10"]) == 2
    assert "would shorten the run" in capsys.readouterr().err
    assert snapshot(run_dir) == before


# 5 and 9 --------------------------------------------------------------------------------------
def test_every_step_skipped_exits_3_with_the_count(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), *TINY, "--iterations", "6",
                 "--inner-lr", "1e30", "--on-nonfinite", "skip", "--log-every", "1"]) == 3
    err = capsys.readouterr().err
    assert "all 6 meta-iterations had a non-finite loss or gradient and were skipped" in err
    assert not (run_dir / "eval").exists()
    rows = (run_dir / "maml" / "metrics.csv").read_text().splitlines()
    assert rows[0].endswith("skipped_steps") and len(rows) == 7 and rows[-1].endswith(",6")


def test_non_finite_before_any_checkpoint_says_so_with_the_flag(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), *TINY,
                 "--inner-lr", "1e30"]) == 3
    err = capsys.readouterr().err
    assert "No checkpoint was written yet" in err and "checkpoints" not in err.split("yet")[0]
    assert "--on-nonfinite skip" in err and "on_nonfinite='skip'" not in err


def test_a_run_stopped_before_its_first_checkpoint_gets_one_way_out(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "maml").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(make_config({"task": "sinusoid"}).to_dict()))
    (run_dir / "maml" / "metrics.csv").write_text("iteration,loss\n10,1.0\n")
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), *TINY]) == 2
    new_run = capsys.readouterr().err
    assert "--overwrite" in new_run and "--resume" not in new_run
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume"]) == 2
    resumed = capsys.readouterr().err
    assert "Start it again with --overwrite" in resumed
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), *TINY, "--overwrite",
                 "--no-eval"]) == 0


# 7 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_128_plus_n_with_a_resumable_checkpoint(tmp_path, sig) -> None:
    run_dir = tmp_path / "run"
    process = mamlkit("train", "sinusoid", "--run-dir", str(run_dir), *TINY, "--iterations",
                      "1000000", "--checkpoint-every", "5")
    last = run_dir / "maml" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 60
    while not last.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, err
    assert f"stopped by {sig.name}" in err and "--resume" in err
    assert "finished" not in out and "evaluation:" not in out and "plots:" not in out
    assert not (run_dir / "eval").exists() and not (run_dir / "plots").exists()
    assert load_checkpoint(last)["iteration"] >= 5


# 8 -------------------------------------------------------------------------------------------
def test_failed_download_is_one_line_without_traceback(tmp_path) -> None:
    unreachable = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
                   "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                   "no_proxy": "", "NO_PROXY": ""}
    code, _, err = run("train", "omniglot", "--run-dir", str(tmp_path / "run"), "--data-root",
                       str(tmp_path / "data"), "--download", env=unreachable)
    assert code == 4
    assert "could not download" in one_error_line(err)


def test_full_disk_names_the_file_and_keeps_the_last_checkpoint(run_dir, capsys,
                                                                 monkeypatch) -> None:
    last = run_dir / "maml" / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def disk_full(obj, handle) -> None:
        handle.write(b"part of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file

    monkeypatch.setattr(torch, "save", disk_full)
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations",
                 "30"]) == 4
    line = one_error_line(capsys.readouterr().err)
    assert "no space left on the device while writing" in line and "--resume" in line
    assert f"{run_dir / 'maml' / 'checkpoints'}/" in line  # the file that could not be written
    assert last.read_bytes() == before
    assert not list(last.parent.glob(".*.tmp"))
    monkeypatch.undo()  # space freed: the advice works
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations", "30",
                 "--no-eval"]) == 0


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a read-only /sys (Linux)")
def test_read_only_places_are_refused_before_any_work(run_dir, capsys) -> None:
    assert main(["train", "sinusoid", "--run-dir", "/sys/kernel/mamlkit-run", *TINY]) == 4
    assert "cannot write /sys/kernel/mamlkit-run" in one_error_line(capsys.readouterr().err)
    (run_dir / "eval").symlink_to("/sys/kernel")  # the results folder is read-only
    start = time.perf_counter()
    assert main(["eval", str(run_dir)]) == 4
    out, err = capsys.readouterr()
    assert "cannot write" in one_error_line(err) and "query MSE" not in out
    assert time.perf_counter() - start < 2


def test_run_dir_that_is_a_file(tmp_path, capsys) -> None:
    path = tmp_path / "run"
    path.write_text("not a folder")
    assert main(["train", "sinusoid", "--run-dir", str(path), *TINY]) == 2
    assert "is a file, not a folder" in one_error_line(capsys.readouterr().err)
    assert main(["train", "sinusoid", "--run-dir", str(path / "below"), *TINY]) == 2
    assert "part of that path is a file, not a folder" in one_error_line(capsys.readouterr().err)


def test_eval_of_a_checkpoint_of_another_model(run_dir, capsys) -> None:
    best = run_dir / "maml" / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    other = MAML(MLP((1, 8, 1)), inner_lr=0.01)  # another width: another task family's model
    save_checkpoint(best, {**state, "learner": other.state_dict()})
    assert main(["eval", str(run_dir)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{best} does not fit the model" in line and "size mismatch" in line


# 10 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--inner-lr", "inf"], "inner_lr must be a finite number, got inf"),
    (["--meta-lr", "inf"], "meta_lr must be a finite number, got inf"),
    (["--time-budget-minutes", "nan"], "time_budget_minutes must be a finite number, got nan"),
    (["--model", "foo"], "--model foo and --hidden 0 do not apply"),
    (["--hidden", "999"], "--model mlp and --hidden 999 do not apply"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
])
def test_invalid_values_are_refused(tmp_path, capsys, argv, message) -> None:
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "run"), *argv]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


# 11 ------------------------------------------------------------------------------------------
def test_config_file_messages(tmp_path, capsys) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    yaml = tmp_path / "settings.yaml"
    yaml.write_text("iterations: 5\n")
    for path, message in [(folder, "is a folder"), (binary, "is not a text file"),
                          (yaml, ".yaml files are not read; write the settings as TOML")]:
        assert main(["train", "sinusoid", "--config", str(path),
                     "--run-dir", str(tmp_path / "run")]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(path) in line and message in line


def test_binary_metrics_log_is_named_on_resume(run_dir, capsys) -> None:
    (run_dir / "maml" / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations",
                 "30"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "metrics.csv is not a text file" in line


def test_malicious_checkpoint_is_refused_without_torch_advice(run_dir, capsys) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    last = run_dir / "maml" / "checkpoints" / "last.pt"
    torch.save({"format_version": 1, "iteration": 99, "x": Payload()}, last)
    assert main(["train", "sinusoid", "--run-dir", str(run_dir), "--resume", "--iterations", "30",
                 "--no-eval"]) == 0  # the older checkpoint is used
    err = capsys.readouterr().err
    assert "last.pt holds Python objects other than tensors" in err and "system" in err
    assert "weights_only=False" not in err and "corrupt" not in err.split("passed over")[1]


def test_zip_errors_name_the_command_line_option(tmp_path, capsys) -> None:
    data = tmp_path / "data" / "omniglot"
    data.mkdir(parents=True)
    (data / "images_background.zip").write_bytes(b"not a zip")
    (data / "images_evaluation.zip").write_bytes(b"not a zip")
    assert main(["train", "omniglot", "--run-dir", str(tmp_path / "run"), "--data-root",
                 str(tmp_path / "data")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is not a valid zip archive" in line and "--download" in line
    assert "download=True" not in line


# exit codes of what is left: Ctrl-C outside the training loop, and a real bug -------------------
@pytest.mark.parametrize("raised, code, expected", [
    (KeyboardInterrupt(), 130, "mamlkit: error: interrupted (SIGINT). Continue with: mamlkit "
                               "train sinusoid --run-dir"),
    (RuntimeError("an unexpected state"), 1, "mamlkit: internal error (a bug in mamlkit"),
])
def test_interrupt_and_bug_outside_the_loop(tmp_path, capsys, monkeypatch, raised, code,
                                            expected) -> None:
    import dataclasses

    from mamlkit import cli
    from mamlkit.experiments.regression import SINUSOID

    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli, "get_experiment", lambda name: dataclasses.replace(SINUSOID,
                                                                                train=fails))
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "run"), *TINY]) == code
    err = capsys.readouterr().err
    assert expected in err
    assert ("Traceback" in err) == (code == 1)


def test_resume_hint_keeps_no_eval(tmp_path, capsys, monkeypatch) -> None:
    """The command printed to continue an interrupted run is the one it was started with: a run
    started with --no-eval is not evaluated when it is continued that way."""
    import dataclasses

    from mamlkit import cli
    from mamlkit.experiments.regression import SINUSOID

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "get_experiment", lambda name: dataclasses.replace(
        SINUSOID, train=interrupted))
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), "--no-eval", *TINY]) == 130
    assert f"Continue with: mamlkit train sinusoid --run-dir {run} --resume --no-eval" in \
        capsys.readouterr().err
