"""Training batches for the low-level pathway: groups, FSIM soft labels, views.

A group is one pristine image and its distorted versions, V in all with the
reference first (layout "pristine": `distortions.make_versions`, seeded by
(seed, the image's place among the files found) so the versions never depend
on run history), or one sub-folder of versions in the original repository's
pre-distorted layout (layout "predistorted": files in file-name order, as the
original reads them). With `data.path` empty the groups come from the
embedded corpus.

Versions are 8-bit images, as if read from the files of the original's
pre-distorted layout: distortions run in float and their output is rounded to
uint8, so the memory, the worker processes' traffic and the device transfer
are a quarter of float32's. The model sees pixels / 255.

Soft labels are the (V, V) FSIM matrices of each group's full-resolution
versions (`fsim.fsim_matrix`). They depend only on the group, so they are
computed once, up front when the dataset is created (which also validates
every file by decoding it fully), with a progress log; they stay in memory
(V * V float32 a group) and, given a cache_dir (local or gs://), in one .npz
that a resumed run reads instead of recomputing; with several processes, each
labels the groups itself and only process 0 writes the file. The original
recomputes V(V-1)/2 FSIMs per group every epoch. FSIM compiles once per
distinct image shape.

Pixels are not kept: versions are rebuilt whenever a group is used (a small
LRU keeps the last few), so memory stays bounded on large folders. Views are
aligned fragments (see fragments.py): an anchor and an independently sampled,
randomly flipped augmentation per group.

Every batch is a pure function of (seed, step): step s of batch size B holds
the global slots s * B ... s * B + B - 1 of an endless stream in which epoch e
is a permutation of the groups seeded by (seed, e); fragment positions and
flips are seeded by (seed, step, slot). A process returns only its rows.
"""
import collections
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from grepq_jax import distortions
from grepq_jax import fsim
from grepq_jax.data import corpus
from grepq_jax.data import fragments
from grepq_jax.data import images
from grepq_jax.data import stream

LAYOUTS = ("pristine", "predistorted")

# Independent random streams under one seed: np.random.default_rng([seed, STREAM, ...]).
_VERSIONS_STREAM, _ORDER_STREAM, _VIEWS_STREAM = 0, 1, 2
# Part of the cache's name: bump when reading or distortion code changes pixels.
_CACHE_FORMAT = 2
_CACHE_SAVE_EVERY = 256  # new matrices between writes, so a crash loses little
_PROGRESS_EVERY_S = 10.0
_DECODED_BUDGET_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class _Group:
    """A group before it is read."""
    label: str  # Names it in logs and in `skipped`.
    fingerprint: str  # Changes whenever its pixels would.
    build: Callable[[], np.ndarray]  # -> (V, H, W, 3) uint8


# Group builders ---------------------------------------------------------------

def _distorted_versions(read: Callable[[], np.ndarray], set_name: str,
                        seed: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, _VERSIONS_STREAM, index])
    return images.to_uint8(distortions.make_versions(read(), set_name, rng))


def _embedded_image(name: str, *, min_side: int, max_side: int) -> np.ndarray:
    return images.fit_size(corpus.load_embedded_photograph(name),
                           min_side=min_side, max_side=max_side)


def _version_files(paths: tuple[Path, ...], min_side: int,
                   max_side: int) -> np.ndarray:
    """The pre-distorted versions of one group, stacked in file-name order
    (files of more than 8 bits a channel are rounded to 8)."""
    versions = []
    for path in paths:
        try:
            versions.append(images.load_image(path, min_side=min_side,
                                              max_side=max_side))
        except images.UnusableImageError as error:
            raise images.UnusableImageError(f"{path.name}: {error}") from error
        if versions[-1].shape != versions[0].shape:
            raise images.UnusableImageError(
                f"versions differ in size: {path.name} is "
                f"{versions[-1].shape[1]}x{versions[-1].shape[0]}, "
                f"{paths[0].name} {versions[0].shape[1]}x{versions[0].shape[0]}")
    return images.to_uint8(np.stack(versions))


def _file_fingerprint(path: Path, root: Path) -> str:
    stat = path.stat()
    return f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}"


# Finding the groups -------------------------------------------------------------

def _pristine_groups(config: ml_collections.ConfigDict, seed: int) -> list[_Group]:
    sizes = dict(min_side=config.min_side, max_side=config.max_side)
    if config.path:
        root = Path(config.path)
        paths = images.find_image_files(root)
        if not paths:
            suffixes = ", ".join(sorted(images.IMAGE_SUFFIXES))
            raise ValueError(f"no image files ({suffixes}) under {config.path!r}")
        sources = [(str(path), _file_fingerprint(path, root),
                    functools.partial(images.load_image, path, **sizes))
                   for path in paths]
    else:
        sources = [(name, name, functools.partial(_embedded_image, name, **sizes))
                   for name in corpus.EMBEDDED_PHOTOGRAPHS]
    return [_Group(label, fingerprint,
                   functools.partial(_distorted_versions, read,
                                     config.distortions, seed, index))
            for index, (label, fingerprint, read) in enumerate(sources)]


def _predistorted_groups(config: ml_collections.ConfigDict
                         ) -> tuple[list[_Group], list[tuple[str, str]]]:
    root = Path(config.path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {config.path!r} does not exist "
                                "or is not a folder")
    members, skipped = {}, []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = images.find_image_files(folder, recursive=False)
        if files:
            members[folder] = tuple(files)
        else:
            skipped.append((str(folder), "no image files"))
    if not members:
        raise ValueError(f"{config.path!r} holds no sub-folder of image files; "
                         "the predistorted layout wants one sub-folder of "
                         "versions per image")
    counts = collections.Counter(len(files) for files in members.values())
    if len(counts) > 1:
        examples = {count: next(str(f) for f, m in members.items() if len(m) == count)
                    for count in counts}
        raise ValueError(f"every group in {config.path!r} must hold the same "
                         f"number of versions; found {dict(counts)} "
                         f"(versions: folders), e.g. {examples}")
    groups = [_Group(str(folder),
                     ";".join(_file_fingerprint(path, root) for path in files),
                     functools.partial(_version_files, files, config.min_side,
                                       config.max_side))
              for folder, files in members.items()]
    return groups, skipped


# Soft labels ---------------------------------------------------------------------

class _LabelCache:
    """FSIM matrices by group key: in memory, and in one .npz when given a
    folder (any path etils.epath opens, gs:// included); `writer` False only
    reads it."""

    def __init__(self, cache_dir: str | None, fingerprint: str, writer: bool):
        self._path = (None if cache_dir is None else
                      epath.Path(cache_dir) / f"fsim_labels_{fingerprint}.npz")
        self._writer = writer
        self._matrices = self._load()
        self._unsaved = 0

    def _load(self) -> dict[str, np.ndarray]:
        if self._path is None or not self._path.exists():
            return {}
        try:
            stored_bytes = io.BytesIO(self._path.read_bytes())
            with np.load(stored_bytes, allow_pickle=False) as stored:
                matrices = dict(zip(stored["keys"].tolist(), stored["matrices"]))
        except Exception as error:  # A torn or foreign file: recompute.
            logging.warning("Ignoring unreadable FSIM cache %s: %s", self._path,
                            error)
            return {}
        logging.info("Read %d FSIM matrices from %s.", len(matrices), self._path)
        return matrices

    def get(self, key: str) -> np.ndarray | None:
        return self._matrices.get(key)

    def put(self, key: str, matrix: np.ndarray):
        self._matrices[key] = matrix
        self._unsaved += 1
        if self._unsaved >= _CACHE_SAVE_EVERY:
            self.save()

    def save(self):
        """Writes all matrices, whole (temporary file, then rename)."""
        if self._path is None or not self._writer or not self._unsaved:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(list(self._matrices)),
                 matrices=np.stack(list(self._matrices.values())))
        temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(buffer.getvalue())
        temporary.replace(self._path)
        self._unsaved = 0


def _dataset_fingerprint(config: ml_collections.ConfigDict, seed: int) -> str:
    """What, besides each group's own files, the soft labels depend on."""
    description = {"format": _CACHE_FORMAT, "layout": config.layout,
                   "max_side": config.max_side,
                   "chromatic": bool(config.fsim_chromatic)}
    if config.layout == "pristine":
        description.update(seed=seed,
                           recipe=distortions.distortion_set(config.distortions))
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _jitted(function: Callable) -> Callable:
    """One jit wrapper per function, so its compiles (one per shape) are kept."""
    return jax.jit(function, static_argnames=("data_range", "chromatic"))


def _soft_labels(versions: np.ndarray, label: str, chromatic: bool) -> np.ndarray:
    """(V, H, W, 3) uint8 versions -> (V, V) float32 FSIM; UnusableImageError
    if too small."""
    versions = versions.astype(np.float32) / 255
    try:
        fsim.check_images(versions, data_range=1.0, name=label)
        matrix = _jitted(fsim.fsim_matrix)(versions[None], data_range=1.0,
                                           chromatic=chromatic)
    except ValueError as error:  # Out-of-range pixels, or too small for FSIM.
        raise images.UnusableImageError(str(error)) from error
    matrix = np.asarray(matrix, np.float32)[0]
    if not np.isfinite(matrix).all():
        raise images.UnusableImageError("FSIM is not finite")
    return matrix


def _build_or_reason(group: _Group) -> tuple[np.ndarray | None, str | None]:
    """(versions, None), or (None, why the group is unusable)."""
    try:
        return group.build(), None
    except images.UnusableImageError as error:
        return None, str(error)


def _label_groups(groups: list[_Group], config: ml_collections.ConfigDict,
                  cache: _LabelCache
                  ) -> tuple[list[_Group], list[np.ndarray], list[tuple[str, str]]]:
    """Validates every group and finds its FSIM matrix, cached or computed.

    Versions are built by config.workers processes (0: here), FSIM runs here,
    on the accelerator. Returns the usable groups, their (V, V) matrices and
    the skipped (label, reason) pairs. A cached group is not decoded again:
    its key holds its files' sizes and modification times.
    """
    keys = [f"{index}|{group.fingerprint}" for index, group in enumerate(groups)]
    built = stream.ordered_map(
        _build_or_reason,
        [group for group, key in zip(groups, keys) if cache.get(key) is None],
        workers=config.workers)
    usable, matrices, skipped = [], [], []
    started = last_log = time.monotonic()
    with contextlib.closing(built):
        for done, (group, key) in enumerate(zip(groups, keys), start=1):
            matrix = cache.get(key)
            if matrix is None:
                versions, reason = next(built)
                if reason is None:
                    try:
                        matrix = _soft_labels(versions, group.label,
                                              config.fsim_chromatic)
                    except images.UnusableImageError as error:
                        reason = str(error)
                if reason is not None:
                    logging.warning("Skipping %s: %s", group.label, reason)
                    skipped.append((group.label, reason))
                    continue
                cache.put(key, matrix)
            usable.append(group)
            matrices.append(matrix)
            if time.monotonic() - last_log > _PROGRESS_EVERY_S or done == len(groups):
                last_log = time.monotonic()
                logging.info("FSIM soft labels: %d/%d groups read, %d skipped, %.0f s.",
                             done, len(groups), len(skipped), last_log - started)
    cache.save()
    return usable, matrices, skipped


# The dataset ----------------------------------------------------------------------

def _check_config(config: ml_collections.ConfigDict, seed: int):
    """Raises ValueError naming the first bad field, before any work is done."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if config.layout not in LAYOUTS:
        raise ValueError(f"data.layout must be one of {LAYOUTS}, got "
                         f"{config.layout!r}")
    if config.layout == "pristine":
        distortions.distortion_set(config.distortions)
    elif not config.path:
        raise ValueError("data.layout='predistorted' needs data.path: the "
                         "embedded corpus holds only pristine photographs")
    for field in ("fragment_grid", "fragment_size", "min_side"):
        if config[field] < 1:
            raise ValueError(f"data.{field} must be >= 1, got {config[field]}")
    if config.max_side < 0 or 0 < config.max_side < config.min_side:
        raise ValueError(f"data.max_side must be 0 (no limit) or >= data.min_side"
                         f"={config.min_side}, got {config.max_side}")
    if config.prefetch < 0:
        raise ValueError(f"data.prefetch must be >= 0, got {config.prefetch}")
    stream.resolve_workers(config.workers)


def create_low_level_dataset(data_config: ml_collections.ConfigDict, *,
                             seed: int, cache_dir: str | None = None,
                             write_cache: bool = True
                             ) -> "LowLevelDataset":
    """Finds, validates and labels every group; see the module docstring.

    Args:
        data_config: fields path, layout, distortions, fragment_grid,
            fragment_size, min_side, max_side, fsim_chromatic, prefetch, workers.
        seed: seeds versions, epoch order, fragment positions and flips.
        cache_dir: folder (local or gs://) for the FSIM matrices' .npz; None
            keeps them in memory.
        write_cache: False reads the .npz but never writes it (all processes
            but one in a multi-process job).

    Raises:
        FileNotFoundError: data_config.path is not a folder.
        ValueError: a bad field, no image files, pre-distorted groups of
            unequal size (these before any image is decoded), or no usable image.
    """
    _check_config(data_config, seed)
    seed = int(seed)
    if data_config.layout == "pristine":
        groups, skipped = _pristine_groups(data_config, seed), []
    else:
        groups, skipped = _predistorted_groups(data_config)
    source = data_config.path or "the embedded corpus"
    logging.info("Low-level data: %d candidate groups in %s.", len(groups), source)
    if data_config.max_side:
        logging.info("Images with a side over max_side=%d px are downscaled "
                     "(area filter) before distortion, so FSIM and memory stay "
                     "bounded.", data_config.max_side)
    cache = _LabelCache(cache_dir, _dataset_fingerprint(data_config, seed),
                        writer=write_cache)
    usable, matrices, more_skipped = _label_groups(groups, data_config, cache)
    skipped += more_skipped
    if not usable:
        raise ValueError(f"no usable image in {source}: all {len(skipped)} "
                         f"skipped, e.g. {skipped[:3]}")
    return LowLevelDataset(usable, np.stack(matrices), skipped, data_config, seed)


class _DecodedGroups:
    """A small LRU of built versions, bounded in bytes; safe across threads."""

    def __init__(self, budget_bytes: int):
        self._budget = budget_bytes
        self._items: collections.OrderedDict[int, np.ndarray] = (
            collections.OrderedDict())
        self._bytes = 0
        self._lock = threading.Lock()

    def __getstate__(self):  # A worker process starts with an empty cache.
        return self._budget

    def __setstate__(self, budget_bytes: int):
        self.__init__(budget_bytes)

    def get(self, key: int, build: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()
        value.setflags(write=False)
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._bytes += value.nbytes
            while self._bytes > self._budget and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes
        return value


class LowLevelDataset:
    """Batches of aligned fragment views and FSIM soft labels.

    Attributes:
        num_groups: usable groups.
        num_versions: V, versions per group, the reference included.
        skipped: (file or folder, reason) of every input left out.
    """

    def __init__(self, groups: list[_Group], similarities: np.ndarray,
                 skipped: list[tuple[str, str]],
                 data_config: ml_collections.ConfigDict, seed: int):
        self.num_groups = len(groups)
        self.num_versions = similarities.shape[1]
        self.skipped = skipped
        self._groups = groups
        self._similarities = similarities  # (num_groups, V, V) float32
        self._seed = seed
        self._grid = data_config.fragment_grid
        self._patch = data_config.fragment_size
        self._decoded = _DecodedGroups(_DECODED_BUDGET_BYTES)

    def batch(self, step: int, batch_size: int, *, process_index: int = 0,
              process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's rows of the global batch for `step`.

        Rows [process_index * batch_size // process_count,
        (process_index + 1) * batch_size // process_count) of the batch_size
        groups at global slots step * batch_size + row.

        Returns:
            anchor: (b, V, S, S, 3) uint8, S = grid * patch.
            augment: (b, V, S, S, 3) uint8, resampled and flipped.
            sim: (b, V, V) float32 FSIM soft labels.
        """
        if step < 0 or batch_size < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"need step >= 0, batch_size >= 1 and 0 <= "
                             f"process_index < process_count; got {step}, "
                             f"{batch_size}, {process_index}, {process_count}")
        first = process_index * batch_size // process_count
        last = (process_index + 1) * batch_size // process_count
        rows = [self._row(step, step * batch_size + row) for row in range(first, last)]
        if not rows:
            side = self._grid * self._patch
            views = np.zeros((0, self.num_versions, side, side, 3), np.uint8)
            return {"anchor": views, "augment": views.copy(),
                    "sim": np.zeros((0,) + self._similarities.shape[1:], np.float32)}
        return {key: np.stack([row[key] for row in rows])
                for key in ("anchor", "augment", "sim")}

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

    def versions(self, group: int) -> np.ndarray:
        """Group `group`'s (V, H, W, 3) uint8 versions, as batches cut them."""
        return self._usable_versions(group)[1]

    def _row(self, step: int, slot: int) -> dict[str, np.ndarray]:
        epoch, position = divmod(slot, self.num_groups)
        order = stream.epoch_order([self._seed, _ORDER_STREAM], epoch,
                                   self.num_groups)
        group, versions = self._usable_versions(int(order[position]))
        rng = np.random.default_rng([self._seed, _VIEWS_STREAM, step, slot])
        views = functools.partial(fragments.fragment_views, versions,
                                  grid=self._grid, patch=self._patch, rng=rng)
        anchor = views()
        return {"anchor": anchor, "augment": fragments.random_flips(views(), rng),
                "sim": self._similarities[group]}

    def _usable_versions(self, group: int) -> tuple[int, np.ndarray]:
        """The group's versions; a file that broke since the scan is replaced by
        the next group, with a warning, rather than stopping the run."""
        for attempt in range(self.num_groups):
            index = (group + attempt) % self.num_groups
            source = self._groups[index]
            try:
                return index, self._decoded.get(index, source.build)
            except images.UnusableImageError as error:
                logging.warning("%s became unusable after the scan (%s); using "
                                "the next group instead.", source.label, error)
        raise RuntimeError("every group became unusable after the scan")
