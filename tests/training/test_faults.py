"""Faults met by the training loop and its files: the metrics log, best tracking, skipped steps,
resume checks, the Omniglot cache, and what the test suite itself needs installed."""

from __future__ import annotations

import ast
import csv
import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mamlkit.supervised as train_module  # the supervised step checks finiteness and validates
from mamlkit.checkpoint import load_checkpoint
from mamlkit.config import make_config
from mamlkit.datasets import _files
from mamlkit.datasets.omniglot import _load_set
from mamlkit.experiments.common import build_learner
from mamlkit.models import MLP
from mamlkit.tasks.regression import Sinusoid
from mamlkit.train import MAX_SKIPS_IN_A_ROW, NonFiniteError, meta_train

REPO = Path(__file__).resolve().parents[2]


def _train(run_dir: Path, iterations: int, resume: bool = False, **overrides):
    config = make_config({"iterations": iterations, "meta_batch_size": 2, "val_every": 5,
                          "val_tasks": 4, "checkpoint_every": 5, "tensorboard": False,
                          "eval_inner_steps": 1, **overrides})
    torch.manual_seed(0)
    learner = build_learner(config, MLP((1, 8, 1)), "mse")
    return meta_train(learner, Sinusoid(seed=0), config, run_dir, resume=resume, progress=False,
                      val_batch=Sinusoid().fixed_tasks(4, seed=1))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# 4: the metrics log ----------------------------------------------------------------------------
def test_metrics_log_has_every_metric_at_the_chosen_interval(tmp_path) -> None:
    _train(tmp_path, 12, algo="imaml", log_every=3, val_every=0)
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [3, 6, 9, 12]
    assert all(float(r["inner_residual"]) >= 0 for r in rows)  # iMAML's own metric


def test_a_kill_during_the_resume_rewrite_loses_no_history(tmp_path, monkeypatch) -> None:
    _train(tmp_path, 20, log_every=1)
    path = tmp_path / "metrics.csv"
    before = path.read_bytes()

    def killed(*args) -> None:  # the process dies after writing the new file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(_files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, 30, resume=True, log_every=1)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("metrics.csv.")]
    monkeypatch.undo()
    _train(tmp_path, 30, resume=True, log_every=1)
    assert [int(r["iteration"]) for r in _rows(path)] == list(range(1, 31))


def test_a_new_metric_extends_the_columns_without_losing_rows(tmp_path) -> None:
    _train(tmp_path, 10, log_every=1)
    _train(tmp_path, 15, resume=True, log_every=1, on_nonfinite="skip")  # adds skipped_steps
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, 16))
    assert rows[0]["skipped_steps"] == "" and rows[-1]["skipped_steps"] == "0"


# 3: no rewinding ------------------------------------------------------------------------------
def test_resume_below_the_checkpoint_is_refused_before_writing(tmp_path) -> None:
    _train(tmp_path, 20)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="is at iteration 20, past iterations = 10"):
        _train(tmp_path, 10, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# 5: skipped steps -----------------------------------------------------------------------------
def test_skipped_steps_are_counted_and_too_many_in_a_row_stop(tmp_path, monkeypatch) -> None:
    real = train_module.all_finite
    calls = {"n": 0}

    def every_third_is_bad(loss, params) -> bool:
        calls["n"] += 1
        return real(loss, params) and calls["n"] % 3 != 0

    monkeypatch.setattr(train_module, "all_finite", every_third_is_bad)
    with pytest.warns(UserWarning, match="4 of 12 meta-iterations had a non-finite loss"):
        result = _train(tmp_path / "some", 12, on_nonfinite="skip", log_every=1, val_every=0)
    assert result.skipped_steps == 4 and not result.stopped_early
    assert [r["skipped_steps"] for r in _rows(tmp_path / "some" / "metrics.csv")][-1] == "4"
    assert load_checkpoint(tmp_path / "some" / "checkpoints" / "last.pt")["skipped_steps"] == 4

    monkeypatch.setattr(train_module, "all_finite", lambda loss, params: False)
    with pytest.raises(NonFiniteError, match=f"{MAX_SKIPS_IN_A_ROW} meta-iterations in a row"):
        _train(tmp_path / "all", 100, on_nonfinite="skip", val_every=0)


# 6: a NaN validation is never the best --------------------------------------------------------
def test_nan_validation_never_becomes_the_best(tmp_path, monkeypatch) -> None:
    losses = iter([float("nan"), 2.0, float("nan"), 1.0, 1.5])
    monkeypatch.setattr(train_module, "validate",
                        lambda *args, **kwargs: {"val_loss": next(losses)})
    result = _train(tmp_path, 25)
    assert result.best_metric == 1.0
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["iteration"] == 20 and best["best_metric"] == 1.0


def test_only_nan_validations_warn_and_keep_the_final_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(train_module, "validate",
                        lambda *args, **kwargs: {"val_loss": float("nan")})
    with pytest.warns(UserWarning, match="no validation gave a finite result"):
        result = _train(tmp_path, 10)
    assert result.best_metric is None
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["iteration"] == 10


# 11: the Omniglot cache is checked ------------------------------------------------------------
def test_damaged_omniglot_cache_is_rebuilt_not_used(tmp_path) -> None:
    from PIL import Image

    for character in (1, 2):
        folder = tmp_path / "data" / "images_background" / "Alpha" / f"character{character:02d}"
        folder.mkdir(parents=True)
        for drawing in (1, 2):
            pixels = np.full((20, 20), 40 * character + drawing, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{character:02d}{drawing:02d}_{drawing:02d}.png")
    cache = tmp_path / "cache"
    args = (tmp_path / "data", "images_background", 8, "lanczos", False, cache, "download", "")
    first = np.array(_load_set(*args).images)
    array_path = next(cache.glob("*.npy"))
    damaged = bytearray(array_path.read_bytes())
    damaged[-10:] = bytes(255 - b for b in damaged[-10:])  # flipped bytes, same shape
    array_path.write_bytes(bytes(damaged))
    with pytest.warns(UserWarning, match="no longer matches its recorded sha256"):
        again = _load_set(*args)
    assert np.array_equal(np.array(again.images), first)
    assert np.array_equal(np.load(array_path), first)  # and the cache is repaired


# 12: the test extra installs what the tests import --------------------------------------------
def test_the_dev_extra_provides_every_module_the_tests_import() -> None:
    """`pip install -e ".[dev]"` must be enough for `python -m pytest -q` (README)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def requirements(names: list[str]) -> set[str]:
        found: set[str] = set()
        for requirement in names:
            name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
            inner = re.search(r"mamlkit\[([^\]]+)\]", requirement)
            if inner:
                found |= requirements([x for extra in inner.group(1).split(",")
                                       for x in extras[extra.strip()]])
            elif name:
                found.add(name.replace("_", "-"))
        return found

    declared = requirements(project["dependencies"] + extras["dev"])
    for requirement in extras["dev"]:  # what an extra of a requirement pulls in (gymnasium[mujoco])
        inner = re.match(r"([A-Za-z0-9_.-]+)\[([^\]]+)\]", requirement)
        if inner and not inner.group(1).startswith("mamlkit"):
            wanted = {e.strip() for e in inner.group(2).split(",")}
            for dependency in importlib.metadata.requires(inner.group(1)) or []:
                marker = re.search(r"extra == ['\"]([^'\"]+)['\"]", dependency)
                if marker and marker.group(1) in wanted:
                    declared |= requirements([dependency.split(";")[0]])
    distributions = importlib.metadata.packages_distributions()
    local = {p.stem for p in (REPO / "tests").rglob("*.py")} | {"mamlkit", "conftest"}
    missing: dict[str, set[str]] = {}
    for path in (REPO / "tests").rglob("*.py"):
        for name in _imported_modules(ast.parse(path.read_text())):
            top = name.split(".")[0]
            if top in local or top in sys.stdlib_module_names:
                continue
            providers = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
            if not providers & declared:
                missing.setdefault(top, set()).add(path.name)
    assert not missing, f"modules the tests import but [dev] does not install: {missing}"


def _imported_modules(tree: ast.AST) -> list[str]:
    """Modules a test file imports, or probes by name (``importorskip("x")``,
    ``find_spec("x")``, also over a literal tuple of names)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("find_spec", "importorskip"):
            names += [a.value for a in node.args[:1] if isinstance(a, ast.Constant)
                      and isinstance(a.value, str)]
        elif isinstance(node, (ast.GeneratorExp, ast.ListComp)) and "find_spec" in ast.dump(node.elt):
            names += [e.value for g in node.generators if isinstance(g.iter, (ast.Tuple, ast.List))
                      for e in g.iter.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return names
