"""The FSIM label pass: each group's (V, V) soft labels, computed once, cached.

Soft labels are the FSIM matrices of each group's full-resolution 8-bit
versions. They depend only on the group, so they are computed once, when the
dataset is created (which also validates every file by decoding it fully).
Versions are built by `workers` processes (or, with 0, a thread) while this
one runs FSIM through `fsim_bucketed` (any image size, a bounded number of
compiled programs, several groups per device call). A progress bar shows
groups/s and the time left.

The cache (`LabelCache`, any folder etils.epath opens, gs:// included) is one
.npz per dataset fingerprint; while the pass runs, the matrices found are
also written every few seconds to small part files beside it, so a killed
pass loses only its last seconds and a rerun reads what was done. With
several processes, each labels the groups itself and only one writes.
"""

import dataclasses
import hashlib
import io
import itertools
import json
import os
import time
from typing import Callable, Sequence

from absl import logging
from etils import epath
import ml_collections
import numpy as np
import tqdm

from grepq_jax.training.labels import distortions
from grepq_jax.training.labels import fsim
from grepq_jax.training.labels import fsim_bucketed
from grepq_jax.formats import images, output_files
from grepq_jax.training.data import stream

# Part of the cache's name: bump when reading or distortion code changes pixels.
_CACHE_FORMAT = 2
_SAVE_EVERY_S = 5.0  # a killed pass loses at most this much work
_LOG_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class Group:
    """A group before it is read."""

    label: str  # Names it in logs and in `skipped`.
    fingerprint: str  # Changes whenever its pixels would.
    build: Callable[[], np.ndarray]  # -> (V, H, W, 3) uint8


def cache_fingerprint(config: ml_collections.ConfigDict, seed: int) -> str:
    """What, besides each group's own files, the soft labels depend on."""
    description = {"format": _CACHE_FORMAT, "layout": config.layout,
                   "max_side": config.max_side,
                   "chromatic": bool(config.fsim_chromatic)}
    if config.layout == "pristine":
        description.update(seed=seed,
                           recipe=distortions.distortion_set(config.distortions))
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LabelCache:
    """FSIM matrices by group key: in memory, in `fsim_labels_<fp>.npz` and,
    while a pass runs, in part files `fsim_labels_<fp>.<pid>-<n>.part` that
    `save` folds into the .npz. `writer` False only reads."""

    def __init__(self, cache_dir: str | None, fingerprint: str, writer: bool):
        self._path = (None if cache_dir is None else
                      epath.Path(cache_dir) / f"fsim_labels_{fingerprint}.npz")
        self._writer = writer and self._path is not None
        self._matrices: dict[str, np.ndarray] = {}
        self._parts: list[epath.Path] = []
        self._unsaved: dict[str, np.ndarray] = {}
        self._part_count = itertools.count()
        self._last_write = time.monotonic()
        self._stale = False  # entries were discarded: the .npz needs rewriting
        if self._path is not None:
            self._load()

    def _load(self):
        self._matrices = self._read(self._path) if self._path.exists() else {}
        if self._matrices:
            logging.info("Read %d FSIM matrices from %s.", len(self._matrices),
                         self._path)
        self._parts = sorted(self._path.parent.glob(f"{self._path.stem}.*.part"))
        for part in self._parts:
            self._matrices.update(self._read(part))
        if self._parts:
            logging.info("Read %d part file(s) of an unfinished label pass; "
                         "%d FSIM matrices in all.", len(self._parts),
                         len(self._matrices))

    @staticmethod
    def _read(path: epath.Path) -> dict[str, np.ndarray]:
        try:
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as stored:
                return dict(zip(stored["keys"].tolist(), stored["matrices"]))
        except Exception as error:  # A torn or foreign file: recompute.
            logging.warning("Ignoring unreadable FSIM cache %s: %s", path, error)
            return {}

    @property
    def path(self) -> epath.Path | None:
        return self._path

    def get(self, key: str) -> np.ndarray | None:
        return self._matrices.get(key)

    def _warn_unwritable(self, error: OSError) -> None:
        """A cache that cannot be written (a full disk) costs a warning, not the run."""
        logging.warning("Cannot write the FSIM cache %s (%s); this run goes on with "
                        "its labels in memory.", self._path, error.strerror or error)

    def discard(self, key: str):
        """Forgets a bad entry; the next `save` rewrites the file without it."""
        if self._matrices.pop(key, None) is not None:
            self._unsaved.pop(key, None)
            self._stale = True

    def put(self, key: str, matrix: np.ndarray):
        self._matrices[key] = self._unsaved[key] = matrix
        if self._writer and time.monotonic() - self._last_write > _SAVE_EVERY_S:
            self._write_part()

    def _write_part(self):
        name = f"{self._path.stem}.{os.getpid()}-{next(self._part_count)}.part"
        try:
            self._write(self._path.with_name(name), self._unsaved)
        except OSError as error:  # A full disk: keep the labels in memory.
            self._path.with_name(name).unlink(missing_ok=True)
            self._warn_unwritable(error)
            self._writer = False
            return
        self._parts.append(self._path.with_name(name))
        self._unsaved = {}
        self._last_write = time.monotonic()

    def save(self):
        """Writes every matrix to the .npz (temporary file, then rename) and
        removes the part files."""
        if not self._writer or not (self._unsaved or self._parts or self._stale):
            return
        temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._write(temporary, self._matrices)
            temporary.replace(self._path)
        except OSError as error:  # A full disk: the labels are in memory.
            temporary.unlink(missing_ok=True)
            self._warn_unwritable(error)
            return
        for part in self._parts:
            part.unlink(missing_ok=True)
        self._parts, self._unsaved, self._stale = [], {}, False

    @staticmethod
    def _write(path: epath.Path, matrices: dict[str, np.ndarray]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(output_files.npz_bytes({
            "keys": np.array(list(matrices)), "matrices": np.stack(list(matrices.values()))}))


def matrix_problem(matrix: np.ndarray, versions: int) -> str | None:
    """Why `matrix` cannot be a group of `versions` versions' FSIM labels
    ((V, V) float32, finite, in [0, 1]), or None. Computed and cached
    matrices pass the same check."""
    if matrix.shape != (versions, versions):
        return f"shape {matrix.shape}, not ({versions}, {versions})"
    if matrix.dtype != np.float32:
        return f"dtype {matrix.dtype}, not float32"
    if not np.isfinite(matrix).all():
        return "not finite"
    if matrix.min() < 0 or matrix.max() > 1 + 1e-5:
        return f"values outside [0, 1] ({matrix.min():.3g} to {matrix.max():.3g})"
    return None


def _cached_matrices(groups: Sequence[Group], keys: list[str],
                     cache: LabelCache) -> dict[int, np.ndarray]:
    """The cached matrices (by group index) that pass `matrix_problem`; the
    others are discarded, to be recomputed, with a warning naming the cache
    file.

    Their size V is that of the first group's versions, built once (without
    FSIM) when a cached matrix is to be used: the cache itself cannot tell a
    wrong size that all of its entries share.
    """
    cached = {i: cache.get(key) for i, key in enumerate(keys)
              if cache.get(key) is not None}
    if not cached:
        return {}
    versions = _versions_per_group(groups)
    if versions is None:  # Every group is unusable: the pass says why.
        return {}
    bad = {i: matrix_problem(m, versions) for i, m in cached.items()}
    bad = {i: why for i, why in bad.items() if why}
    for i in bad:
        cache.discard(keys[i])
        del cached[i]
    if bad:
        first = min(bad)
        logging.warning("FSIM cache %s: %d of %d entries are unusable (%s: %s); "
                        "recomputing them.", cache.path, len(bad), len(bad) + len(cached),
                        groups[first].label, bad[first])
    return cached


def _versions_per_group(groups: Sequence[Group]) -> int | None:
    """V, from the first group that builds."""
    for group in groups:
        versions, reason = _build_or_reason(group)
        if reason is None:
            return len(versions)
    return None


def _build_or_reason(group: Group) -> tuple[np.ndarray | None, str | None]:
    """(versions, None), or (None, why the group is unusable)."""
    try:
        return group.build(), None
    except images.UnusableImageError as error:
        return None, str(error)


def _built_ahead(groups: list[Group], workers: int):
    """_build_or_reason of each group, in order, made ahead of its FSIM.

    By `workers` processes, or (0) by one thread beside this one: NumPy,
    SciPy, Pillow and XLA release the GIL, so building the next group's
    versions overlaps this group's FSIM. Closing the iterator stops them.
    """
    if stream.resolve_workers(workers):
        yield from stream.ordered_map(_build_or_reason, groups, workers=workers)
        return
    ahead = stream.prefetched(range(len(groups)),
                              lambda index: _build_or_reason(groups[index]), depth=2)
    try:
        for _, result in ahead:
            yield result
    finally:
        ahead.close()


class _Progress:
    """A progress bar (groups/s, time left) and, for logs, a line every 10 s."""

    def __init__(self, total: int, cached: int):
        self._total, self._cached = total, cached
        self._bar = tqdm.tqdm(total=total, initial=cached, unit="group",
                              desc="FSIM labels", dynamic_ncols=True,
                              disable=total == cached)
        self._started = self._last_log = time.monotonic()
        self.skipped = 0

    def advance(self, count: int = 1):
        self._bar.update(count)
        now = time.monotonic()
        if now - self._last_log > _LOG_EVERY_S or self._bar.n == self._total:
            self._last_log = now
            logging.info("FSIM soft labels: %d/%d groups (%d cached), %d skipped, "
                         "%.0f s.", self._bar.n, self._total, self._cached,
                         self.skipped, now - self._started)

    def close(self):
        self._bar.close()


def label_groups(groups: Sequence[Group], *, workers: int, chromatic: bool,
                 cache: LabelCache
                 ) -> tuple[list[Group], list[np.ndarray], list[tuple[str, str]]]:
    """Validates every group and finds its FSIM matrix, cached or computed.

    Returns the usable groups (in order), their (V, V) float32 matrices and
    the skipped (label, reason) pairs. A cached group is not decoded again:
    its key holds its files' sizes and modification times.
    """
    keys = [f"{index}|{group.fingerprint}" for index, group in enumerate(groups)]
    matrices = _cached_matrices(groups, keys, cache)
    todo = [i for i in range(len(groups)) if i not in matrices]
    reasons: dict[int, str] = {}
    progress = _Progress(len(groups), len(matrices))

    def skip(index: int, reason: str):
        logging.warning("Skipping %s: %s", groups[index].label, reason)
        reasons[index] = reason
        progress.skipped += 1
        progress.advance()

    def keep(finished: list):
        for index, matrix in finished:
            if not np.isfinite(matrix).all():
                skip(index, "FSIM is not finite")
                continue
            matrices[index] = matrix
            cache.put(keys[index], matrix)
            progress.advance()

    labeller = fsim_bucketed.MatrixStream(data_range=255, chromatic=chromatic)
    built = _built_ahead([groups[i] for i in todo], workers)
    try:
        for index, (versions, reason) in zip(todo, built):
            if reason is None:
                try:
                    fsim.check_images(versions, data_range=255, name=groups[index].label)
                    keep(labeller.add(index, versions))
                except ValueError as error:  # Bad pixels, or too small for FSIM.
                    reason = str(error)
            if reason is not None:
                skip(index, reason)
        keep(labeller.finish())
    finally:
        built.close()
        progress.close()
        cache.save()
    usable = sorted(matrices)
    skipped = [(groups[i].label, reasons[i]) for i in sorted(reasons)]
    return [groups[i] for i in usable], [matrices[i] for i in usable], skipped
