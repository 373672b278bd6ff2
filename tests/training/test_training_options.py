"""Training options of the outer loop (learning-rate schedules with warm-up, gradient clipping,
weight decay), run provenance and notes in config.json, the compile progress lines, and the
optional Weights & Biases logger in offline mode (no network)."""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest
import torch
from torch import nn

from mamlkit import MAML, Sinusoid
from mamlkit.cli import main
from mamlkit.config import make_config
from mamlkit.experiments.common import load_run_config
from mamlkit.schedules import lr_factor
from mamlkit.train import apply_training_options, build_optimizer, meta_train

TINY = ["--iterations", "20", "--meta-batch-size", "3", "--val-every", "10", "--val-tasks", "5",
        "--test-tasks", "10", "--eval-inner-steps", "1", "--checkpoint-every", "10",
        "--no-tensorboard", "--no-plots", "--eval-shots", "5"]


def test_schedules_follow_their_closed_forms() -> None:
    assert [lr_factor("constant", i, 10, warmup=4) for i in (1, 2, 4, 5, 10)] == \
        [0.25, 0.5, 1.0, 1.0, 1.0]
    total, warmup = 12, 2
    for i in range(3, total + 1):
        expected = 0.5 * (1 + math.cos(math.pi * (i - warmup - 1) / (total - warmup)))
        assert lr_factor("cosine", i, total, warmup=warmup) == pytest.approx(expected)
    assert lr_factor("cosine", 3, 12, warmup=2) == 1.0
    steps = [lr_factor("step", i, 9, step_size=3, gamma=0.5) for i in range(1, 10)]
    assert steps == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert lr_factor("step", 4, 9) == pytest.approx(0.1)  # default: a third of the run


def test_clipping_scales_the_meta_gradient_to_the_norm_and_reports_it() -> None:
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    config = make_config({"grad_clip": 1.0, "meta_lr": 0.1, "lr_schedule": "step",
                          "lr_step_size": 1, "lr_gamma": 0.5, "iterations": 4})
    optimizer = build_optimizer(config, iter(params))
    logged = apply_training_options(config, optimizer, params, iteration=3)
    assert logged == {"grad_norm": pytest.approx(5.0)}
    total = torch.cat([p.grad for p in params]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.0, 0.0]), rtol=1e-5, atol=0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)


def test_weight_decay_picks_decoupled_adam_or_l2_sgd() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    adam = build_optimizer(make_config({"weight_decay": 0.01}), iter(params))
    sgd = build_optimizer(make_config({"weight_decay": 0.01, "optimizer": "sgd"}), iter(params))
    assert isinstance(adam, torch.optim.AdamW) and adam.param_groups[0]["weight_decay"] == 0.01
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["weight_decay"] == 0.01
    assert type(build_optimizer(make_config({}), iter(params))) is torch.optim.Adam


@pytest.mark.parametrize("key, value, message", [
    ("lr_schedule", "linear", "lr_schedule must be one of"),
    ("grad_clip", -1.0, "grad_clip must be >= 0"),
    ("lr_gamma", 0.0, "lr_gamma must be in"),
    ("wandb", "yes", "wandb must be one of"),
])
def test_bad_training_options_are_refused(key, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        make_config({key: value})


def test_cli_schedule_reaches_metrics_and_provenance_reaches_config(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    argv = ["train", "linear", "--run-dir", str(run), *TINY, "--lr-schedule", "cosine",
            "--grad-clip", "1.0", "--meta-lr", "0.01", "--notes", "cosine trial"]
    monkeypatch.setattr("sys.argv", ["/usr/bin/mamlkit", *argv])  # the recorded command line
    assert main(argv) == 0
    with (run / "maml" / "metrics.csv").open() as handle:
        rows = {int(r["iteration"]): float(r["meta_lr"]) for r in csv.DictReader(handle)}
    for iteration in (10, 20):
        assert rows[iteration] == pytest.approx(0.01 * lr_factor("cosine", iteration, 20))
    saved = json.loads((run / "config.json").read_text())
    assert saved["notes"] == "cosine trial" and saved["grad_clip"] == 1.0
    record = saved["provenance"]
    assert record["torch_version"] == torch.__version__
    assert record["mamlkit_version"] and record["python_version"].count(".") == 2
    assert record["command"].startswith("mamlkit train linear --run-dir ")
    assert "--lr-schedule cosine --grad-clip 1.0" in record["command"]
    assert len(record.get("git_commit", "0" * 40)) == 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # provenance is a record, not an unknown setting
        reloaded = load_run_config(run)
    assert "provenance" not in reloaded and reloaded["notes"] == "cosine trial"
    assert make_config(saved).notes == "cosine trial"  # the file reads back as a configuration


def test_compile_progress_lines_come_before_the_bar(tmp_path, capsys, monkeypatch) -> None:
    import mamlkit.core.compiled as compiled_module  # where the learner compiles

    monkeypatch.setattr(compiled_module, "compile_for", lambda fn, *a, **k: fn)  # no real compiler
    torch.manual_seed(0)
    learner = MAML(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)), compile=True)
    config = make_config({"iterations": 2, "meta_batch_size": 2, "tensorboard": False,
                          "val_every": 0})
    meta_train(learner, Sinusoid(seed=0), config, tmp_path)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "meta-batch of 2 tasks: batching vmap, compiled"
    assert lines[1].startswith("compiling the meta-gradient with torch.compile")
    assert lines[2].startswith("first meta-iteration done in")
    assert "meta-train sinusoid" in captured.err and "meta-batch" not in captured.err


def test_auto_compile_lines_come_from_the_trainer_in_order(tmp_path, capsys, monkeypatch) -> None:
    """The default compile="auto" in the training loop: the trainer says how many meta-batches
    are left, so a long enough run starts the background compile after the shapes repeat, and
    its lines (started, then done) reach the output between the bar's updates."""
    import mamlkit.core.compiled as compiled_module
    from mamlkit.core.auto_compile import AutoCompile

    monkeypatch.setattr(compiled_module, "compile_for", lambda fn, *a, **k: fn)  # no real compiler
    monkeypatch.setattr(AutoCompile, "pays_after_s", 0.0)  # any run pays
    torch.manual_seed(0)
    learner = MAML(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)))
    config = make_config({"iterations": 300, "meta_batch_size": 2, "tensorboard": False,
                          "val_every": 0})
    meta_train(learner, Sinusoid(seed=0), config, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("meta-batch of 2 tasks: batching vmap, eager, compiled in the background "
                        "once it pays (compile=auto)")
    assert lines[1].startswith("compile=auto: compiling the meta-gradient for 2 tasks x 10+10")
    assert lines[2].startswith("compile=auto: compiled the meta-gradient in ")
    assert learner.execution.auto.meta_batches_left == 0


@pytest.mark.parametrize(("argv", "file_value", "mode"), [
    ([], None, "auto"), (["--compile"], None, "on"), (["--no-compile"], None, "off"),
    (["--compile", "off"], None, "off"), ([], True, "on"), ([], False, "off")])
def test_compile_is_a_switch_with_an_optional_mode(tmp_path, argv, file_value, mode) -> None:
    """--compile alone is on, --no-compile off, --compile MODE the mode; a config file's (or an
    older run's) true / false read as on / off; anything else refused in one line."""
    from mamlkit.cli import _overrides, build_parser

    args = build_parser().parse_args(["train", "sinusoid", *argv])
    layers = [{"compile": file_value}] if file_value is not None else []
    assert make_config(*layers, _overrides(args)).compile == mode


def test_a_bad_compile_mode_is_refused_in_one_line(tmp_path, capsys) -> None:
    assert main(["train", "sinusoid", "--compile", "fast", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mamlkit: error: compile must be one of auto, on, off, got 'fast' (--compile "
                   "auto|on|off; true / false in a file)."]


def test_wandb_offline_logs_the_rows_without_a_network(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_API_KEY", "")
    torch.manual_seed(0)
    learner = MAML(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)))
    config = make_config({"iterations": 20, "meta_batch_size": 2, "tensorboard": False,
                          "val_every": 10, "wandb": "offline", "notes": "offline check"})
    meta_train(learner, Sinusoid(seed=0), config, tmp_path, val_batch=Sinusoid().fixed_tasks(4, 1),
               progress=False)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    for text in (b"val_loss", b"meta_lr", b"support_loss", b"offline check"):
        assert text in data, text


def test_final_evaluation_reaches_tensorboard_hparams(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from mamlkit.tracking import flatten_numbers, log_final_evaluation

    results = {"steps": 1, "mse": {"5": {"MAML": [{"mean": 2.5, "ci95": 0.5}]}}, "table": "text"}
    assert flatten_numbers(results) == {"eval/steps": 1.0, "eval/mse/5/MAML/0/mean": 2.5,
                                        "eval/mse/5/MAML/0/ci95": 0.5}
    log_final_evaluation(make_config({"notes": "hp"}), tmp_path, results)
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard" / "final").rglob("*tfevents*"))
    for text in (b"hparams", b"eval/mse/5/MAML/0/mean", b"inner_lr"):
        assert text in events, text
