"""Meta-batches prefetched by a background thread (:meth:`EpisodeSampler.stream`)."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mamlkit.tasks.base import TaskBatch

if TYPE_CHECKING:
    from mamlkit.datasets.episodic import EpisodeSampler

_END = object()


def _put(items: queue.Queue, item: tuple[Any, Any], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _produce(
    sampler: EpisodeSampler, generator: torch.Generator, num_tasks: int,
    num_batches: int | None, items: queue.Queue, stop: threading.Event,
) -> None:
    """Producer loop of :class:`EpisodeStream`: (batch, generator state after it) pairs."""
    made = 0
    try:
        while not stop.is_set() and (num_batches is None or made < num_batches):
            indices = sampler.draw_indices(num_tasks, generator)
            state = generator.get_state()
            _put(items, (sampler.gather(indices), state), stop)
            made += 1
    except BaseException as error:  # surfaced to the consumer
        _put(items, (error, None), stop)
        return
    _put(items, (_END, None), stop)


class EpisodeStream:
    """Iterator over meta-batches prefetched by a thread (see :meth:`EpisodeSampler.stream`)."""

    def __init__(
        self, sampler: EpisodeSampler, num_tasks: int, prefetch: int, num_batches: int | None
    ) -> None:
        if prefetch < 1:
            raise ValueError(
                f"prefetch must be >= 1, got {prefetch}; call sampler.sample() for no prefetch."
            )
        if num_batches is not None and num_batches < 0:
            raise ValueError(f"num_batches must be >= 0 or None (endless), got {num_batches}.")
        if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}; pass e.g. 32.")
        self.sampler, self.num_tasks, self.num_batches = sampler, int(num_tasks), num_batches
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._generator = torch.Generator()
        self._generator.set_state(sampler.state_dict()["generator"])
        # the thread gets no reference to the stream, so dropping the stream stops it (__del__)
        self._thread = threading.Thread(
            target=_produce,
            args=(sampler, self._generator, self.num_tasks, num_batches, self._queue, self._stop),
            daemon=True,
        )
        self._thread.start()

    def __iter__(self) -> EpisodeStream:
        return self

    def __next__(self) -> TaskBatch:
        if self._stop.is_set():
            raise StopIteration
        item, state = self._queue.get()
        if item is _END:
            self._stop.set()
            raise StopIteration
        if isinstance(item, BaseException):
            self._stop.set()
            raise item
        self.sampler.load_state_dict({"generator": state, "seed": self.sampler.seed})
        return item

    def close(self) -> None:
        """Stop the background thread (the sampler keeps the state of the last yielded batch)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> EpisodeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
