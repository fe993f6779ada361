"""What every training stream shares: epoch order and background prefetch.

A stream is a pure function of (seed, step): epoch e visits the examples in a
permutation seeded by (seed, e), so a resumed run sees exactly the batches an
uninterrupted one would.
"""

import functools
import queue
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

_DONE = object()


@functools.lru_cache(maxsize=8)
def _cached_order(seed: tuple[int, ...], epoch: int, count: int) -> np.ndarray:
    order = np.random.default_rng([*seed, epoch]).permutation(count)
    order.setflags(write=False)
    return order


def epoch_order(seed: Sequence[int], epoch: int, count: int) -> np.ndarray:
    """The permutation of `count` example indices that epoch `epoch` visits."""
    return _cached_order(tuple(seed), epoch, count)


def prefetched(
    steps: range, make_batch: Callable[[int], dict], depth: int
) -> Iterator[tuple[int, dict]]:
    """(step, make_batch(step)) for each step, made by a background thread.

    Up to `depth` batches wait ready; an error in the thread is raised here,
    and closing the iterator stops the thread.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for step in steps:
                if not put((step, make_batch(step))):
                    return
            put(_DONE)
        except BaseException as error:  # Handed to the consumer, raised there.
            put(error)

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)
