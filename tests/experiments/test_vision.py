"""Image experiments end to end: real Omniglot, miniImageNet and CIFAR-FS in their published
on-disk formats (tiny files written here), the literature's defaults and bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlkit.cli import main
from mamlkit.config import make_config, read_config_file
from mamlkit.datasets.cifar_fs import BERTINETTO_SPLITS
from mamlkit.datasets.miniimagenet import RAVI_SPLITS
from mamlkit.experiments import get_experiment
from mamlkit.experiments.vision import (
    ClassifierBatches,
    fine_tune_learner,
    head_names,
    load_split,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ["--iterations", "2", "--meta-batch-size", "2", "--hidden", "4", "--val-every", "1",
        "--val-tasks", "4", "--test-tasks", "6", "--eval-inner-steps", "2",
        "--checkpoint-every", "1", "--baseline-iterations", "2", "--no-tensorboard",
        "--threads", "1"]


@pytest.fixture(scope="module")
def omniglot_root(data_root: Path) -> Path:
    """The data root holding the real Omniglot zips (skips when they are absent)."""
    if not (data_root / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"Omniglot not found in {data_root / 'omniglot'}")
    return data_root


def _config(task: str, root: Path, **values: object):
    experiment = get_experiment(task)
    return make_config(experiment.defaults_for(values), values,
                       {"task": task, "data_root": str(root)})


# ------------------------------------------------------------------------------ real Omniglot
def test_train_then_eval_omniglot_end_to_end(omniglot_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "omniglot", "--data-root", str(omniglot_root), "--run-dir", str(run),
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert "omniglot 5-way 1-shot (paper split)" in out and "over 6 meta-test episodes" in out
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["accuracy"]) == {"MAML", "pretrained", "random init"}
    for curve in results["accuracy"].values():
        assert len(curve) == 3  # 0, 1, 2 steps
        assert all(0.0 <= point["mean"] <= 1.0 for point in curve)
    # a zero output layer scores every class alike: before fine-tuning it is exactly at chance
    assert results["accuracy"]["pretrained"][0] == {"mean": pytest.approx(0.2), "ci95": 0.0}
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["maml"]["iterations"] == 2 and summary["pretrained"]["iterations"] == 2
    metrics = (run / "maml" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("iteration,") and len(metrics) == 3  # validated twice
    for png in ("learning_curve.png", "accuracy_vs_steps.png"):
        assert (run / "plots" / png).stat().st_size > 1000
    config = json.loads((run / "config.json").read_text())
    assert (config["inner_lr"], config["inner_steps"], config["queries"]) == (0.4, 1, 1)

    # the same fixed test episodes every time: evaluating again gives identical numbers
    assert main(["eval", str(run), "--no-plots"]) == 0
    again = json.loads((run / "eval" / "results.json").read_text())
    assert again["accuracy"] == results["accuracy"]

    # resume continues the MAML run from its last checkpoint
    assert main(["train", "omniglot", "--run-dir", str(run), "--resume", "--iterations", "3",
                 "--no-eval"]) == 0
    assert json.loads((run / "train_summary.json").read_text())["maml"]["iterations"] == 3


def test_pretrained_features_with_a_zero_head(omniglot_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["train", "omniglot", "--data-root", str(omniglot_root), "--run-dir", str(run),
                 "--no-eval", "--val-every", "0", *TINY[:4], "--hidden", "4",
                 "--baseline-iterations", "2", "--no-tensorboard"]) == 0
    config = make_config(json.loads((run / "config.json").read_text()))
    learner = fine_tune_learner(config, run, lr=0.1)
    saved = torch.load(run / "pretrained" / "checkpoints" / "best.pt", weights_only=True)
    model = learner.model
    head = head_names(model)
    assert head == ["classifier.weight", "classifier.bias"]
    for name, value in model.named_parameters():
        if name in head:
            assert value.shape[0] == 5 and not value.any()
        else:
            assert torch.equal(value, saved["learner"][f"model.{name}"])
    assert saved["learner"]["model.classifier.weight"].shape[0] == 4400  # every training class


def test_paper_and_official_omniglot_splits(omniglot_root) -> None:
    paper = {role: load_split(_config("omniglot", omniglot_root), role)
             for role in ("train", "val", "test")}
    assert [len(paper[r]) for r in ("train", "val", "test")] == [4400, 400, 1692]
    official = {role: load_split(_config("omniglot", omniglot_root, class_split="official"), role)
                for role in ("train", "val", "test")}
    assert [len(official[r]) for r in ("train", "val", "test")] == [3456, 400, 2636]
    bases = {r: {n.split("@")[0] for n in official[r].class_names} for r in ("train", "val")}
    assert not bases["train"] & bases["val"] and len(bases["val"]) == 100
    assert all(n.startswith("images_evaluation/") for n in official["test"].class_names)


def test_classifier_batches_are_labelled_and_resumable(omniglot_root) -> None:
    data = load_split(_config("omniglot", omniglot_root), "val")
    batches = ClassifierBatches(data, batch_size=8, seed=3)
    state = batches.state_dict()
    first = batches.sample(2)
    assert first.support_x.shape == (2, 4, 1, 28, 28) and first.query_y.shape == (2, 4)
    label = int(first.support_y[0, 0])
    image = (first.support_x[0, 0, 0] * 255).round().to(torch.uint8).numpy()
    assert any(np.array_equal(image, data.images[label, i, 0]) for i in range(20))
    batches.load_state_dict(state)
    assert torch.equal(batches.sample(2).support_x, first.support_x)


# ------------------------------------------------------------------------------ defaults
def test_omniglot_defaults_follow_ways_and_shots() -> None:
    omniglot = get_experiment("omniglot")
    five = make_config(omniglot.defaults_for({}))
    assert (five.meta_batch_size, five.inner_steps, five.inner_lr) == (32, 1, 0.4)
    assert (five.queries, five.eval_inner_steps, five.meta_lr, five.test_tasks) == (1, 10, 1e-3, 600)
    twenty = make_config(omniglot.defaults_for({"ways": 20}), {"ways": 20})
    assert (twenty.meta_batch_size, twenty.inner_steps, twenty.inner_lr) == (16, 5, 0.1)
    chosen = {"ways": 20, "shots": 5, "inner_lr": 0.2}
    mixed = make_config(omniglot.defaults_for(chosen), chosen)
    assert (mixed.inner_lr, mixed.inner_steps, mixed.queries) == (0.2, 5, 5)
    explicit = {"shots": 5, "queries": 3}
    assert make_config(omniglot.defaults_for(explicit), explicit).queries == 3
    mini = get_experiment("miniimagenet")
    assert make_config(mini.defaults_for({"shots": 5}), {"shots": 5}).meta_batch_size == 2
    one = make_config(mini.defaults_for({}))
    assert (one.meta_batch_size, one.inner_steps, one.inner_lr, one.queries) == (4, 5, 0.01, 15)


@pytest.mark.parametrize("path", [*sorted(CONFIGS.glob("omniglot_*.toml")),
                                  *sorted(CONFIGS.glob("miniimagenet_*.toml"))],
                         ids=lambda p: p.name)
def test_config_files_hold_the_same_settings_as_the_defaults(path) -> None:
    values = read_config_file(path)
    experiment = get_experiment(values["task"])
    from_file = make_config(experiment.defaults_for(values), values)
    chosen = {"ways": values["ways"], "shots": values["shots"]}
    from_defaults = make_config(experiment.defaults_for(chosen), chosen)
    keys = ("meta_batch_size", "inner_steps", "inner_lr", "queries", "eval_inner_steps",
            "meta_lr", "test_tasks", "iterations")
    assert {k: getattr(from_file, k) for k in keys} == {k: getattr(from_defaults, k) for k in keys}


def test_ways_20_on_the_command_line_takes_the_20_way_settings(omniglot_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["train", "omniglot", "--ways", "20", "--data-root", str(omniglot_root),
                 "--run-dir", str(run), "--iterations", "1", "--hidden", "2", "--val-every", "0",
                 "--baseline-iterations", "1", "--no-eval", "--no-tensorboard"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["meta_batch_size"], config["inner_steps"], config["inner_lr"]) == (16, 5, 0.1)


# ------------------------------------------------------------------------------ fixture datasets
def _image_rows(classes: int, per_class: int, size: int) -> np.ndarray:
    """uint8 [classes * per_class, size, size, 3]: each class has its own colour plus noise."""
    rng = np.random.default_rng(classes)
    colours = rng.integers(0, 256, (classes, 1, 1, 1, 3))
    noise = rng.integers(-20, 21, (classes, per_class, size, size, 3))
    return np.clip(colours + noise, 0, 255).astype(np.uint8).reshape(-1, size, size, 3)


def write_miniimagenet(folder: Path, per_class: int = 4) -> None:
    """The three mini-imagenet-cache pickles (dict of image_data and class_dict per split)."""
    folder.mkdir(parents=True)
    for split, names in RAVI_SPLITS.items():
        images = _image_rows(len(names), per_class, 84)
        class_dict = {name: list(range(i * per_class, (i + 1) * per_class))
                      for i, name in enumerate(names)}
        with (folder / f"mini-imagenet-cache-{split}.pkl").open("wb") as handle:
            pickle.dump({"image_data": images, "class_dict": class_dict}, handle, protocol=4)


def write_cifar100(folder: Path, per_class: int = 4) -> None:
    """cifar-100-python/{train,test,meta} as the official python pickles (bytes keys)."""
    names = sorted(n for split in BERTINETTO_SPLITS.values() for n in split)
    rows = _image_rows(100, per_class, 32).reshape(100, per_class, 32, 32, 3)
    target = folder / "cifar-100-python"
    target.mkdir(parents=True)
    for part, take in (("train", slice(0, per_class - 1)), ("test", slice(per_class - 1, None))):
        data = rows[:, take].transpose(0, 1, 4, 2, 3).reshape(-1, 3072)
        labels = np.repeat(np.arange(100), rows[:, take].shape[1]).tolist()
        content = {b"data": data, b"fine_labels": labels, b"batch_label": part.encode()}
        (target / part).write_bytes(pickle.dumps(content, protocol=2))
    (target / "meta").write_bytes(pickle.dumps({b"fine_label_names": names}, protocol=2))


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_miniimagenet(root / "miniimagenet")
    write_cifar100(root / "cifar100")
    return root


FIXTURE_RUN = ["--iterations", "2", "--hidden", "2", "--val-every", "1", "--val-tasks", "3",
               "--test-tasks", "4", "--eval-inner-steps", "1", "--inner-steps", "1",
               "--queries", "2", "--baseline-iterations", "1", "--no-tensorboard", "--no-plots",
               "--threads", "1"]


@pytest.mark.parametrize("task, label, classes", [("miniimagenet", "miniImageNet", 64),
                                                  ("cifar-fs", "CIFAR-FS", 64)])
def test_fixture_datasets_train_and_evaluate(fixture_root, tmp_path, capsys, task, label,
                                             classes) -> None:
    run = tmp_path / "run"
    assert main(["train", task, "--data-root", str(fixture_root), "--run-dir", str(run),
                 *FIXTURE_RUN]) == 0
    assert f"{task} 5-way 1-shot" in capsys.readouterr().out
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["accuracy"]) == {"MAML", "pretrained", "random init"}
    assert results["queries"] == 1 and results["test_episodes"] == 4
    saved = torch.load(run / "pretrained" / "checkpoints" / "best.pt", weights_only=True)
    assert saved["learner"]["model.classifier.weight"].shape[0] == classes
    config = json.loads((run / "config.json").read_text())
    assert (config["inner_lr"], config["meta_batch_size"]) == (0.01, 4)


# ------------------------------------------------------------------------------ bad input
def _no_training(run: Path) -> bool:
    return not (run / "maml").exists()


@pytest.mark.parametrize("argv, message", [
    (["miniimagenet", "--ways", "17"],
     "ways=17 but the meta-val split of miniImageNet has only 16 classes; use --ways 16"),
    (["cifar-fs", "--shots", "3", "--queries", "2"],
     "shots + queries = 3 + 2 = 5 examples per class are needed in the meta-train split of "
     "CIFAR-FS, but a class there has only 4"),
    (["cifar-fs", "--queries", "2", "--eval-queries", "4"],
     "in the meta-val split of CIFAR-FS, but a class there has only 4; lower --shots or "
     "--eval-queries"),
    (["miniimagenet", "--class-split", "paper"], "--class-split 'paper' is not a split of"),
    (["miniimagenet", "--queries", "2", "--model", "resnet"], "--model 'resnet' is unknown"),
])
def test_bad_episode_shapes_fail_before_training(fixture_root, tmp_path, capsys, argv,
                                                 message) -> None:
    run = tmp_path / "run"
    assert main(["train", *argv, "--data-root", str(fixture_root), "--run-dir", str(run)]) == 2
    assert message in capsys.readouterr().err
    assert _no_training(run)


def test_omniglot_shots_plus_queries_above_20(omniglot_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "omniglot", "--shots", "15", "--queries", "10", "--data-root",
                 str(omniglot_root), "--run-dir", str(run)]) == 2
    assert ("shots + queries = 15 + 10 = 25 examples per class are needed in the meta-train "
            "split of Omniglot, but a class there has only 20") in capsys.readouterr().err
    assert _no_training(run)


def test_missing_data_without_download(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)
    run = tmp_path / "run"
    assert main(["train", "omniglot", "--run-dir", str(run)]) == 2
    assert "no data folder given: pass --data-root" in capsys.readouterr().err
    assert main(["train", "omniglot", "--data-root", str(tmp_path), "--run-dir", str(run),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"Omniglot not found: {tmp_path / 'omniglot'} does not exist" in err
    assert "--download" in err
    (tmp_path / "omniglot").mkdir()
    assert main(["train", "omniglot", "--data-root", str(tmp_path), "--run-dir", str(run),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "images_background.zip" in err and "pass --download" in err
    (tmp_path / "miniimagenet").mkdir()
    assert main(["train", "miniimagenet", "--data-root", str(tmp_path), "--run-dir", str(run),
                 "--overwrite"]) == 2
    assert "mini-imagenet-cache-train.pkl not found" in capsys.readouterr().err
    assert _no_training(run)


def test_eval_of_a_run_without_checkpoints(omniglot_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    config = _config("omniglot", omniglot_root, test_tasks=2)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    assert main(["eval", str(run)]) == 2
    assert "best.pt does not exist; train the run first" in capsys.readouterr().err
