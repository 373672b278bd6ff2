"""An optional Weights & Biases logger for ``mamlkit train`` (``--wandb offline|online``).

``offline`` writes the run under ``RUN/wandb/`` without any network (``wandb sync`` uploads it
later); ``online`` logs live and needs a login. The config is recorded as the run's config, every
row of metrics.csv as a step, and the final evaluation as the run's summary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mamlkit.config import TrainConfig


def start_run(config: TrainConfig, run_dir: Path, name: str = "", group: str = "") -> Any | None:
    """A ``wandb`` run logging into ``run_dir`` (None when ``config.wandb`` is ``off``), named
    ``name`` (default the folder's) in ``group`` (default the folder above: the whole run)."""
    if config.wandb == "off":
        return None
    try:
        import wandb
    except ImportError as error:
        raise ImportError(f'--wandb {config.wandb} needs wandb: pip install "mamlkit[wandb]", or '
                          "use --wandb off.") from error
    os.environ.setdefault("WANDB_SILENT", "true")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "mamlkit"), dir=str(run_dir),
                      name=name or run_dir.name, group=group or run_dir.resolve().parent.name,
                      mode=config.wandb, config=config.to_dict(), reinit="create_new")


def log_row(run: Any, row: dict[str, float]) -> None:
    """One metrics row (``iteration`` is the step)."""
    run.log({k: v for k, v in row.items() if k != "iteration"}, step=int(row["iteration"]))
