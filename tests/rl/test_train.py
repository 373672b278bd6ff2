"""train_rl / evaluate_rl: files, exact resume, and configuration errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mamlkit.checkpoint import load_checkpoint
from mamlkit.rl import maml_trpo
from mamlkit.rl.train import RLConfig, evaluate_rl, train_rl

TINY = dict(meta_batch_size=2, trajectories=3, meta_iterations=3, pretrain_iterations=2,
            hidden_sizes=(8, 8), horizon=10, eval_tasks=3, eval_steps=2, checkpoint_every=1,
            threads=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_train_then_evaluate_writes_everything(tmp_path: Path) -> None:
    run_dir = train_rl(RLConfig(**TINY), tmp_path / "run")
    rows = _rows(run_dir)
    assert [(r["phase"], int(r["iteration"])) for r in rows] == [
        ("maml", 0), ("maml", 1), ("maml", 2), ("pretrained", 0), ("pretrained", 1)]
    assert load_checkpoint(run_dir / "maml.pt")["done"]
    results = evaluate_rl(run_dir)
    assert set(results) == {"MAML", "pretrained", "random init"}
    assert all(len(curve) == 3 for curve in results.values())
    assert (run_dir / "adaptation.png").stat().st_size > 0
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["MAML"][0]["n"] == 3


def test_resume_continues_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RLConfig(**{**TINY, "pretrain_iterations": 0})
    reference = train_rl(config, tmp_path / "full")

    real_step = maml_trpo.MAMLTRPO.step
    calls = {"n": 0}

    def crashing_step(self, tasks, seed):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, tasks, seed)

    monkeypatch.setattr(maml_trpo.MAMLTRPO, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train_rl(config, tmp_path / "crashed")
    monkeypatch.setattr(maml_trpo.MAMLTRPO, "step", real_step)
    assert load_checkpoint(tmp_path / "crashed" / "maml.pt")["iteration"] == 1
    train_rl(config, tmp_path / "crashed", resume=True)
    expected = load_checkpoint(reference / "maml.pt")["policy"]
    resumed = load_checkpoint(tmp_path / "crashed" / "maml.pt")["policy"]
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
    assert [r["iteration"] for r in _rows(tmp_path / "crashed")] == ["0", "1", "2"]


def test_resume_can_extend_a_run(tmp_path: Path) -> None:
    config = RLConfig(**{**TINY, "pretrain_iterations": 0})
    reference = train_rl(config, tmp_path / "three")
    short = RLConfig(**{**TINY, "pretrain_iterations": 0, "meta_iterations": 2})
    train_rl(short, tmp_path / "extended")
    train_rl(config, tmp_path / "extended", resume=True)
    expected = load_checkpoint(reference / "maml.pt")["policy"]
    extended = load_checkpoint(tmp_path / "extended" / "maml.pt")["policy"]
    assert all(torch.equal(v, extended[k]) for k, v in expected.items())
    saved = json.loads((tmp_path / "extended" / "config.json").read_text())
    assert saved["meta_iterations"] == 3
    assert saved["provenance"]["torch_version"] == torch.__version__  # rewritten on resume


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown RLConfig keys \\['meta_lr'\\]"):
        RLConfig.from_dict({"meta_lr": 0.1})
    with pytest.raises(ValueError, match="choose one of: nav2d"):
        RLConfig(env="hopper")
    with pytest.raises(ValueError, match="meta_batch_size must be >= 1"):
        RLConfig(meta_batch_size=0)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_rl(RLConfig(**TINY), tmp_path / "empty", resume=True)
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate_rl(tmp_path / "missing")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text(json.dumps(RLConfig(**TINY).to_dict()))
    with pytest.raises(FileExistsError, match="pass resume=True"):
        train_rl(RLConfig(**TINY), tmp_path / "taken")
    with pytest.raises(ValueError, match="config differs"):
        train_rl(RLConfig(**{**TINY, "inner_lr": 0.5}), tmp_path / "taken", resume=True)
    with pytest.raises(ValueError, match="unknown phases"):
        train_rl(RLConfig(**TINY), tmp_path / "other", phases=("warmup",))
