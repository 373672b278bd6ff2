"""``mamlkit train images`` and ``mamlkit eval`` on real digits written as folder trees: train,
evaluate, cross-domain and cross-way evaluation, Lake's benchmark, bad input, the parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from image_trees import write_digits

import mamlkit
from mamlkit.cli import build_parser, main
from mamlkit.config import TrainConfig

TINY = ["--iterations", "2", "--meta-batch-size", "2", "--hidden", "4", "--image-size", "16",
        "--test-tasks", "6", "--eval-inner-steps", "2", "--val-tasks", "4", "--val-every", "1",
        "--baseline-iterations", "2", "--no-tensorboard", "--no-plots", "--threads", "1"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    return {"digits": write_digits(base / "digits", per_class=12),
            "other": write_digits(base / "other", per_class=6, classes=range(6), mode="RGB"),
            "cache": base / "cache"}


@pytest.fixture(scope="module")
def run(trees, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "images", "--data-root", str(trees["digits"]), "--run-dir", str(run),
                 "--class-split", "4,3,3", "--ways", "3", "--cache-dir", str(trees["cache"]),
                 *TINY]) == 0
    return run


def test_train_then_eval_images_from_the_command_line(run, capsys) -> None:
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["accuracy"]) == {"MAML", "pretrained", "random init"}
    assert all(len(c) == 3 and all(0 <= p["mean"] <= 1 for p in c)
               for c in results["accuracy"].values())
    config = json.loads((run / "config.json").read_text())
    assert (config["channels"], config["image_size"], config["class_split"]) == (1, 16, "4,3,3")
    assert main(["eval", str(run), "--test-episodes", "6", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "replaces the earlier evaluation" in out and "over 6 meta-test episodes" in out
    assert json.loads((run / "eval" / "results.json").read_text())["accuracy"] == \
        results["accuracy"]  # the same fixed episodes


def test_cross_domain_and_cross_way_evaluation(run, trees, capsys) -> None:
    before = (run / "eval" / "results.json").read_text()
    assert main(["eval", str(run), "--task", "images", "--data-root", str(trees["other"]),
                 "--ways", "5", "--test-episodes", "4", "--baseline", "none", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "output layer re-initialised to zeros for 5-way episodes (the run was trained 3-way)" \
        in out and "pretrained baseline skipped" in out
    name = "images-other-5way-1shot-1q-4ep-2steps-nobaseline.json"
    results = json.loads((run / "eval" / name).read_text())
    assert set(results["accuracy"]) == {"MAML", "random init"}
    # zero output layer: every class scores alike before the first step, exactly chance
    assert results["accuracy"]["MAML"][0]["mean"] == pytest.approx(0.2)
    assert (run / "eval" / "results.json").read_text() == before  # nothing overwritten


def test_load_run_gives_a_learner_ready_to_adapt(run) -> None:
    learner = mamlkit.load_run(run)
    support_x, support_y = torch.rand(3, 1, 16, 16), torch.arange(3)
    params = learner.adapt(support_x, support_y, steps=2)
    assert learner.predict(params, torch.rand(5, 1, 16, 16)).shape == (5, 3)


def test_lake_benchmark_scores_twenty_runs_and_refuses_the_paper_split(run, data_root, tmp_path,
                                                                       capsys) -> None:
    if not (data_root / "omniglot" / "original" / "one-shot-classification"
            / "all_runs.zip").is_file():
        pytest.skip("all_runs.zip not staged")
    assert main(["eval", str(run), "--benchmark", "omniglot-20runs", "--data-root",
                 str(data_root), "--eval-inner-steps", "1"]) == 0
    results = json.loads((run / "eval" / "omniglot-20runs.json").read_text())
    for mode in ("inductive", "transductive"):
        assert len(results[mode]["per_run"]) == 20 and 0 <= results[mode]["error"] <= 1
    paper = tmp_path / "paper"
    paper.mkdir()
    config = TrainConfig(task="omniglot", class_split="paper", data_root=str(data_root))
    (paper / "config.json").write_text(json.dumps(config.to_dict()))
    capsys.readouterr()
    assert main(["eval", str(paper), "--benchmark", "omniglot-20runs"]) == 2
    assert "'paper' split" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--class-split", "8,1,1"], "leaves 1 classes for meta-val"),
    (["--class-split", "4,3,3", "--shots", "10", "--queries", "5"], "smaller class(es) (e.g. 'digit"),
    (["--class-split", "a.txt,b.txt,c.txt"], "class-list file a.txt"),
    (["--image-size", "12"], "image_size=12 is too small for the cnn model's four"),
])
def test_bad_data_fails_before_a_run_folder_exists(trees, tmp_path, capsys, argv, message) -> None:
    run = tmp_path / "run"
    assert main(["train", "images", "--data-root", str(trees["digits"]), "--run-dir", str(run),
                 "--ways", "3", "--cache-dir", str(trees["cache"]), *TINY, *argv]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_parsers_take_no_abbreviations_and_eval_lists_evaluation_options(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "run", "--task-thr", "2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "images", "--data-r", "x"])
    args = build_parser().parse_args(["eval", "run", "--task", "images", "--test-episodes", "5"])
    assert (args.task, args.test_tasks) == ("images", 5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    text = capsys.readouterr().out
    assert "--ways" in text and "--benchmark" in text and "--baseline" in text
    assert "--meta-lr" not in text and "--iterations" not in text and "--encoder" not in text


def test_rgb_tree_with_dataset_normalisation_workers_and_resume(trees, tmp_path) -> None:
    run = tmp_path / "rgb"
    argv = ["train", "images", "--data-root", str(trees["other"]), "--run-dir", str(run),
            "--class-split", "3,0,3", "--ways", "3", "--normalize", "dataset", "--workers", "2",
            "--baseline", "none", "--cache-dir", str(trees["cache"]), *TINY]
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    mean, std = config["normalize"].split(":")
    assert config["channels"] == 3 and len(mean.split(",")) == len(std.split(",")) == 3
    assert set(json.loads((run / "eval" / "results.json").read_text())["accuracy"]) == \
        {"MAML", "random init"}
    assert main([*argv[:6], "--resume", "--iterations", "3", "--no-eval", "--threads", "1"]) == 0
    assert json.loads((run / "train_summary.json").read_text())["maml"]["iterations"] == 3


def test_support_noise_evaluation_scores_the_run_on_its_own_episodes(run, capsys) -> None:
    results = json.loads((run / "eval" / "results.json").read_text())
    assert main(["eval", str(run), "--support-noise", "0.4,1.0", "--noise-kind", "pair",
                 "--test-episodes", "6", "--no-plots"]) == 0
    assert "pair support-label noise" in capsys.readouterr().out
    noisy = json.loads((run / "eval" / "support-noise.json").read_text())
    assert set(noisy["accuracy"]) == {"MAML", "prototypes"} and noisy["kind"] == "pair"
    assert set(noisy["accuracy"]["MAML"]) == {"0.0", "0.4", "1.0"}
    assert set(noisy["drop"]["prototypes"]) == {"0.4", "1.0"}
    # the clean column is the run's own evaluation: the same fixed episodes and steps
    assert noisy["accuracy"]["MAML"]["0.0"]["mean"] == pytest.approx(
        results["accuracy"]["MAML"][-1]["mean"])
    # every support label flipped to its pair class: prototypes then name the pair class
    assert noisy["accuracy"]["prototypes"]["1.0"]["mean"] < noisy["accuracy"]["prototypes"][
        "0.0"]["mean"]
    assert main(["eval", str(run), "--support-noise", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fraction in [0, 1]" in err[0]
