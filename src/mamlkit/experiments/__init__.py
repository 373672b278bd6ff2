"""Ready-made experiments, one per task family, selected by name on the command line.

Each experiment carries the literature's defaults and knows how to train and evaluate itself;
modules are imported only when their experiment is used, so optional dependencies (gymnasium,
transformers) are needed only for the experiments that use them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlkit.config import TrainConfig


@dataclass(frozen=True)
class Experiment:
    """A named task family with its defaults and its train/evaluate entry points.

    ``train(config, run_dir, resume)`` meta-trains into ``run_dir`` and returns a summary dict;
    ``evaluate(config, run_dir)`` runs the paper's evaluation protocol on a finished run, prints
    and saves the results (``run_dir/eval/``) and returns them.
    """

    name: str
    summary: str
    defaults: Mapping[str, Any]
    train: Callable[[TrainConfig, Path, bool], dict[str, Any]]
    evaluate: Callable[[TrainConfig, Path], dict[str, Any]]
    aliases: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, str] = {
    "sinusoid": "mamlkit.experiments.regression:SINUSOID",
    "linear": "mamlkit.experiments.regression:LINEAR",
    "banking77": "mamlkit.experiments.text:BANKING77",
    "clinc150": "mamlkit.experiments.text:CLINC150",
    "fewrel": "mamlkit.experiments.text:FEWREL",
}
"""Experiment name -> ``module:attribute`` of its :class:`Experiment`."""


def experiment_names() -> list[str]:
    """Every known experiment name."""
    return sorted(_REGISTRY)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown task {name!r}. Known tasks: {', '.join(experiment_names())}.")
    module, attribute = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attribute)
