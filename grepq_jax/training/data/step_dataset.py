"""The skeleton both pathways' datasets share: batches as a function of step.

Step s of batch size B holds the global slots s * B ... s * B + B - 1 of an
endless stream in which epoch e is a permutation of the items seeded by
(seed, e); a process returns only its rows of the global batch. A subclass
says what a row is (`_row`) and what an empty batch looks like
(`_empty_batch`); loading an item goes through `_load`, which falls back on
the next item when a file broke after the scan.
"""

import functools
from typing import Callable, Iterator, TypeVar

from absl import logging
import ml_collections
import numpy as np

from grepq_jax.formats import corpus
from grepq_jax.formats import images
from grepq_jax.training.data import stream

_ORDER_STREAM = 1  # np.random.default_rng([seed, _ORDER_STREAM, epoch])

Loaded = TypeVar("Loaded")


def embedded_image(name: str, *, min_side: int, max_side: int) -> np.ndarray:
    """An embedded photograph, (H, W, 3) float32, sized as files are."""
    return images.fit_size(corpus.load_embedded_photograph(name),
                           min_side=min_side, max_side=max_side)


def check_loader_fields(config: ml_collections.ConfigDict):
    """data.prefetch and data.workers; raises ValueError naming the field."""
    if config.prefetch < 0:
        raise ValueError(f"data.prefetch must be >= 0, got {config.prefetch}")
    stream.resolve_workers(config.workers)


class StepDataset:
    """Batches that are a pure function of (seed, step); see the module doc.

    Subclasses set `_count` (items) and `_seed`, and define `_row` and
    `_empty_batch`.
    """

    _count: int
    _seed: int

    def _row(self, step: int, slot: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _empty_batch(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def batch(self, step: int, batch_size: int, *, process_index: int = 0,
              process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's rows of the global batch for `step`: rows
        [process_index * batch_size // process_count,
        (process_index + 1) * batch_size // process_count), each stacked."""
        if step < 0 or batch_size < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"need step >= 0, batch_size >= 1 and 0 <= "
                             f"process_index < process_count; got {step}, "
                             f"{batch_size}, {process_index}, {process_count}")
        first = process_index * batch_size // process_count
        last = (process_index + 1) * batch_size // process_count
        rows = [self._row(step, step * batch_size + row) for row in range(first, last)]
        if not rows:
            return self._empty_batch()
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def iterate(self, start_step: int, num_steps: int, batch_size: int, *,
                prefetch: int = 2, workers: int = 0, process_index: int = 0,
                process_count: int = 1) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (step, batch(step)) for num_steps steps from start_step.

        Batches are made ahead by a background thread (workers = 0; up to
        `prefetch`, none with 0) or by `workers` processes; an error there is
        raised here, and closing the iterator stops them.
        """
        make_batch = functools.partial(self.batch, batch_size=batch_size,
                                       process_index=process_index,
                                       process_count=process_count)
        steps = range(start_step, start_step + num_steps)
        return stream.make_batches(steps, make_batch, prefetch=prefetch,
                                   workers=workers)

    def _item(self, slot: int) -> int:
        """The item at a global slot: its epoch's permutation, at its place."""
        epoch, position = divmod(slot, self._count)
        order = stream.epoch_order([self._seed, _ORDER_STREAM], epoch, self._count)
        return int(order[position])

    def _load(self, index: int, load: Callable[[int], Loaded],
              label: Callable[[int], str]) -> tuple[int, Loaded]:
        """(index, load(index)), or the next item's when that file broke since
        the scan: a warning, not a stopped run."""
        for attempt in range(self._count):
            current = (index + attempt) % self._count
            try:
                return current, load(current)
            except images.UnusableImageError as error:
                logging.warning("%s became unusable after the scan (%s); using "
                                "the next one instead.", label(current), error)
        raise RuntimeError("every image became unusable after the scan")
