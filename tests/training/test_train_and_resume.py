"""The shared training loop: checkpoints, exact resume, non-finite handling."""

from __future__ import annotations

import pytest
import torch

from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.config import make_config
from mamlkit.experiments.common import build_learner
from mamlkit.models import MLP
from mamlkit.tasks.regression import Sinusoid
from mamlkit.train import NonFiniteError, meta_train


def _run(tmp, iterations, resume=False, **overrides):
    config = make_config({"iterations": iterations, "meta_batch_size": 4, "val_every": 5,
                          "val_tasks": 8, "checkpoint_every": 5, "tensorboard": False,
                          "eval_inner_steps": 1, **overrides})
    torch.manual_seed(0)
    learner = build_learner(config, MLP((1, 8, 8, 1)), "mse")
    tasks = Sinusoid(seed=0)
    result = meta_train(learner, tasks, config, tmp, resume=resume, progress=False,
                        val_batch=Sinusoid().fixed_tasks(8, seed=1))
    return learner, result


def test_resume_continues_exactly(tmp_path) -> None:
    straight, _ = _run(tmp_path / "a", 20)
    _run(tmp_path / "b", 10)
    resumed, result = _run(tmp_path / "b", 20, resume=True)
    assert result.iteration == 20
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    iterations = [int(r.split(",")[0]) for r in rows[1:]]
    assert iterations == sorted(set(iterations))  # no duplicated rows after resume


def test_checkpoints_load_with_weights_only_and_keep_best(tmp_path) -> None:
    _run(tmp_path, 10)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert last["iteration"] == 10 and best["iteration"] in (5, 10)
    assert last["config"]["meta_batch_size"] == 4
    torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"x": torch.ones(2)})

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"x": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert list(tmp_path.iterdir()) == [path]


def test_corrupt_and_missing_checkpoints(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path) -> None:
    _run(tmp_path, 5)
    before = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"]
    with pytest.raises(NonFiniteError, match="meta-iteration 6"):
        _run(tmp_path, 10, resume=True, inner_lr=1e30)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] == before


def test_non_finite_steps_can_be_skipped(tmp_path) -> None:
    _, result = _run(tmp_path, 3, inner_lr=1e30, on_nonfinite="skip", val_every=0)
    assert result.skipped_steps == 3
