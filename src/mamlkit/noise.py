"""Noisy support sets: seeded corruption of a task's support targets, for evaluation and training.

MAML adapts on a handful of support examples, so a few wrong labels move the adapted parameters
far (the weakness measured in ``docs/noise.md``). This module corrupts support sets the same way
for every method that is compared, and never touches the query set:

- ``symmetric``: a chosen example's label is replaced by one of the *other* classes, uniformly
  (the usual "symmetric" label noise of the noisy-label literature, e.g. Patrini et al., 2017);
- ``pair``: a chosen example of class ``c`` gets label ``(c + 1) mod ways``, so each class is
  confused with one fixed other class (the "pair flip" of Han et al., Co-teaching, NeurIPS 2018);
- ``gaussian``: regression targets get ``N(0, scale^2)`` noise added;
- ``outliers``: regression targets are replaced by draws from ``U(-scale, scale)``.

Exactly ``round(rate * n_support)`` examples of every task are corrupted, chosen uniformly; the
draw depends only on the seed and the batch, so the same episodes corrupted with the same seed
are identical for every method, and :func:`corrupt_support` also returns which examples it hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mamlkit.tasks.base import TaskBatch

LABEL_NOISE = ("symmetric", "pair")
"""Kinds of noise for classification labels (integer targets)."""
TARGET_NOISE = ("gaussian", "outliers")
"""Kinds of noise for regression targets (float targets)."""
NOISE_KINDS = LABEL_NOISE + TARGET_NOISE


@dataclass(frozen=True)
class SupportNoise:
    """How to corrupt support sets: a fraction ``rate`` of each task's support examples, of
    ``kind`` (see :data:`NOISE_KINDS`); ``scale`` is the standard deviation (``gaussian``) or the
    half-width of the range (``outliers``) for regression targets."""

    rate: float
    kind: str = "symmetric"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.rate, (int, float)) or not 0.0 <= float(self.rate) <= 1.0:
            raise ValueError(f"The support noise rate must be a fraction in [0, 1], got {self.rate!r}.")
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"Unknown support noise kind {self.kind!r}; choose one of "
                             f"{', '.join(NOISE_KINDS)}.")
        if not self.scale > 0:
            raise ValueError(f"The support noise scale must be > 0, got {self.scale!r}.")


def corrupted_count(n_support: int, rate: float) -> int:
    """How many of ``n_support`` examples a rate corrupts: ``round(rate * n)`` (half up)."""
    return int(n_support * rate + 0.5 + 1e-9)


def corrupt_support(batch: TaskBatch, noise: SupportNoise, seed: int, ways: int | None = None
                    ) -> tuple[TaskBatch, Tensor]:
    """``batch`` with the support targets of every task corrupted by ``noise``, and the mask
    ``[tasks, n_support]`` of the examples that were corrupted.

    ``seed`` fixes the draw: the same batch and seed give the same corruption. Label noise needs
    integer targets ``0 .. ways-1`` (``ways`` defaults to the largest label in the batch + 1);
    target noise needs float targets. The query set and ``batch`` itself are left unchanged.
    """
    targets = batch.support_y
    labels = not targets.is_floating_point()
    if labels != (noise.kind in LABEL_NOISE):
        expected = "integer class labels" if noise.kind in LABEL_NOISE else "float regression targets"
        raise ValueError(
            f"Support noise {noise.kind!r} needs {expected}, but support_y has dtype "
            f"{targets.dtype}. Use {'/'.join(LABEL_NOISE)} for classification and "
            f"{'/'.join(TARGET_NOISE)} for regression.")
    tasks, n_support = targets.shape[:2]
    generator = torch.Generator().manual_seed(int(seed))
    count = corrupted_count(n_support, float(noise.rate))
    order = torch.rand(tasks, n_support, generator=generator).argsort(dim=1)
    mask = torch.zeros(tasks, n_support, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    mask = mask.to(targets.device)
    if labels:
        ways = int(max(batch.support_y.max(), batch.query_y.max())) + 1 if ways is None else ways
        if ways < 2:
            raise ValueError(f"Label noise needs at least 2 classes, got ways={ways}.")
        if noise.kind == "symmetric":
            shift = torch.randint(1, ways, targets.shape, generator=generator).to(targets.device)
        else:
            shift = torch.ones_like(targets)
        noisy = torch.where(mask, (targets + shift) % ways, targets)
    else:
        draw = torch.rand if noise.kind == "outliers" else torch.randn
        values = draw(targets.shape, generator=generator, dtype=targets.dtype).to(targets.device)
        if noise.kind == "outliers":
            replaced = (2 * values - 1) * noise.scale
        else:
            replaced = targets + noise.scale * values
        expand = mask.reshape(mask.shape + (1,) * (targets.dim() - 2))
        noisy = torch.where(expand, replaced, targets)
    corrupted = TaskBatch(batch.support_x, noisy, batch.query_x, batch.query_y, dict(batch.info))
    return corrupted, mask


class NoisySupportSampler:
    """A task sampler whose support sets are corrupted by ``noise``; queries stay clean.

    Noise-aware meta-training: the outer loss is always taken on clean queries, so the
    initialisation learns to adapt well *despite* wrong support labels (the meta-learning view of
    learning with noisy labels; the same idea as training under the noise expected at test time).
    Wraps any sampler with ``sample(n)`` and, for exact resume, ``state_dict`` /
    ``load_state_dict``: batch ``k``'s corruption is seeded by ``seed`` and ``k`` alone (a counter
    kept in the state, not a random generator), so a resumed run corrupts the batches it has
    still to draw exactly as the uninterrupted run would. ``mamlkit train
    --train-support-noise`` builds it for image runs.
    """

    def __init__(self, sampler: Any, noise: SupportNoise, seed: int = 0,
                 ways: int | None = None) -> None:
        self.sampler = sampler
        self.noise = noise
        self.seed = int(seed)
        self.ways = ways
        self.batches_drawn = 0

    def sample(self, num_tasks: int) -> TaskBatch:
        """The wrapped sampler's next batch, with corrupted support targets."""
        batch = self.sampler.sample(num_tasks)
        seed = self.seed * 1_000_003 + self.batches_drawn
        self.batches_drawn += 1
        if self.noise.rate == 0:
            return batch
        return corrupt_support(batch, self.noise, seed, self.ways)[0]

    def reseed(self, seed: int) -> None:
        """A stream of its own for ``seed`` (a data-parallel process's): the wrapped sampler's
        tasks and the corruption are both reseeded."""
        from mamlkit.distributed import reseed_sampler

        reseed_sampler(self.sampler, seed)
        self.seed = int(seed)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped sampler's state, the corruption seed and the number of batches drawn."""
        return {"sampler": self.sampler.state_dict(), "batches_drawn": self.batches_drawn,
                "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.sampler.load_state_dict(state["sampler"])
        self.batches_drawn = int(state["batches_drawn"])
        self.seed = int(state.get("seed", self.seed))

    def __getattr__(self, name: str) -> Any:
        # Everything else (fixed_episodes, num_classes, ...) is the wrapped sampler's.
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)


def parse_rates(text: str) -> list[float]:
    """``"0.2,0.4"`` -> ``[0.2, 0.4]``, each checked to be a fraction in [0, 1]."""
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"Support noise rates must be comma-separated fractions such as 0.2,0.4; "
                         f"got {text!r}.") from error
    if not rates:
        raise ValueError("Give at least one support noise rate, such as 0.2.")
    for rate in rates:
        SupportNoise(rate)
    return rates


def same_episode_seed(seed: int, index: int) -> int:
    """The corruption seed of episode batch ``index`` in an evaluation seeded by ``seed``."""
    return int(seed) * 7919 + int(index)
