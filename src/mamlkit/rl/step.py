"""One MAML-TRPO meta-iteration as the shared training loop drives it (:mod:`mamlkit.train`).

:class:`RLStep` draws the meta-iteration's tasks, runs :meth:`MAMLTRPO.step
<mamlkit.rl.maml_trpo.MAMLTRPO.step>` (fresh trajectories at every inner step, a TRPO outer step)
and hands the loop its metrics, so MAML-RL gets the loop's stop signals, time budget, non-finite
policy, checkpoints, metrics log and exact resume. The tasks and rollout seeds of meta-iteration
``i`` derive from ``(seed, stream, i - 1)`` only, so a resumed run draws what an uninterrupted
one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mamlkit.checkpoint import rng_state, set_rng_state
from mamlkit.rl.maml_trpo import MAMLTRPO
from mamlkit.run_guard import Outcome, StopFlags


class RLStep:
    """MAML-TRPO meta-iterations of ``learner`` on ``meta_batch_size`` tasks each (a ``MetaStep``).

    ``stream`` separates the task streams of runs that share a seed (MAML and the pretrained
    baseline). ``loss`` is the post-step surrogate loss; an update whose loss or parameters are
    not finite is undone, and the loop's non-finite policy decides what follows.
    """

    validates = False
    higher_is_better = False
    shown = {"return_after": "return"}
    """Metrics the progress bar shows besides the loss (name -> label)."""

    def __init__(self, learner: MAMLTRPO, meta_batch_size: int, seed: int = 0, stream: int = 0
                 ) -> None:
        if meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1, got {meta_batch_size}")
        self.learner, self.meta_batch_size = learner, meta_batch_size
        self.seed, self.stream = int(seed), int(stream)

    def begin(self, resumed: bool, say: Callable[[str], None]) -> None:
        """Nothing to prepare: every meta-iteration's randomness comes from its own seed."""

    def run(self, iteration: int, stop: StopFlags) -> Outcome:
        """Meta-iteration ``iteration`` (1-based): sample tasks, adapt, take the TRPO step."""
        rng = np.random.default_rng([self.seed, self.stream, iteration - 1])
        tasks = self.learner.sampler.sample_tasks(self.meta_batch_size, rng)
        policy = self.learner.policy
        before = {name: p.detach().clone() for name, p in policy.named_parameters()}
        reported = self.learner.step(tasks, seed=int(rng.integers(2**31 - 1)))
        metrics = {"loss": reported["surrogate_after"], **reported}
        finite = all(math.isfinite(v) for v in metrics.values()) and all(
            bool(torch.isfinite(p).all()) for p in policy.parameters())
        if not finite:
            with torch.no_grad():
                for name, p in policy.named_parameters():
                    p.copy_(before[name])
        return Outcome(metrics, finite)

    def validate(self) -> dict[str, float]:
        """Not used: a MAML-RL run is scored after training (:func:`mamlkit.rl.train.evaluate_rl`)."""
        raise NotImplementedError("RLStep has no held-out validation (validates = False).")

    def state_dict(self) -> dict[str, Any]:
        """The policy (under ``learner``), the task stream and the random state. TRPO keeps no
        state between meta-iterations."""
        return {"learner": {k: v.cpu() for k, v in self.learner.policy.state_dict().items()},
                "sampler": {"seed": self.seed, "stream": self.stream}, "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; ``ValueError`` for another task stream."""
        saved = state["sampler"]
        if (int(saved["seed"]), int(saved["stream"])) != (self.seed, self.stream):
            raise ValueError(f"the checkpoint's task stream is seed {saved['seed']}, stream "
                             f"{saved['stream']}, but this run draws seed {self.seed}, stream "
                             f"{self.stream}")
        self.learner.policy.load_state_dict(state["learner"])
        set_rng_state(state["rng"])
