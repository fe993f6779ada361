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
versions, computed once when the dataset is created and cached in the
workdir: see fsim_labels.py. The original recomputes V(V-1)/2 FSIMs per group
every epoch.

Pixels are not kept: versions are rebuilt whenever a group is used (a small
LRU keeps the last few), so memory stays bounded on large folders. Views are
aligned fragments (see fragments.py): an anchor and an independently sampled,
randomly flipped augmentation per group.

Every batch is a pure function of (seed, step), as step_dataset.py says;
fragment positions and flips are seeded by (seed, step, slot).
"""
import collections
import functools
from pathlib import Path
import threading
from typing import Callable

from absl import logging
import ml_collections
import numpy as np

from grepq_jax.training.labels import distortions
from grepq_jax.formats import corpus
from grepq_jax.training.data import fragments
from grepq_jax.training.labels import fsim_labels
from grepq_jax.formats import images
from grepq_jax.training.data import step_dataset

LAYOUTS = ("pristine", "predistorted")

# Independent random streams under one seed: np.random.default_rng([seed, STREAM, ...]).
# (The epoch order's is step_dataset's, 1.)
_VERSIONS_STREAM, _VIEWS_STREAM = 0, 2
_DECODED_BUDGET_BYTES = 256 << 20


# Group builders ---------------------------------------------------------------

def _distorted_versions(read: Callable[[], np.ndarray], set_name: str,
                        seed: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, _VERSIONS_STREAM, index])
    return distortions.make_versions_uint8(read(), set_name, rng)


def _rescaled(read: Callable[[], np.ndarray], scale: float,
              min_side: int) -> np.ndarray:
    """read()'s image shrunk by `scale` (area filter): the same scene at a
    coarser scale, a further group with different textures per fragment."""
    image = read()
    side = max(1, round(max(image.shape[:2]) * scale))
    return images.fit_size(images.limit_longer_side(image, side),
                           min_side=min_side, max_side=0)


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

def _pristine_groups(config: ml_collections.ConfigDict, seed: int) -> list[fsim_labels.Group]:
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
        sources = [(name, name, functools.partial(step_dataset.embedded_image, name, **sizes))
                   for name in corpus.EMBEDDED_PHOTOGRAPHS]
    # Each scale adds a group per image after all of the previous scale's, so
    # the groups (and distortion seeds) of scale 1 stay what they were alone.
    scaled = [(label if scale == 1 else f"{label}@{scale:g}",
               fingerprint if scale == 1 else f"{fingerprint}@{scale:g}",
               read if scale == 1 else functools.partial(_rescaled, read, scale,
                                                         config.min_side))
              for scale in config.scales for label, fingerprint, read in sources]
    return [fsim_labels.Group(label, fingerprint,
                   functools.partial(_distorted_versions, read,
                                     config.distortions, seed, index))
            for index, (label, fingerprint, read) in enumerate(scaled)]


def _predistorted_groups(config: ml_collections.ConfigDict
                         ) -> tuple[list[fsim_labels.Group], list[tuple[str, str]]]:
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
    groups = [fsim_labels.Group(str(folder),
                     ";".join(_file_fingerprint(path, root) for path in files),
                     functools.partial(_version_files, files, config.min_side,
                                       config.max_side))
              for folder, files in members.items()]
    return groups, skipped


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
    if not config.scales or not all(0 < scale <= 1 for scale in config.scales):
        raise ValueError(f"data.scales must be a non-empty tuple of scales in "
                         f"(0, 1], got {config.scales!r}")
    for field in ("fragment_grid", "fragment_size", "min_side"):
        if config[field] < 1:
            raise ValueError(f"data.{field} must be >= 1, got {config[field]}")
    if config.max_side < 0 or 0 < config.max_side < config.min_side:
        raise ValueError(f"data.max_side must be 0 (no limit) or >= data.min_side"
                         f"={config.min_side}, got {config.max_side}")
    step_dataset.check_loader_fields(config)


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
    cache = fsim_labels.LabelCache(
        cache_dir, fsim_labels.cache_fingerprint(data_config, seed), writer=write_cache)
    usable, matrices, more_skipped = fsim_labels.label_groups(
        groups, workers=data_config.workers, chromatic=data_config.fsim_chromatic,
        cache=cache)
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


class LowLevelDataset(step_dataset.StepDataset):
    """Batches of aligned fragment views and FSIM soft labels.

    `batch(step, batch_size, ...)` returns this process's rows:
        anchor: (b, V, S, S, 3) uint8, S = grid * patch.
        augment: (b, V, S, S, 3) uint8, resampled and flipped.
        sim: (b, V, V) float32 FSIM soft labels.

    Attributes:
        num_groups: usable groups.
        num_versions: V, versions per group, the reference included.
        skipped: (file or folder, reason) of every input left out.
    """

    def __init__(self, groups: list[fsim_labels.Group], similarities: np.ndarray,
                 skipped: list[tuple[str, str]],
                 data_config: ml_collections.ConfigDict, seed: int):
        self.num_groups = self._count = len(groups)
        self.num_versions = similarities.shape[1]
        self.skipped = skipped
        self._groups = groups
        self._similarities = similarities  # (num_groups, V, V) float32
        self._seed = seed
        self._grid = data_config.fragment_grid
        self._patch = data_config.fragment_size
        self._decoded = _DecodedGroups(_DECODED_BUDGET_BYTES)

    def versions(self, group: int) -> np.ndarray:
        """Group `group`'s (V, H, W, 3) uint8 versions, as batches cut them."""
        return self._usable_versions(group)[1]

    def _empty_batch(self) -> dict[str, np.ndarray]:
        side = self._grid * self._patch
        views = np.zeros((0, self.num_versions, side, side, 3), np.uint8)
        return {"anchor": views, "augment": views.copy(),
                "sim": np.zeros((0,) + self._similarities.shape[1:], np.float32)}

    def _row(self, step: int, slot: int) -> dict[str, np.ndarray]:
        group, versions = self._usable_versions(self._item(slot))
        rng = np.random.default_rng([self._seed, _VIEWS_STREAM, step, slot])
        views = functools.partial(fragments.fragment_views, versions,
                                  grid=self._grid, patch=self._patch, rng=rng)
        anchor = views()
        return {"anchor": anchor, "augment": fragments.random_flips(views(), rng),
                "sim": self._similarities[group]}

    def _usable_versions(self, group: int) -> tuple[int, np.ndarray]:
        return self._load(
            group, lambda index: self._decoded.get(index, self._groups[index].build),
            lambda index: self._groups[index].label)
