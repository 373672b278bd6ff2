"""Meta-RL experiments (Finn et al. 2017, Section 5.3) behind ``mamlkit train NAME``.

MAML-TRPO runs on the shared training loop (:mod:`mamlkit.rl.train`, through
:class:`mamlkit.rl.step.RLStep`: fresh trajectories at every inner step, a TRPO outer step), so
2D navigation and the MuJoCo locomotion families train, stop (signals, time budget), checkpoint,
resume and evaluate from the same command as every other task. The run folder holds one
``config.json``, ``init.pt`` and the stages ``maml/`` and ``pretrained/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mamlkit.config import TrainConfig
from mamlkit.experiments import Experiment
from mamlkit.experiments.common import save_config
from mamlkit.wording import count

UNSET_SHOTS = TrainConfig.shots
"""``shots`` as a run leaves it when not set: RL has no support set (rollouts are
``trajectories``)."""


def rl_settings(config: TrainConfig) -> Any:
    """The :class:`mamlkit.rl.train.RLSettings` of a configuration (its RL fields)."""
    from mamlkit.rl.train import RLSettings

    check(config)
    return RLSettings(
        env=config.task, trajectories=config.trajectories, inner_steps=config.inner_steps,
        inner_lr=config.inner_lr, first_order=config.first_order or config.algo == "fomaml",
        pretrain_iterations=config.baseline_iterations or None, eval_tasks=config.test_tasks,
        eval_steps=config.eval_inner_steps)


def check(config: TrainConfig) -> None:
    """Refuse settings MAML-RL cannot honour, before a run folder exists."""
    if config.algo not in ("maml", "fomaml"):
        raise ValueError(f"The RL experiments run MAML-TRPO only; --algo {config.algo!r} is not "
                         "available for them (use maml, or fomaml for first order).")
    if config.shots != UNSET_SHOTS:
        raise ValueError(f"{config.task} has no support set, so --shots {config.shots} does not "
                         f"apply: the rollouts per task are --trajectories (now "
                         f"{config.trajectories}). Drop --shots.")


def train(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """MAML-TRPO, then the pretrained (multi-task TRPO) baseline, into ``run_dir/maml`` and
    ``run_dir/pretrained`` on the shared loop (its settings from ``config``)."""
    from mamlkit.loop_config import loop_config
    from mamlkit.rl.train import train_rl

    settings = rl_settings(config)
    save_config(config, run_dir)
    results = train_rl(settings, loop_config(config), run_dir, resume=resume, record=config)
    summary = {name: {"iterations": result.iteration, "train_seconds": result.elapsed_s,
                      "stopped": result.stopped_early} for name, result in results.items()}
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Average return after 0..``eval_inner_steps`` policy-gradient steps on new tasks for MAML,
    the pretrained policy and a random initialisation (the paper's Figure 5)."""
    from mamlkit.rl.train import evaluate_rl

    results = evaluate_rl(run_dir, rl_settings(config), config.seed, config.device,
                          plot=config.plots)
    steps = len(next(iter(results.values())))
    lines = [f"{config.task}: average return after k adaptation steps, mean ± 95% CI over "
             f"{config.test_tasks} new tasks",
             f"{'policy':<12}" + "".join(f"{count(k, 'step'):>18}" for k in range(steps))]
    for label, estimates in results.items():
        lines.append(f"{label:<12}" + "".join(f"{f'{e.mean:.2f} ± {e.ci95:.2f}':>18}"
                                              for e in estimates))
    table = "\n".join(lines)
    print(table)
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / "table.txt").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(
        {k: [{"mean": e.mean, "ci95": e.ci95} for e in v] for k, v in results.items()},
        indent=2) + "\n")
    return {"table": table}


_RL_DEFAULTS = {"meta_batch_size": 20, "trajectories": 20, "inner_steps": 1, "inner_lr": 0.1,
                "iterations": 500, "eval_inner_steps": 3, "test_tasks": 40, "checkpoint_every": 10,
                "log_every": 1, "threads": 2}
"""The paper's settings: 20 tasks x 20 trajectories, one policy-gradient step with step size
0.1, 500 TRPO meta-iterations (max KL 0.01); Figure 5 evaluates 0..3 steps. Every iteration
(seconds) gets a metrics row."""


def _experiment(name: str, summary: str, **defaults: Any) -> Experiment:
    return Experiment(name=name, summary=summary, defaults={**_RL_DEFAULTS, "task": name, **defaults},
                      train=train, evaluate=evaluate, check=check)


NAV2D = _experiment("nav2d", "2D point navigation to a goal in [-0.5,0.5]^2 (MAML-TRPO, 5.3).")
HALFCHEETAH_VEL = _experiment("halfcheetah-vel", "MuJoCo HalfCheetah, goal velocity ~U[0,2].",
                              meta_batch_size=40)
HALFCHEETAH_DIR = _experiment("halfcheetah-dir", "MuJoCo HalfCheetah, run forward or backward.",
                              meta_batch_size=40)
ANT_VEL = _experiment("ant-vel", "MuJoCo Ant, goal velocity.", meta_batch_size=40)
ANT_DIR = _experiment("ant-dir", "MuJoCo Ant, run forward or backward.", meta_batch_size=40)
