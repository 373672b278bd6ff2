"""``mamlkit export``: the meta-learned initialisation, loaded into a fresh model, adapts to a new
task exactly as the trained learner does, for MAML's CNN (safetensors) and for a small Hugging
Face model built from a config (safetensors and save_pretrained); no download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mamlkit import MAML, TaskBatch
from mamlkit.checkpoint import save_checkpoint
from mamlkit.cli import main
from mamlkit.models import ConvNet

safetensors_torch = pytest.importorskip("safetensors.torch")


def _episode(tasks: int, make_x, seed: int) -> TaskBatch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(5).repeat(tasks, 2)
    return TaskBatch(make_x(tasks, generator), labels, make_x(tasks, generator), labels)


def _train_and_save(learner: MAML, batch: TaskBatch, run: Path) -> None:
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        learner.meta_backward(batch)
        optimizer.step()
    save_checkpoint(run / "maml" / "checkpoints" / "best.pt",
                    {"learner": learner.state_dict(), "iteration": 2,
                     "config": {"algo": "maml", "task": "test"}})
    save_checkpoint(run / "pretrained" / "checkpoints" / "best.pt", {"learner": {}})


def _adapted_outputs(learner: MAML, task: TaskBatch) -> torch.Tensor:
    params = learner.adapt(task.support_x[0], task.support_y[0], steps=3)
    out = learner.predict(params, task.query_x[0])
    return getattr(out, "logits", out)


def _cnn() -> ConvNet:
    return ConvNet(in_channels=1, ways=5, hidden=8, image_size=28)


def test_cnn_export_reloads_to_identical_adapted_predictions(tmp_path, capsys) -> None:
    images = lambda n, g: torch.randn(n, 10, 1, 28, 28, generator=g)  # noqa: E731
    torch.manual_seed(0)
    trained = MAML(_cnn(), inner_lr=0.4, loss="cross_entropy")
    _train_and_save(trained, _episode(2, images, seed=0), tmp_path)
    assert main(["export", str(tmp_path), "--format", "safetensors"]) == 0
    written = tmp_path / "export" / "model.safetensors"
    assert str(written) in capsys.readouterr().out
    state = safetensors_torch.load_file(str(written))
    assert set(state) == set(trained.model.state_dict())  # plain names, buffers included
    torch.manual_seed(1)
    fresh = _cnn()
    fresh.load_state_dict(state)
    new_task = _episode(1, images, seed=7)
    expected = _adapted_outputs(trained, new_task)
    got = _adapted_outputs(MAML(fresh, inner_lr=0.4, loss="cross_entropy"), new_task)
    assert torch.equal(got, expected)
    with safetensors_torch.safe_open(str(written), "pt") as handle:
        assert handle.metadata()["algorithm"] == "maml"


transformers = pytest.importorskip("transformers")


def _bert_config() -> object:
    return transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32, num_labels=5,
                                   max_position_embeddings=16, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0,
                                   architectures=["BertForSequenceClassification"])


def test_hugging_face_model_exports_as_safetensors_and_save_pretrained(tmp_path) -> None:
    tokens = lambda n, g: torch.randint(1, 50, (n, 10, 6), generator=g)  # noqa: E731
    torch.manual_seed(0)
    # first order: CPU attention kernels have no second derivative
    trained = MAML(transformers.BertForSequenceClassification(_bert_config()), inner_lr=0.1,
                   loss="cross_entropy", first_order=True, batching="loop")
    _train_and_save(trained, _episode(2, tokens, seed=0), tmp_path / "run")
    new_task = _episode(1, tokens, seed=9)
    expected = _adapted_outputs(trained, new_task)

    config_dir = tmp_path / "architecture"
    _bert_config().save_pretrained(str(config_dir))  # what --hf-config reads: config.json only
    hf_dir = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), "--format", "hf", "--hf-config",
                 str(config_dir), "--out", str(hf_dir)]) == 0
    reloaded = transformers.BertForSequenceClassification.from_pretrained(str(hf_dir))
    got = _adapted_outputs(MAML(reloaded, inner_lr=0.1, loss="cross_entropy"), new_task)
    assert torch.equal(got, expected)

    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "bert.safetensors")]) == 0
    fresh = transformers.BertForSequenceClassification(_bert_config())
    fresh.load_state_dict(safetensors_torch.load_file(str(tmp_path / "bert.safetensors")))
    got = _adapted_outputs(MAML(fresh, inner_lr=0.1, loss="cross_entropy"), new_task)
    assert torch.equal(got, expected)


def test_export_refusals_name_the_fix(tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--format", "hf"]) == 2
    assert "--hf-config" in capsys.readouterr().err
