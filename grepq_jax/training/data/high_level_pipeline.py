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
pure function of (seed, step), as step_dataset.py says.
"""

import dataclasses
import functools
from pathlib import Path
from typing import Callable

from absl import logging
import ml_collections
import numpy as np

from grepq_jax.formats import corpus
from grepq_jax.training.data import fragments
from grepq_jax.formats import images
from grepq_jax.training.data import step_dataset

CROPS = ("random", "center")
_CROP_STREAM = 2  # The epoch order's stream is step_dataset's, 1.


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
            _Source(name, functools.partial(step_dataset.embedded_image, name, **sizes))
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
    step_dataset.check_loader_fields(config)


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


class HighLevelDataset(step_dataset.StepDataset):
    """Batches of normalised crops: `batch(step, batch_size, ...)` returns
    {"image": (b, S, S, 3) float32}, S = image_size, this process's rows.

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
        self.num_images = self._count = len(sources)
        self.skipped = skipped
        self._sources = sources
        self._seed = seed
        self._size = image_size
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)
        self._random_crop = crop == "random"

    def _empty_batch(self) -> dict[str, np.ndarray]:
        return {"image": np.zeros((0, self._size, self._size, 3), np.float32)}

    def _row(self, step: int, slot: int) -> dict[str, np.ndarray]:
        _, image = self._load(
            self._item(slot),
            lambda index: self._sources[index].read(),
            lambda index: self._sources[index].label,
        )
        image = fragments.upsample_to_cover(image[None], self._size)[0]
        height, width = image.shape[:2]
        if self._random_crop:
            rng = np.random.default_rng([self._seed, _CROP_STREAM, step, slot])
            top = int(rng.integers(height - self._size + 1))
            left = int(rng.integers(width - self._size + 1))
        else:
            top, left = (height - self._size) // 2, (width - self._size) // 2
        crop = image[top : top + self._size, left : left + self._size]
        return {"image": (crop - self._mean) / self._std}
