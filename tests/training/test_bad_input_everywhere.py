"""Every bad input gets one clear error naming the problem and the fix, before expensive work,
and never destroys an existing run or checkpoint.

Bad inputs tried here (those already covered elsewhere are not repeated: unknown task/algorithm,
inner_lr = 0, ways = 1, shots = 0, inner_steps < 0, --resume without --run-dir or without a
checkpoint, a garbage last.pt, a non-empty run dir, unknown config keys, a string for an int, broken
JSON, unknown optimizer: tests/training/test_cli_and_config.py; batch shapes, non-scalar losses,
model input and MSE output mismatches, unknown loss/batching/adapt names:
tests/core/test_bad_input.py; missing and corrupt Omniglot/miniImageNet files via the CLI:
tests/experiments/test_vision.py):

config files
  - a list field given a number, a bool or a float given for an int, a TOML syntax error, a config
    file that does not exist
impossible values (CLI)
  - inner_lr < 0, meta_batch_size 0, queries 0, iterations 0, checkpoint_every 0,
    keep_checkpoints < 0, val_every < 0, eval_shots 0, time budget < 0, unknown batching,
    on_nonfinite and amp choices, a non-integer for an int option
processes and devices
  - meta-batch not divisible by WORLD_SIZE, WORLD_SIZE without MASTER_ADDR, WORLD_SIZE not an
    integer, one GPU index for several processes, CUDA requested without CUDA, a non-device name,
    a task sampler that cannot be seeded per process
data
  - missing data folder of a text task, a corrupt Omniglot archive
checkpoints and run folders
  - a file that is not a mamlkit checkpoint, a truncated checkpoint (resume falls back to the older one),
    a checkpoint of another model, a checkpoint written by another number of processes, a corrupt
    config.json, eval of a run without checkpoints
models
  - a classifier with fewer outputs than the episode has classes
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mamlkit import MAML, Sinusoid, TaskBatch
from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.cli import main
from mamlkit.config import make_config, read_config_file
from mamlkit.distributed import process_device, seed_sampler_for_rank
from mamlkit.train import ResumeWarning, meta_train

TINY = ["--iterations", "4", "--meta-batch-size", "2", "--val-every", "2", "--val-tasks", "3",
        "--test-tasks", "5", "--eval-inner-steps", "1", "--checkpoint-every", "2",
        "--keep-checkpoints", "1", "--no-tensorboard", "--no-plots"]


def _tiny_config(**overrides):
    return make_config({"iterations": 4, "meta_batch_size": 2, "val_every": 0,
                        "checkpoint_every": 2, "keep_checkpoints": 1, "tensorboard": False,
                        "eval_inner_steps": 1, **overrides})


def _learner(hidden: int = 8) -> MAML:
    torch.manual_seed(0)
    return MAML(nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1)), loss="mse")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ config files
@pytest.mark.parametrize("text, message", [
    ("eval_shots = 5\n", "'eval_shots' .* must be a list of integers"),
    ("shots = true\n", "'shots' .* must be of type int, got bool"),
    ("shots = 2.5\n", "'shots' .* must be of type int, got float"),
    ("shots = \n", "is not valid TOML"),
])
def test_bad_config_file_values(tmp_path, text, message) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_config_file(path)


def test_missing_config_file(tmp_path, capsys) -> None:
    assert main(["train", "sinusoid", "--config", str(tmp_path / "nope.toml"),
                 "--run-dir", str(tmp_path / "run")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ impossible values
@pytest.mark.parametrize("argv, message", [
    (["--inner-lr", "-0.1"], "inner_lr must be > 0"),
    (["--meta-batch-size", "0"], "meta_batch_size must be >= 1"),
    (["--queries", "0"], "queries must be >= 1"),
    (["--iterations", "0"], "iterations must be >= 1"),
    (["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
    (["--keep-checkpoints", "-1"], "keep_checkpoints must be >= 0"),
    (["--val-every", "-5"], "val_every must be >= 0"),
    (["--eval-shots", "5", "0"], "eval_shots must be a non-empty list of sizes >= 1"),
    (["--time-budget-minutes", "-1"], "time_budget_minutes must be >= 0"),
    (["--batching", "threads"], "batching must be one of"),
    (["--on-nonfinite", "ignore"], "on_nonfinite must be one of"),
    (["--amp", "fp16"], "amp must be one of \\('none', 'bf16'\\)"),
    (["--task-threads", "-1"], "task_threads must be >= 0"),
    (["--task-threads", "2", "--no-compile"], "set compile = true as well \\(--compile\\)"),
])
def test_impossible_values_are_refused_before_the_run_dir_exists(tmp_path, capsys, argv,
                                                                  message) -> None:
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run), *argv]) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert not run.exists()


def test_non_integer_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "sinusoid", "--shots", "ten"])
    assert exit_.value.code == 2
    assert "--shots: invalid int value: 'ten'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ processes, devices
def _torchrun_env(monkeypatch, world: str = "2") -> None:
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)


def test_meta_batch_not_divisible_by_world_size(tmp_path, capsys, monkeypatch) -> None:
    _torchrun_env(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--run-dir", str(run)]) == 2  # meta_batch_size 25
    err = capsys.readouterr().err
    assert "meta_batch_size=25 cannot be split evenly across 2 processes" in err
    assert "(e.g. 24 or 26)" in err
    assert not run.exists()


def test_world_size_without_torchrun(tmp_path, capsys, monkeypatch) -> None:
    _torchrun_env(monkeypatch)
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "run"),
                 "--meta-batch-size", "24"]) == 2
    assert "MASTER_ADDR, MASTER_PORT is not: launch distributed runs with torchrun" \
        in capsys.readouterr().err
    _torchrun_env(monkeypatch, world="two")
    assert main(["train", "sinusoid", "--run-dir", str(tmp_path / "run")]) == 2
    assert "WORLD_SIZE='two' is not an integer" in capsys.readouterr().err


def test_one_gpu_index_for_several_processes() -> None:
    with pytest.raises(ValueError, match="pins every process to one GPU.*Pass --device cuda"):
        process_device("cuda:1", world_size=2, local_rank=0)
    assert process_device("cuda", world_size=2, local_rank=1) == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda(tmp_path, capsys) -> None:
    assert main(["train", "sinusoid", "--device", "cuda", "--run-dir", str(tmp_path / "r")]) == 2
    assert "CUDA is not available; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_not_a_device(tmp_path, capsys) -> None:
    assert main(["train", "sinusoid", "--device", "gpu0", "--run-dir", str(tmp_path / "r")]) == 2
    assert "device='gpu0' is not a torch device" in capsys.readouterr().err


def test_sampler_that_cannot_be_seeded_per_process() -> None:
    class Stateless:
        def sample(self, n):
            raise AssertionError("not reached")

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(ValueError, match="Cannot give each process its own tasks.*reseed\\(seed\\)"):
        seed_sampler_for_rank(Stateless(), seed=0, rank=1)


# ------------------------------------------------------------------------------ data
def test_missing_text_data_folder(tmp_path, capsys) -> None:
    assert main(["train", "banking77", "--data-root", str(tmp_path / "none"),
                 "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--data-root" in err


def test_corrupt_omniglot_archive(tmp_path, capsys) -> None:
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for name in ("images_background.zip", "images_evaluation.zip"):
        (folder / name).write_bytes(b"not a zip")
    assert main(["train", "omniglot", "--data-root", str(tmp_path / "data"),
                 "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "images_background.zip is not a valid zip archive" in err and "download it again" in err
    assert (folder / "images_background.zip").read_bytes() == b"not a zip"


# ------------------------------------------------------------------------------ checkpoints, runs
def test_file_that_is_not_a_mamlkit_checkpoint(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="is not a mamlkit checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint_keeps_the_older_one(tmp_path) -> None:
    meta_train(_learner(), Sinusoid(seed=0), _tiny_config(), tmp_path, progress=False)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.warns(ResumeWarning, match="resuming from .*iter_00000004.pt \\(iteration 4\\).*"
                                           "last.pt is corrupt or unreadable"):
        result = meta_train(_learner(), Sinusoid(seed=0), _tiny_config(iterations=6), tmp_path,
                            resume=True, progress=False)
    assert result.iteration == 6
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] == 6


def test_checkpoint_of_another_model(tmp_path) -> None:
    meta_train(_learner(8), Sinusoid(seed=0), _tiny_config(), tmp_path, progress=False)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="does not fit this model or algorithm.*size mismatch"):
        meta_train(_learner(16), Sinusoid(seed=0), _tiny_config(iterations=6), tmp_path,
                   resume=True, progress=False)
    assert _snapshot(tmp_path) == before


def test_checkpoint_of_another_process_count(tmp_path) -> None:
    meta_train(_learner(), Sinusoid(seed=0), _tiny_config(), tmp_path, progress=False)
    path = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    save_checkpoint(path, {**state, "world_size": 4})
    with pytest.raises(ValueError, match="written by a run with 4 process\\(es\\) but this run "
                                         "has 1.*--nproc-per-node 4"):
        meta_train(_learner(), Sinusoid(seed=0), _tiny_config(iterations=6), tmp_path,
                   resume=True, progress=False)


def test_corrupt_run_config(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"task": "sinusoid", ')
    assert main(["train", "sinusoid", "--run-dir", str(run), "--resume"]) == 2
    assert "config.json is corrupt" in capsys.readouterr().err
    assert main(["eval", str(run)]) == 2
    assert "config.json is corrupt" in capsys.readouterr().err
    assert (run / "config.json").read_text() == '{"task": "sinusoid", '


def test_eval_of_a_run_without_checkpoints(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(make_config({"task": "sinusoid"}).to_dict()))
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "No checkpoint at" in err or "does not exist" in err



def test_saved_config_with_a_setting_this_version_lacks(tmp_path) -> None:
    """A run saved by another version (an extra key in config.json) still loads, with a warning
    naming the key; the known settings are kept."""
    from mamlkit.experiments.common import load_run_config

    run = tmp_path / "run"
    run.mkdir()
    saved = {**make_config({"task": "sinusoid", "iterations": 7}).to_dict(), "old_knob": 3}
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="old_knob"):
        loaded = load_run_config(run)
    assert "old_knob" not in loaded and loaded["iterations"] == 7
    assert make_config(loaded).iterations == 7

# ------------------------------------------------------------------------------ models
def test_classifier_with_too_few_outputs(tmp_path) -> None:
    class FiveWay:
        def sample(self, n):
            labels = torch.arange(5).repeat_interleave(2).expand(n, -1).contiguous()
            return TaskBatch(torch.randn(n, 10, 4), labels, torch.randn(n, 10, 4), labels.clone())

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    learner = MAML(nn.Linear(4, 3), loss="cross_entropy")
    with pytest.raises(ValueError, match="labels go up to 4: a classifier needs \\[examples, 5\\] "
                                         "logits. Build the model with as many outputs as ways"):
        meta_train(learner, FiveWay(), _tiny_config(), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()
