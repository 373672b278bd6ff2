"""Meta-RL experiments (Finn et al. 2017, Section 5.3) behind ``mamlkit train NAME``.

The RL domain has its own loop (:mod:`mamlkit.rl.train`: fresh trajectories at every inner step,
a TRPO outer step); this module maps the shared configuration onto it, so 2D navigation and the
MuJoCo locomotion families train, resume and evaluate from the same command as every other task.
The RL run itself lives in ``RUN_DIR/rl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mamlkit.config import TrainConfig
from mamlkit.experiments import Experiment
from mamlkit.experiments.common import save_config
from mamlkit.wording import count


def rl_config(config: TrainConfig) -> Any:
    """The :class:`mamlkit.rl.train.RLConfig` equivalent of a shared configuration."""
    from mamlkit.rl.train import RLConfig

    if config.algo not in ("maml", "fomaml"):
        raise ValueError(f"The RL experiments run MAML-TRPO only; --algo {config.algo!r} is not "
                         "available for them (use maml, or fomaml for first order).")
    return RLConfig(
        env=config.task, meta_batch_size=config.meta_batch_size, trajectories=config.shots,
        inner_steps=config.inner_steps, inner_lr=config.inner_lr,
        first_order=config.first_order or config.algo == "fomaml",
        meta_iterations=config.iterations,
        pretrain_iterations=config.baseline_iterations or None, seed=config.seed,
        checkpoint_every=config.checkpoint_every, eval_tasks=config.test_tasks,
        eval_steps=config.eval_inner_steps, threads=config.threads or None, device=config.device)


def train(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """MAML-TRPO, then the pretrained (multi-task TRPO) baseline, into ``run_dir/rl``."""
    from mamlkit.rl.train import train_rl

    settings = rl_config(config)
    save_config(config, run_dir)
    train_rl(settings, run_dir / "rl", resume=resume and (run_dir / "rl").is_dir())
    return {"rl": {"iterations": config.iterations, "stopped": ""}}


def evaluate(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Average return after 0..``eval_inner_steps`` policy-gradient steps on new tasks for MAML,
    the pretrained policy and a random initialisation (the paper's Figure 5)."""
    from mamlkit.rl.train import evaluate_rl

    results = evaluate_rl(run_dir / "rl", plot=config.plots)
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


_RL_DEFAULTS = {"meta_batch_size": 20, "shots": 20, "inner_steps": 1, "inner_lr": 0.1,
                "iterations": 500, "eval_inner_steps": 3, "test_tasks": 40, "checkpoint_every": 10,
                "threads": 2}
"""The paper's settings: 20 tasks x 20 trajectories (``shots``), one policy-gradient step with
step size 0.1, 500 TRPO meta-iterations (max KL 0.01); Figure 5 evaluates 0..3 steps."""


def _experiment(name: str, summary: str, **defaults: Any) -> Experiment:
    return Experiment(name=name, summary=summary, defaults={**_RL_DEFAULTS, "task": name, **defaults},
                      train=train, evaluate=evaluate)


NAV2D = _experiment("nav2d", "2D point navigation to a goal in [-0.5,0.5]^2 (MAML-TRPO, 5.3).")
HALFCHEETAH_VEL = _experiment("halfcheetah-vel", "MuJoCo HalfCheetah, goal velocity ~U[0,2].",
                              meta_batch_size=40)
HALFCHEETAH_DIR = _experiment("halfcheetah-dir", "MuJoCo HalfCheetah, run forward or backward.",
                              meta_batch_size=40)
ANT_VEL = _experiment("ant-vel", "MuJoCo Ant, goal velocity.", meta_batch_size=40)
ANT_DIR = _experiment("ant-dir", "MuJoCo Ant, run forward or backward.", meta_batch_size=40)
