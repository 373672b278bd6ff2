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
    derived_defaults: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    """Defaults that depend on other settings (e.g. Omniglot's 20-way meta-batch): called with
    the merged settings, see :meth:`defaults_for`."""
    load: Callable[[TrainConfig, Path], Any] | None = None
    """``load(config, run_dir)``: the run's trained learner (for :func:`mamlkit.load_run`)."""
    algorithm_arguments: bool = False
    """Whether the experiment builds its learner with
    :func:`~mamlkit.experiments.common.build_learner`, which applies the ``[algorithm]`` table;
    an experiment that does not refuses a non-empty table (it would be ignored)."""
    check: Callable[[TrainConfig], None] | None = None
    """Raises ``ValueError`` for settings this experiment cannot honour, reading and checking the
    data a run would use, before any work (so a run folder is created only for a run that can
    start)."""

    def defaults_for(self, chosen: Mapping[str, Any]) -> dict[str, Any]:
        """The experiment's defaults given the values the user chose (config file and options).

        Some literature defaults depend on other settings (Omniglot's 20-way runs use a smaller
        meta-batch and more inner steps than 5-way ones): ``derived_defaults`` receives the
        defaults merged with ``chosen`` and returns those dependent values, which replace the
        plain defaults but are still overridden by anything in ``chosen``.
        """
        merged = {**self.defaults, **chosen}
        derived = self.derived_defaults(merged) if self.derived_defaults else {}
        return {**self.defaults, **derived}


_REGISTRY: dict[str, str] = {
    "sinusoid": "mamlkit.experiments.regression:SINUSOID",
    "linear": "mamlkit.experiments.regression:LINEAR",
    "banking77": "mamlkit.experiments.text:BANKING77",
    "clinc150": "mamlkit.experiments.text:CLINC150",
    "fewrel": "mamlkit.experiments.text:FEWREL",
    "omniglot": "mamlkit.experiments.vision:OMNIGLOT",
    "images": "mamlkit.experiments.images:IMAGES",
    "miniimagenet": "mamlkit.experiments.vision:MINIIMAGENET",
    "cifar-fs": "mamlkit.experiments.vision:CIFAR_FS",
    "nav2d": "mamlkit.experiments.rl:NAV2D",
    "halfcheetah-vel": "mamlkit.experiments.rl:HALFCHEETAH_VEL",
    "halfcheetah-dir": "mamlkit.experiments.rl:HALFCHEETAH_DIR",
    "ant-vel": "mamlkit.experiments.rl:ANT_VEL",
    "ant-dir": "mamlkit.experiments.rl:ANT_DIR",
}
"""Experiment name -> ``module:attribute`` of its :class:`Experiment`."""


def experiment_names() -> list[str]:
    """Every known experiment name."""
    return sorted(_REGISTRY)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        hint = (f" For a folder of images use: mamlkit train images --data-root {name}"
                if Path(name).expanduser().is_dir() else "")
        raise ValueError(f"Unknown task {name!r}. Known tasks: {', '.join(experiment_names())}."
                         + hint)
    module, attribute = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attribute)
