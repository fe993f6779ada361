"""Training batches for the high-level pathway: crops of reference images.

The images are the pristine references the low-level job reads from the same
folder (layout "pristine": every image file; layout "predistorted": in each
sub-folder, the file whose name contains "REF", as the original code picks
it), or the embedded corpus when `data.path` is empty. Every file is decoded
once when the dataset is created, so a bad one is skipped then, with a
warning, and never breaks the run; pixels are re-read when used, so memory
stays bounded.

Each example is a crop of `image_size` pixels, normalised with CLIP's own
mean and std; images shorter than the crop are upsampled first. Batches are a
pure function of (seed, step), like the low-level stream.
"""

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Iterator

from absl import logging
import ml_collections
import numpy as np

from grepq_jax.data import corpus
from grepq_jax.data import fragments
from grepq_jax.data import images
from grepq_jax.data import stream

CROPS = ("random", "center")
_ORDER_STREAM, _CROP_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class _Source:
    label: str  # Names it in logs and in `skipped`.
    read: Callable[[], np.ndarray]  # -> (H, W, 3) float32 in [0, 1]


def _reference_sources(
    config: ml_collections.ConfigDict,
) -> tuple[list[_Source], list[tuple[str, str]]]:
    sizes = dict(min_side=config.min_side, max_side=config.max_side)
    if not config.path:
        return [
            _Source(name, functools.partial(_embedded, name, **sizes))
            for name in corpus.EMBEDDED_PHOTOGRAPHS
        ], []
    root = Path(config.path)
    if config.layout == "pristine":
        paths, skipped = images.find_image_files(root), []
    elif config.layout == "predistorted":
        paths, skipped = _predistorted_references(root)
    else:
        raise ValueError(
            f"data.layout must be 'pristine' or 'predistorted', "
            f"got {config.layout!r}"
        )
    if not paths:
        raise ValueError(f"no reference images under {config.path!r}")
    return [
        _Source(str(path), functools.partial(images.load_image, path, **sizes))
        for path in paths
    ], skipped


def _embedded(name: str, *, min_side: int, max_side: int) -> np.ndarray:
    return images.fit_size(
        corpus.load_embedded_photograph(name),
        min_side=min_side,
        max_side=max_side,
    )


def _predistorted_references(root: Path):
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {str(root)!r} does not exist " "or is not a folder"
        )
    paths, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        references = [
            p
            for p in images.find_image_files(folder, recursive=False)
            if "REF" in p.name
        ]
        if len(references) == 1:
            paths.append(references[0])
        else:
            skipped.append(
                (
                    str(folder),
                    f"{len(references)} files with REF "
                    "in the name; expected exactly one",
                )
            )
    return paths, skipped


def _check_config(config: ml_collections.ConfigDict):
    if config.crop not in CROPS:
        raise ValueError(
            f"data.crop must be one of {CROPS}, got " f"{config.crop!r}"
        )
    if config.prefetch < 0:
        raise ValueError(f"data.prefetch must be >= 0, got {config.prefetch}")
    stream.resolve_workers(config.workers)


def create_high_level_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    seed: int,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> "HighLevelDataset":
    """Finds and validates the reference images; see the module docstring.

    Args:
      data_config: fields path, layout, min_side, max_side, crop, prefetch,
        workers.
      seed: seeds the epoch order and the crop positions.
      image_size: side of the square crops, CLIP's native input size.
      mean, std: CLIP's per-channel normalisation, for pixels in [0, 1].

    Raises:
      FileNotFoundError / ValueError: a missing folder, a bad field, no image
        files, or no usable image; all before any model is built.
    """
    _check_config(data_config)
    sources, skipped = _reference_sources(data_config)
    usable = []
    for source in sources:
        try:
            source.read()
            usable.append(source)
        except images.UnusableImageError as error:
            logging.warning("Skipping %s: %s", source.label, error)
            skipped.append((source.label, str(error)))
    if not usable:
        where = data_config.path or "the embedded corpus"
        raise ValueError(
            f"no usable image in {where}: all {len(skipped)} "
            f"skipped, e.g. {skipped[:3]}"
        )
    logging.info(
        "High-level data: %d images (%d skipped).", len(usable), len(skipped)
    )
    return HighLevelDataset(
        usable,
        skipped,
        seed=seed,
        image_size=image_size,
        mean=mean,
        std=std,
        crop=data_config.crop,
    )


class HighLevelDataset:
    """Batches of normalised crops.

    Attributes:
      num_images: usable images.
      skipped: (file or folder, reason) of every input left out.
    """

    def __init__(
        self,
        sources: list[_Source],
        skipped,
        *,
        seed: int,
        image_size: int,
        mean,
        std,
        crop: str,
    ):
        self.num_images = len(sources)
        self.skipped = skipped
        self._sources = sources
        self._seed = seed
        self._size = image_size
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)
        self._random_crop = crop == "random"

    def batch(
        self,
        step: int,
        batch_size: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ) -> dict[str, np.ndarray]:
        """This process's rows of the global batch for `step`.

        Returns {"image": (b, S, S, 3) float32}, normalised, S = image_size.
        """
        first = process_index * batch_size // process_count
        last = (process_index + 1) * batch_size // process_count
        crops = [
            self._crop(step, step * batch_size + row)
            for row in range(first, last)
        ]
        return {
            "image": (
                np.stack(crops)
                if crops
                else np.zeros((0, self._size, self._size, 3), np.float32)
            )
        }

    def iterate(
        self,
        start_step: int,
        num_steps: int,
        batch_size: int,
        *,
        prefetch: int = 2,
        workers: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (step, batch(step)) for num_steps steps from start_step,
        made ahead as `stream.make_batches` says."""
        make_batch = functools.partial(
            self.batch,
            batch_size=batch_size,
            process_index=process_index,
            process_count=process_count,
        )
        steps = range(start_step, start_step + num_steps)
        return stream.make_batches(
            steps, make_batch, prefetch=prefetch, workers=workers
        )

    def _crop(self, step: int, slot: int) -> np.ndarray:
        epoch, position = divmod(slot, self.num_images)
        order = stream.epoch_order(
            [self._seed, _ORDER_STREAM], epoch, self.num_images
        )
        image = self._read(int(order[position]))
        image = fragments.upsample_to_cover(image[None], self._size)[0]
        height, width = image.shape[:2]
        if self._random_crop:
            rng = np.random.default_rng([self._seed, _CROP_STREAM, step, slot])
            top = int(rng.integers(height - self._size + 1))
            left = int(rng.integers(width - self._size + 1))
        else:
            top, left = (height - self._size) // 2, (width - self._size) // 2
        crop = image[top : top + self._size, left : left + self._size]
        return (crop - self._mean) / self._std

    def _read(self, index: int) -> np.ndarray:
        """The image; one that broke since the scan is replaced by the next,
        with a warning, rather than stopping the run."""
        for attempt in range(self.num_images):
            source = self._sources[(index + attempt) % self.num_images]
            try:
                return source.read()
            except images.UnusableImageError as error:
                logging.warning(
                    "%s became unusable after the scan (%s); "
                    "using the next image instead.",
                    source.label,
                    error,
                )
        raise RuntimeError("every image became unusable after the scan")
