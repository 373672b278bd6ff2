"""Experiment trackers beyond metrics.csv: TensorBoard's hparams view of a finished run, with its
final evaluation, and the optional Weights & Biases run (:mod:`mamlkit.integrations.wandb`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlkit.config import TrainConfig


def flatten_numbers(results: Any, prefix: str = "eval") -> dict[str, float]:
    """Every number in a nested results dict/list, keyed by its path (``eval/mse/10/MAML/1/mean``)."""
    flat: dict[str, float] = {}
    if isinstance(results, bool):
        return flat
    if isinstance(results, (int, float)):
        return {prefix: float(results)}
    items = results.items() if isinstance(results, Mapping) else (
        enumerate(results) if isinstance(results, (list, tuple)) else ())
    for key, value in items:
        flat.update(flatten_numbers(value, f"{prefix}/{key}"))
    return flat


def hparams_of(config: TrainConfig) -> dict[str, Any]:
    """The run's settings as TensorBoard hparams (scalars and strings; lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in config.to_dict().items()}


def log_final_evaluation(config: TrainConfig, run_dir: Path, results: Mapping[str, Any]) -> None:
    """Record the final evaluation next to the run's settings: TensorBoard's hparams table
    (``RUN/tensorboard/final``) when TensorBoard is on and installed, and a ``wandb`` summary
    run when ``--wandb`` is on."""
    metrics = flatten_numbers(results)
    if not metrics:
        return
    if config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            pass
        else:
            with SummaryWriter(str(Path(run_dir) / "tensorboard" / "final")) as writer:
                writer.add_hparams(hparams_of(config), metrics, run_name=".")
    from mamlkit.integrations.wandb import start_run

    run_dir = Path(run_dir)
    run = start_run(config, run_dir, name="evaluation", group=run_dir.resolve().name)
    if run is not None:
        run.summary.update(metrics)
        run.finish()
