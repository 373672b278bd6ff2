"""Loading a trained run back: ``mamlkit.load_run(run_dir)``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mamlkit.config import make_config
from mamlkit.core.learner import MetaLearner
from mamlkit.experiments import get_experiment
from mamlkit.experiments.common import load_run_config


def load_run(run_dir: str | Path, device: str = "cpu") -> MetaLearner:
    """The meta-learned learner of the run in ``run_dir`` (its best checkpoint), ready to adapt.

    ``learner.adapt(support_x, support_y)`` then gives the adapted parameters for one task and
    ``learner.predict(params, x)`` the outputs; adaptation uses the run's inner learning rate
    and ``eval_inner_steps``. Supported for the image tasks and the regression tasks.
    """
    run_dir = Path(run_dir)
    config = dataclasses.replace(make_config(load_run_config(run_dir)), device=device)
    experiment = get_experiment(config.task)
    if experiment.load is None:
        raise ValueError(f"load_run does not support {config.task!r} runs yet; load the "
                         f"checkpoint {run_dir}/**/checkpoints/best.pt with "
                         "mamlkit.checkpoint.load_checkpoint instead.")
    return experiment.load(config, run_dir)
