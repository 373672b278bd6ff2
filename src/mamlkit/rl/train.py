"""Training and evaluation entry points for MAML-RL (Finn et al. 2017, Sec. 5.3).

``train_rl(config, run_dir)`` meta-trains a Gaussian MLP policy with MAML-TRPO, then (unless
``pretrain_iterations == 0``) trains the paper's "pretrained" baseline: the same policy trained
with TRPO on all tasks jointly, without adaptation. Each phase writes rows to ``metrics.csv``
and atomic checkpoints; ``resume=True`` continues exactly where the last checkpoint stopped
(tasks and seeds of every iteration derive from ``(seed, phase, iteration)``).
Resuming may extend a run (more iterations) or change how it is evaluated
(:data:`EXTENDABLE_KEYS`). ``evaluate_rl(run_dir)`` scores MAML, pretrained and the random
initialisation after 0..3 adaptation steps on new tasks (Figure 5) and writes ``eval.csv``,
``eval.json`` and ``adaptation.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.evaluate import Estimate
from mamlkit.rl.envs.registry import check_env_name
from mamlkit.rl.evaluate import adaptation_returns, summarize_returns
from mamlkit.rl.maml_trpo import MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.rl.sampler import TaskSampler
from mamlkit.rl.trpo import TRPOSettings

PHASES = ("maml", "pretrained")
EXTENDABLE_KEYS = frozenset({
    "meta_iterations", "pretrain_iterations", "checkpoint_every", "eval_tasks", "eval_steps",
    "eval_trajectories", "threads", "device",
})
"""Config keys that may change when a run is resumed: how long to train, how to evaluate and
where to compute. Everything else defines the run and must match."""
CSV_FIELDS = [
    "phase", "iteration", "elapsed_s", "return_before", "return_after", "surrogate_before",
    "surrogate_after", "kl", "step_fraction", "line_search_tries", "sampling_s", "inner_s",
    "outer_s",
]


@dataclass
class RLConfig:
    """Settings of a MAML-RL run; defaults are the paper's 2D-navigation ones (Sec. 5.3 and
    Appendix A.2: 20 tasks x 20 trajectories, one inner step of size 0.1, TRPO max KL 0.01)."""

    env: str = "nav2d"
    meta_batch_size: int = 20
    trajectories: int = 20
    inner_steps: int = 1
    inner_lr: float = 0.1
    first_order: bool = False
    meta_iterations: int = 500
    pretrain_iterations: int | None = None
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
    seed: int = 0
    checkpoint_every: int = 10
    eval_tasks: int = 40
    eval_steps: int = 3
    eval_trajectories: int | None = None
    threads: int | None = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_env_name(self.env)
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        positive = {
            "meta_batch_size": self.meta_batch_size, "trajectories": self.trajectories,
            "meta_iterations": self.meta_iterations, "checkpoint_every": self.checkpoint_every,
            "eval_tasks": self.eval_tasks,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"RLConfig.{name} must be >= 1, got {value}")
        for name in ("inner_steps", "eval_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"RLConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.inner_lr <= 0:
            raise ValueError(f"RLConfig.inner_lr must be > 0, got {self.inner_lr}")
        if self.pretrain_iterations is not None and self.pretrain_iterations < 0:
            raise ValueError(
                f"RLConfig.pretrain_iterations must be >= 0 (0 skips the pretrained baseline), "
                f"got {self.pretrain_iterations}"
            )
        self.trpo_settings()
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"RLConfig.device is {self.device!r} but CUDA is not available; use device='cpu'"
            )

    def trpo_settings(self) -> TRPOSettings:
        """The outer-loop settings (validated)."""
        return TRPOSettings(
            self.max_kl, self.cg_iters, self.cg_damping, self.ls_max_steps, self.ls_backtrack_ratio
        )

    def iterations(self, phase: str) -> int:
        """Meta-iterations of ``phase`` ('maml' or 'pretrained')."""
        if phase == "maml":
            return self.meta_iterations
        return self.meta_iterations if self.pretrain_iterations is None else self.pretrain_iterations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RLConfig:
        """Build from a dict; unknown keys raise a ValueError that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown RLConfig keys {unknown}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**values)


def _phase_seed(config: RLConfig, phase: str, iteration: int) -> list[int]:
    return [config.seed, PHASES.index(phase), iteration]


def build_policy(config: RLConfig, sampler: TaskSampler) -> GaussianMLPPolicy:
    """The run's policy at its random initialisation (deterministic in ``config.seed``)."""
    torch.manual_seed(config.seed)
    policy = GaussianMLPPolicy(
        sampler.observation_dim, sampler.action_dim, config.hidden_sizes, config.init_std
    )
    return policy.to(config.device)


def _load_or_check_config(config: RLConfig, run_dir: Path, resume: bool) -> None:
    path = run_dir / "config.json"
    if path.exists():
        saved = _saved_config(path)
        if not resume:
            raise FileExistsError(
                f"{run_dir} already holds a run; pass resume=True to continue it or choose a new "
                "run directory"
            )
        changed = sorted(k for k in set(saved) | set(config.to_dict())
                         if saved.get(k) != config.to_dict().get(k))
        fixed = [k for k in changed if k not in EXTENDABLE_KEYS]
        if fixed:
            raise ValueError(
                f"config differs from the one saved in {path} (keys {fixed}); resume with the "
                "saved config (RLConfig.from_dict(json.load(...))) or start a new run directory"
            )
        if changed:
            _write_config(path, config)
    else:
        if resume:
            raise FileNotFoundError(
                f"nothing to resume in {run_dir} (no config.json); start it with resume=False"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(path, config)


def _write_config(path: Path, config: RLConfig) -> None:
    """``config.json``: the settings and their provenance (:func:`mamlkit.provenance.provenance`)."""
    from mamlkit.provenance import provenance

    path.write_text(json.dumps({**config.to_dict(), "provenance": provenance()}, indent=2))


def _saved_config(path: Path) -> dict:
    """The settings of a run's ``config.json``, without its provenance record."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "provenance"}


def _trim_csv(path: Path, keep: dict[str, int]) -> None:
    """Drop rows written after each phase's last checkpoint (they will be redone)."""
    if not path.exists():
        return
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["iteration"]) <= keep.get(r["phase"], -1)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _train_phase(
    config: RLConfig, run_dir: Path, phase: str, sampler: TaskSampler, resume: bool
) -> None:
    iterations = config.iterations(phase)
    ckpt_path = run_dir / f"{phase}.pt"
    policy = build_policy(config, sampler)
    start_iteration, elapsed = 0, 0.0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        policy.load_state_dict(state["policy"])
        start_iteration, elapsed = int(state["iteration"]) + 1, float(state["elapsed_s"])
    if start_iteration >= iterations:
        return
    learner = MAMLTRPO(
        policy,
        sampler,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps if phase == "maml" else 0,
        first_order=config.first_order,
        trajectories=config.trajectories,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        trpo=config.trpo_settings(),
    )
    metrics_path = run_dir / "metrics.csv"
    new_file = not metrics_path.exists()
    with metrics_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
        bar = tqdm(range(start_iteration, iterations), desc=f"{config.env} {phase}",
                   initial=start_iteration, total=iterations)
        for iteration in bar:
            began = time.perf_counter()
            rng = np.random.default_rng(_phase_seed(config, phase, iteration))
            tasks = sampler.sample_tasks(config.meta_batch_size, rng)
            metrics = learner.step(tasks, seed=int(rng.integers(2**31 - 1)))
            elapsed += time.perf_counter() - began
            writer.writerow({"phase": phase, "iteration": iteration, "elapsed_s": elapsed,
                             **metrics})
            handle.flush()
            bar.set_postfix(before=f"{metrics['return_before']:.1f}",
                            after=f"{metrics['return_after']:.1f}")
            last = iteration == iterations - 1
            if last or (iteration + 1) % config.checkpoint_every == 0:
                save_checkpoint(ckpt_path, {
                    "policy": {k: v.cpu() for k, v in policy.state_dict().items()}, "iteration": iteration,
                    "elapsed_s": elapsed, "done": last, "phase": phase,
                })


def train_rl(
    config: RLConfig,
    run_dir: str | Path,
    resume: bool = False,
    phases: tuple[str, ...] = PHASES,
) -> Path:
    """Meta-train with MAML-TRPO, then train the pretrained baseline; returns ``run_dir``.

    ``phases`` picks which of ``("maml", "pretrained")`` to run (e.g. one per process).

    Writes ``config.json``, ``init.pt`` (the random initialisation), ``maml.pt``,
    ``pretrained.pt`` and ``metrics.csv`` (one row per meta-iteration and phase).
    """
    run_dir = Path(run_dir)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown phases {unknown}; choose from {PHASES}")
    if config.threads:
        torch.set_num_threads(config.threads)
    _load_or_check_config(config, run_dir, resume)
    sampler = TaskSampler(config.env, config.horizon)
    init_path = run_dir / "init.pt"
    if not init_path.exists():
        initial = build_policy(config, sampler).state_dict()
        save_checkpoint(init_path, {"policy": {k: v.cpu() for k, v in initial.items()}})
    keep = {}
    for phase in PHASES:
        path = run_dir / f"{phase}.pt"
        keep[phase] = int(load_checkpoint(path)["iteration"]) if resume and path.exists() else -1
    _trim_csv(run_dir / "metrics.csv", keep)
    for phase in phases:
        if config.iterations(phase) > 0:
            _train_phase(config, run_dir, phase, sampler, resume)
    return run_dir


def evaluate_rl(run_dir: str | Path, plot: bool = True) -> dict[str, list[Estimate]]:
    """Average return after 0..``eval_steps`` adaptation steps on ``eval_tasks`` new tasks for
    the MAML policy, the pretrained policy and the random initialisation (Figure 5).

    Writes ``eval.csv``, ``eval.json`` and (with ``plot``) ``adaptation.png`` into ``run_dir``.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no config.json; train first with train_rl(config, run_dir)"
        )
    config = RLConfig.from_dict(_saved_config(config_path))
    if config.threads:
        torch.set_num_threads(config.threads)
    sampler = TaskSampler(config.env, config.horizon)
    rng = np.random.default_rng([config.seed, 1000])
    tasks = sampler.sample_tasks(config.eval_tasks, rng)
    seed = int(rng.integers(2**31 - 1))
    trajectories = config.eval_trajectories or config.trajectories
    names = {"MAML": "maml.pt", "pretrained": "pretrained.pt", "random init": "init.pt"}
    results: dict[str, list[Estimate]] = {}
    for label, filename in names.items():
        path = run_dir / filename
        if not path.exists():
            if label == "MAML":
                raise FileNotFoundError(f"no {path}; train first with train_rl(config, run_dir)")
            continue
        policy = build_policy(config, sampler)
        policy.load_state_dict(load_checkpoint(path)["policy"])
        curve = adaptation_returns(policy, sampler, tasks, config.eval_steps, config.inner_lr,
                                   trajectories, seed, config.gamma, config.gae_lambda)
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
                               title=f"{config.env}: return after adaptation")
    return results


def main(argv: list[str] | None = None) -> None:
    """``python -m mamlkit.rl.train RUN_DIR [--config file.json] [--set key=value] ...``."""
    parser = argparse.ArgumentParser(description="MAML-TRPO on the paper's RL task families")
    parser.add_argument("run_dir")
    parser.add_argument("--config", help="JSON file with RLConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one RLConfig field (JSON value), e.g. --set env='\"ant-vel\"'")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated phases to train (maml, pretrained)")
    parser.add_argument("--no-evaluate", action="store_true")
    args = parser.parse_args(argv)
    if not args.evaluate_only:
        values: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
        for item in args.set:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError:
                values[key] = raw
        train_rl(RLConfig.from_dict(values), args.run_dir, resume=args.resume,
                 phases=tuple(args.phases.split(",")))
    if args.no_evaluate:
        return
    for label, estimates in evaluate_rl(args.run_dir).items():
        print(label, " ".join(f"{k}:{e}" for k, e in enumerate(estimates)))


if __name__ == "__main__":
    main()
