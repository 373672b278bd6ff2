"""Outer learning-rate schedules: constant, cosine or step decay, each with a linear warm-up.

The rate is a pure function of the meta-iteration (:func:`lr_factor` times ``meta_lr``), set on
the optimizer before every step, so a resumed run continues the schedule exactly without any
scheduler state in the checkpoint.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "step")


def lr_factor(schedule: str, iteration: int, total: int, warmup: int = 0, step_size: int = 0,
              gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate for meta-iteration ``iteration`` (1-based) of
    ``total``.

    - warm-up: the first ``warmup`` iterations ramp linearly from ``1/warmup`` to 1;
    - ``cosine``: then half a cosine from 1 down towards 0 over the remaining iterations
      (Loshchilov & Hutter, SGDR, 2017, without restarts);
    - ``step``: then times ``gamma`` every ``step_size`` iterations (0: a third of the run);
    - ``constant``: 1 after the warm-up.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if warmup and iteration <= warmup:
        return iteration / warmup
    after = iteration - warmup - 1  # iterations done since the warm-up
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(after, span) / span))
    if schedule == "step":
        size = step_size or max(1, total // 3)
        return gamma ** (after // size)
    return 1.0
