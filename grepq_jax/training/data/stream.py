"""What every training stream shares: epoch order and background prefetch.

A stream is a pure function of (seed, step): epoch e visits the examples in a
permutation seeded by (seed, e), so a resumed run sees exactly the batches an
uninterrupted one would, and any number of worker processes can make its
batches independently: `make_batches` hands steps to a thread or to a pool
of processes and yields the batches in step order either way.
"""

import collections
from concurrent import futures
import contextlib
import functools
import itertools
import multiprocessing
import os
import queue
import signal
import threading
import time
from typing import Callable, Iterable, Iterator, Sequence

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


# Each worker holds its own Python, NumPy and decoded-image cache (~200 MB).
_MAX_AUTO_WORKERS = 32


def resolve_workers(workers: int) -> int:
    """data.workers as a process count: -1 is one per usable core but one
    (at most 32; name a number for more)."""
    if workers < -1:
        raise ValueError(f"data.workers must be -1 (auto), 0 (a thread) or a "
                         f"process count, got {workers}")
    if workers == -1:
        cores = len(os.sched_getaffinity(0))
        return min(max(cores - 1, 1), _MAX_AUTO_WORKERS)
    return workers


def make_batches(steps: range, make_batch: Callable[[int], dict], *,
                 prefetch: int, workers: int = 0
                 ) -> Iterator[tuple[int, dict]]:
    """(step, make_batch(step)) for each step, in order.

    workers = 0: made by a background thread, up to `prefetch` ahead (none
    with prefetch = 0). workers > 0 (-1: `resolve_workers`): made by that
    many worker processes, up to max(prefetch, 2 * workers) ahead, so the
    host's cores keep an accelerator fed. `make_batch` must then pickle; each
    worker receives it once.
    """
    workers = resolve_workers(workers)
    if workers > 0:
        return _in_processes(steps, make_batch, prefetch, workers)
    if prefetch <= 0:
        return ((step, make_batch(step)) for step in steps)
    return prefetched(steps, make_batch, prefetch)


def ordered_map(function: Callable, items: Iterable, *, workers: int,
                depth: int = 0, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator:
    """function(item) for each item, in order, computed by `workers` processes
    (0: here, lazily), at most max(depth, 2 * workers) ahead.

    `function`, the items and the results must pickle. An exception raised
    by `function` is raised here; closing the iterator stops the workers.
    """
    workers = resolve_workers(workers)
    if workers == 0:
        yield from map(function, items)
        return
    # Spawned, not forked: forking a process that runs JAX's threads can
    # deadlock the child.
    pool = futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))
    depth = max(depth, 2 * workers)
    pending: collections.deque = collections.deque()
    upcoming = iter(items)
    try:
        while True:
            for item in itertools.islice(upcoming, depth - len(pending)):
                # submit() is where the pool starts its processes.
                with _group_signals_held():
                    pending.append(pool.submit(function, item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for result in pending:
            result.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# What Ctrl-C, `timeout` and schedulers send to the trainer's process group.
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _group_signals_held():
    """Holds _GROUP_SIGNALS in this thread while the body runs.

    A process started meanwhile inherits the held mask through exec, so a
    signal sent to the group before the worker has left it (`_start_worker`)
    waits instead of killing the worker while Python is still starting. The
    trainer's own handler runs when the body ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_worker(parent: int, initializer: Callable | None, initargs: tuple):
    """Detaches a worker from the trainer's signals, but not from its life.

    In a session of its own, a worker does not receive the SIGINT or SIGTERM
    sent to the trainer's process group (Ctrl-C, `timeout`, a scheduler), so
    the trainer can finish its step and save; the trainer's exit closes the
    pool. A thread ends the worker if the trainer dies without closing it.
    The worker starts with those signals held (`_group_signals_held`).
    """
    os.setsid()
    for signum in _GROUP_SIGNALS:
        # Ignoring a signal discards it if pending: the group's signals that
        # arrived before setsid() were meant for the trainer.
        handler = signal.signal(signum, signal.SIG_IGN)
        signal.signal(signum, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _GROUP_SIGNALS)

    def exit_with_parent():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


_worker_make_batch: Callable[[int], dict] | None = None


def _install(make_batch: Callable[[int], dict]):
    global _worker_make_batch
    _worker_make_batch = make_batch


def _make_in_worker(step: int) -> dict:
    return _worker_make_batch(step)


def _in_processes(steps: range, make_batch: Callable[[int], dict],
                  depth: int, workers: int) -> Iterator[tuple[int, dict]]:
    batches = ordered_map(_make_in_worker, steps, workers=workers, depth=depth,
                          initializer=_install, initargs=(make_batch,))
    try:
        yield from zip(steps, batches)
    finally:
        batches.close()
