"""train_rl / evaluate_rl on the shared training loop: files, exact resume, configuration errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mamlkit import LoopConfig
from mamlkit.checkpoint import load_checkpoint
from mamlkit.rl import maml_trpo
from mamlkit.rl.train import RLSettings, evaluate_rl, train_rl
from mamlkit.train import NonFiniteError

TINY = dict(trajectories=3, pretrain_iterations=2, hidden_sizes=(8, 8), horizon=10, eval_tasks=3,
            eval_steps=2)
LOOP = LoopConfig(iterations=3, meta_batch_size=2, checkpoint_every=1, threads=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(stage: Path) -> list[dict[str, str]]:
    with (stage / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _policy(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "maml" / "checkpoints" / "last.pt")["learner"]


def test_train_then_evaluate_writes_everything(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    results = train_rl(RLSettings(**TINY), LOOP, run_dir)
    assert [(phase, int(r["iteration"])) for phase in ("maml", "pretrained")
            for r in _rows(run_dir / phase)] == [
        ("maml", 1), ("maml", 2), ("maml", 3), ("pretrained", 1), ("pretrained", 2)]
    assert results["maml"].iteration == 3 and not results["maml"].stopped_early
    assert load_checkpoint(run_dir / "maml" / "checkpoints" / "last.pt")["iteration"] == 3
    results = evaluate_rl(run_dir, RLSettings(**TINY))
    assert set(results) == {"MAML", "pretrained", "random init"}
    assert all(len(curve) == 3 for curve in results.values())
    assert (run_dir / "adaptation.png").stat().st_size > 0
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["MAML"][0]["n"] == 3


def test_resume_continues_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RLSettings(**{**TINY, "pretrain_iterations": 0})
    reference = tmp_path / "full"
    train_rl(config, LOOP, reference)

    real_step = maml_trpo.MAMLTRPO.step
    calls = {"n": 0}

    def crashing_step(self, tasks, seed):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, tasks, seed)

    monkeypatch.setattr(maml_trpo.MAMLTRPO, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train_rl(config, LOOP, tmp_path / "crashed")
    monkeypatch.setattr(maml_trpo.MAMLTRPO, "step", real_step)
    last = tmp_path / "crashed" / "maml" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["iteration"] == 2
    train_rl(config, LOOP, tmp_path / "crashed", resume=True)
    expected = _policy(reference)
    resumed = _policy(tmp_path / "crashed")
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
    assert [r["iteration"] for r in _rows(tmp_path / "crashed" / "maml")] == ["1", "2", "3"]


def test_resume_can_extend_a_run(tmp_path: Path) -> None:
    config = RLSettings(**{**TINY, "pretrain_iterations": 0})
    train_rl(config, LOOP, tmp_path / "three")
    train_rl(config, LoopConfig(**{**LOOP.to_dict(), "iterations": 2}), tmp_path / "extended")
    train_rl(config, LOOP, tmp_path / "extended", resume=True)
    expected = _policy(tmp_path / "three")
    extended = _policy(tmp_path / "extended")
    assert all(torch.equal(v, extended[k]) for k, v in expected.items())
    saved = load_checkpoint(tmp_path / "extended" / "maml" / "checkpoints" / "last.pt")["config"]
    assert saved["loop"]["iterations"] == 3 and saved["rl"] == config.to_dict()


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown RLSettings keys \\['meta_lr'\\]"):
        RLSettings.from_dict({"meta_lr": 0.1})
    with pytest.raises(ValueError, match="choose one of: nav2d"):
        RLSettings(env="hopper")
    with pytest.raises(ValueError, match="meta_batch_size must be >= 1"):
        LoopConfig(meta_batch_size=0)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_rl(RLSettings(**TINY), LOOP, tmp_path / "empty", resume=True)
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate_rl(tmp_path / "missing", RLSettings(**TINY))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "init.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="pass resume=True"):
        train_rl(RLSettings(**TINY), LOOP, tmp_path / "taken")
    with pytest.raises(ValueError, match="unknown phases"):
        train_rl(RLSettings(**TINY), LOOP, tmp_path / "other", phases=("warmup",))


def test_a_resume_that_changes_the_policy_is_refused_before_writing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_rl(RLSettings(**{**TINY, "pretrain_iterations": 0}), LOOP, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    wider = RLSettings(**{**TINY, "pretrain_iterations": 0, "hidden_sizes": (16, 16)})
    with pytest.raises(ValueError, match="does not fit this model or algorithm.*size mismatch"):
        train_rl(wider, LoopConfig(**{**LOOP.to_dict(), "iterations": 4}), run, resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_non_finite_trpo_step_is_undone_then_stops_or_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = maml_trpo.MAMLTRPO.step
    calls = {"n": 0}

    def second_step_diverges(self, tasks, seed):
        calls["n"] += 1
        metrics = real_step(self, tasks, seed)
        if calls["n"] == 2:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))
            metrics["surrogate_after"] = float("nan")
        return metrics

    monkeypatch.setattr(maml_trpo.MAMLTRPO, "step", second_step_diverges)
    config = RLSettings(**{**TINY, "pretrain_iterations": 0})
    with pytest.raises(NonFiniteError, match="meta-iteration 2 .*last.pt \\(iteration 1\\)"):
        train_rl(config, LOOP, tmp_path / "stop")
    kept = load_checkpoint(tmp_path / "stop" / "maml" / "checkpoints" / "last.pt")
    assert kept["iteration"] == 1 and all(torch.isfinite(v).all() for v in kept["learner"].values())
    calls["n"] = 0
    skip = LoopConfig(**{**LOOP.to_dict(), "on_nonfinite": "skip"})
    with pytest.warns(UserWarning, match="1 of 3 meta-iterations had a non-finite loss"):
        result = train_rl(config, skip, tmp_path / "skip")["maml"]
    assert result.skipped_steps == 1 and result.iteration == 3
    assert [r["skipped_steps"] for r in _rows(tmp_path / "skip" / "maml")] == ["0", "1", "1"]
    assert all(torch.isfinite(v).all() for v in _policy(tmp_path / "skip").values())
