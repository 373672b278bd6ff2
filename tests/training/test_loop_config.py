"""The library loop takes only the settings it reads: LoopConfig, a TrainConfig's loop fields, or a
dict / keywords of loop settings (anything else refused, naming it, before any work)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import mamlkit
from mamlkit import MAML, LoopConfig, Sinusoid, TrainConfig, meta_train
from mamlkit.checkpoint import load_checkpoint
from mamlkit.config import make_config
from mamlkit.loop_config import LOOP_FIELDS, loop_config


def _learner() -> MAML:
    torch.manual_seed(0)
    return MAML(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)), inner_lr=0.01)


def test_loop_config_is_public_and_its_defaults_are_no_task_familys() -> None:
    assert mamlkit.LoopConfig is LoopConfig
    sinusoid = TrainConfig()  # the sinusoid's literature settings
    neutral = LoopConfig()
    differing = {name for name in ("iterations", "meta_batch_size", "val_every", "checkpoint_every")
                 if getattr(neutral, name) != getattr(sinusoid, name)}
    assert differing == {"iterations", "meta_batch_size", "val_every", "checkpoint_every"}
    assert not {"ways", "shots", "queries", "inner_lr", "task", "model"} & set(LOOP_FIELDS)


def test_unused_settings_are_refused_in_one_line_naming_them_before_any_work(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not use shots, ways: it reads only iterations, "
                                         ".*Give task and model settings to the task sampler"):
        meta_train(_learner(), Sinusoid(seed=0), {"iterations": 2, "ways": 5, "shots": 1},
                   tmp_path / "dict")
    with pytest.raises(ValueError, match="does not use inner_lr"):
        meta_train(_learner(), Sinusoid(seed=0), run_dir=tmp_path / "kw", iterations=2,
                   inner_lr=0.1)
    assert not (tmp_path / "dict").exists() and not (tmp_path / "kw").exists()
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        LoopConfig(on_nonfinite="ignore")


def test_a_train_config_gives_the_loop_exactly_its_loop_fields(tmp_path) -> None:
    config = make_config({"iterations": 4, "meta_batch_size": 2, "val_every": 2, "val_tasks": 3,
                          "checkpoint_every": 2, "eval_inner_steps": 2, "tensorboard": False,
                          "ways": 3, "shots": 7, "meta_lr": 3e-3})
    loop = loop_config(config)
    assert (loop.iterations, loop.meta_batch_size, loop.val_inner_steps, loop.meta_lr,
            loop.title) == (4, 2, 2, 3e-3, "meta-train sinusoid")
    val = Sinusoid().fixed_tasks(3, seed=1)
    from_train_config = _learner()
    meta_train(from_train_config, Sinusoid(seed=0), config, tmp_path / "a", val_batch=val,
               progress=False)
    from_keywords = _learner()
    meta_train(from_keywords, Sinusoid(seed=0), run_dir=tmp_path / "b", val_batch=val,
               progress=False, **{k: v for k, v in dataclasses.asdict(loop).items()})
    for p, q in zip(from_train_config.parameters(), from_keywords.parameters()):
        assert torch.equal(p, q)
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["config"]["shots"] == 7
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["config"] == loop.to_dict()
