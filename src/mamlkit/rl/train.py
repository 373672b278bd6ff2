"""Training and evaluation entry points for MAML-RL (Finn et al. 2017, Sec. 5.3).

``train_rl(settings, loop, run_dir)`` meta-trains a Gaussian MLP policy with MAML-TRPO on the
shared training loop (:func:`mamlkit.train.train_loop`, through :class:`mamlkit.rl.step.RLStep`),
then (unless ``pretrain_iterations == 0``) trains the paper's "pretrained" baseline: the same
policy trained with TRPO on all tasks jointly, without adaptation. Each phase is a stage of the
run like a supervised one: ``RUN/maml`` and ``RUN/pretrained`` hold ``checkpoints/`` (last, best,
rotated) and ``metrics.csv``, with the loop's stop signals, time budget, non-finite policy and
exact resume. :class:`RLSettings` holds the RL settings; the loop's (iterations, meta-batch,
seed, checkpoints, device) are a :class:`~mamlkit.loop_config.LoopConfig`.
``evaluate_rl(run_dir, settings)`` scores MAML, pretrained and the random initialisation after
0..3 adaptation steps on new tasks (Figure 5) and writes ``eval.csv``, ``eval.json`` and
``adaptation.png``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlkit.checkpoint import load_weights, save_checkpoint
from mamlkit.evaluate import Estimate
from mamlkit.loop_config import LoopConfig, loop_config
from mamlkit.rl.envs.registry import check_env_name
from mamlkit.rl.evaluate import adaptation_returns, summarize_returns
from mamlkit.rl.maml_trpo import MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.rl.sampler import TaskSampler
from mamlkit.rl.step import RLStep
from mamlkit.rl.trpo import TRPOSettings
from mamlkit.train import TrainResult, train_loop

PHASES = ("maml", "pretrained")


@dataclass
class RLSettings:
    """The RL settings of a MAML-RL run; defaults are the paper's 2D-navigation ones (Sec. 5.3 and
    Appendix A.2: 20 trajectories per task, one inner step of size 0.1, TRPO max KL 0.01; the
    meta-batch of 20 tasks is the loop's ``meta_batch_size``)."""

    env: str = "nav2d"
    trajectories: int = 20
    inner_steps: int = 1
    inner_lr: float = 0.1
    first_order: bool = False
    pretrain_iterations: int | None = None
    """Iterations of the pretrained baseline (None = as many as MAML's, 0 = skip it)."""
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 0.01
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8
    gamma: float = 0.99
    gae_lambda: float = 1.0
    hidden_sizes: tuple[int, ...] = (100, 100)
    init_std: float = 1.0
    horizon: int | None = None
    eval_tasks: int = 40
    eval_steps: int = 3
    eval_trajectories: int | None = None

    def __post_init__(self) -> None:
        check_env_name(self.env)
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        for name in ("trajectories", "eval_tasks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RLSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner_steps", "eval_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"RLSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.inner_lr <= 0:
            raise ValueError(f"RLSettings.inner_lr must be > 0, got {self.inner_lr}")
        if self.pretrain_iterations is not None and self.pretrain_iterations < 0:
            raise ValueError(
                f"RLSettings.pretrain_iterations must be >= 0 (0 skips the pretrained baseline), "
                f"got {self.pretrain_iterations}")
        self.trpo_settings()

    def trpo_settings(self) -> TRPOSettings:
        """The outer-loop settings (validated)."""
        return TRPOSettings(
            self.max_kl, self.cg_iters, self.cg_damping, self.ls_max_steps, self.ls_backtrack_ratio
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RLSettings:
        """Build from a dict; unknown keys raise a ValueError that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown RLSettings keys {unknown}; known keys: "
                             f"{', '.join(sorted(known))} (iterations, meta_batch_size, seed, "
                             "checkpoint_every and device are LoopConfig settings)")
        return cls(**values)


@dataclass
class RunRecord:
    """What a MAML-RL run's checkpoints record under ``config`` (both settings)."""

    settings: RLSettings
    loop: LoopConfig

    @property
    def wandb(self) -> str:
        """The Weights & Biases mode of the loop."""
        return self.loop.wandb

    def to_dict(self) -> dict[str, Any]:
        """``{"rl": ..., "loop": ...}``."""
        return {"rl": self.settings.to_dict(), "loop": self.loop.to_dict()}


def build_policy(settings: RLSettings, sampler: TaskSampler, seed: int, device: str = "cpu"
                 ) -> GaussianMLPPolicy:
    """The run's policy at its random initialisation (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(
        sampler.observation_dim, sampler.action_dim, settings.hidden_sizes, settings.init_std
    )
    return policy.to(device)


def _check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device is {device!r} but CUDA is not available; use device='cpu'")


def train_rl(
    settings: RLSettings,
    loop: LoopConfig,
    run_dir: str | Path,
    resume: bool = False,
    phases: tuple[str, ...] = PHASES,
    progress: bool = True,
    record: Any = None,
) -> dict[str, TrainResult]:
    """Meta-train with MAML-TRPO, then train the pretrained baseline; returns each phase's result.

    ``phases`` picks which of ``("maml", "pretrained")`` to run (e.g. one per process); a phase
    stopped early (signal, time budget) ends the run there. Writes ``init.pt`` (the random
    initialisation) and, per phase, ``PHASE/checkpoints/`` and ``PHASE/metrics.csv``.
    ``record`` (default both settings) is stored in the checkpoints under ``config``.
    """
    run_dir = Path(run_dir)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown phases {unknown}; choose from {PHASES}")
    _check_device(loop.device)
    init_path = run_dir / "init.pt"
    if resume and not init_path.is_file():
        raise FileNotFoundError(f"nothing to resume in {run_dir} (no init.pt); start it with "
                                "resume=False")
    if not resume and init_path.is_file():
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True to continue it or "
                              "choose a new run directory")
    if loop.threads:
        torch.set_num_threads(loop.threads)
    sampler = TaskSampler(settings.env, settings.horizon)
    if not init_path.is_file():
        initial = build_policy(settings, sampler, loop.seed).state_dict()
        save_checkpoint(init_path, {"learner": initial})
    results: dict[str, TrainResult] = {}
    for phase in phases:
        iterations = loop.iterations
        if phase == "pretrained" and settings.pretrain_iterations is not None:
            iterations = settings.pretrain_iterations
        if iterations == 0:
            continue
        phase_loop = loop_config(loop, iterations=iterations, title=f"{settings.env} {phase}")
        learner = MAMLTRPO(
            build_policy(settings, sampler, loop.seed, loop.device), sampler,
            inner_lr=settings.inner_lr,
            inner_steps=settings.inner_steps if phase == "maml" else 0,
            first_order=settings.first_order, trajectories=settings.trajectories,
            gamma=settings.gamma, gae_lambda=settings.gae_lambda, trpo=settings.trpo_settings())
        step = RLStep(learner, loop.meta_batch_size, loop.seed, PHASES.index(phase))
        results[phase] = train_loop(step, phase_loop, run_dir / phase, resume=resume,
                                    progress=progress,
                                    record=record or RunRecord(settings, phase_loop))
        if results[phase].stopped_early:
            break
    return results


def evaluate_rl(run_dir: str | Path, settings: RLSettings, seed: int = 0, device: str = "cpu",
                plot: bool = True) -> dict[str, list[Estimate]]:
    """Average return after 0..``eval_steps`` adaptation steps on ``eval_tasks`` new tasks for
    the MAML policy, the pretrained policy and the random initialisation (Figure 5).

    ``seed`` is the run's (the loop's) seed. Writes ``eval.csv``, ``eval.json`` and (with
    ``plot``) ``adaptation.png`` into ``run_dir``.
    """
    run_dir = Path(run_dir)
    _check_device(device)
    sampler = TaskSampler(settings.env, settings.horizon)
    rng = np.random.default_rng([seed, 1000])
    tasks = sampler.sample_tasks(settings.eval_tasks, rng)
    rollout_seed = int(rng.integers(2**31 - 1))
    trajectories = settings.eval_trajectories or settings.trajectories
    names = {"MAML": run_dir / "maml" / "checkpoints" / "last.pt",
             "pretrained": run_dir / "pretrained" / "checkpoints" / "last.pt",
             "random init": run_dir / "init.pt"}
    results: dict[str, list[Estimate]] = {}
    for label, path in names.items():
        if not path.exists():
            if label == "MAML":
                raise FileNotFoundError(f"no {path}; train first with train_rl(settings, loop, "
                                        "run_dir)")
            continue
        policy = build_policy(settings, sampler, seed, device)
        load_weights(policy, path, device)
        curve = adaptation_returns(policy, sampler, tasks, settings.eval_steps, settings.inner_lr,
                                   trajectories, rollout_seed, settings.gamma, settings.gae_lambda)
        results[label] = summarize_returns(curve)
    with (run_dir / "eval.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["policy", "steps", "mean_return", "ci95", "tasks"])
        for label, estimates in results.items():
            for steps, est in enumerate(estimates):
                writer.writerow([label, steps, est.mean, est.ci95, est.n])
    (run_dir / "eval.json").write_text(json.dumps(
        {label: [asdict(e) for e in est] for label, est in results.items()}, indent=2))
    if plot:
        from mamlkit.plots import plot_adaptation_curves

        plot_adaptation_curves(run_dir / "adaptation.png", results, "average return",
                               title=f"{settings.env}: return after adaptation")
    return results
