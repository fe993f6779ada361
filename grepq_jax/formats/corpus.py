"""The embedded default corpus: natural photographs shipped inside packages.

Used when no dataset path is configured, so training runs out of the box with
no download. Only real photographs: scikit-image's binary, synthetic,
microscopy, astronomy and text images are left out. All of these files are
stored in the installed packages themselves (scikit-image fetches nothing
for them; pooch is not needed).
"""
from typing import Callable

import numpy as np
import skimage.data
from sklearn import datasets

from grepq_jax.formats import images


def _sklearn_sample(file_name: str) -> Callable[[], np.ndarray]:
    return lambda: datasets.load_sample_image(file_name)


# Name -> loader of uint8 (H, W) or (H, W, 3) pixels.
EMBEDDED_PHOTOGRAPHS: dict[str, Callable[[], np.ndarray]] = {
    "skimage:astronaut": skimage.data.astronaut,
    "skimage:camera": skimage.data.camera,  # Grayscale.
    "skimage:chelsea": skimage.data.chelsea,
    "skimage:coffee": skimage.data.coffee,
    "skimage:rocket": skimage.data.rocket,
    "skimage:motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    "sklearn:china": _sklearn_sample("china.jpg"),
    "sklearn:flower": _sklearn_sample("flower.jpg"),
}


def load_embedded_photograph(name: str) -> np.ndarray:
    """One embedded photograph as (H, W, 3) float32 in [0, 1]."""
    if name not in EMBEDDED_PHOTOGRAPHS:
        raise ValueError(f"unknown embedded photograph {name!r}; known: "
                         f"{sorted(EMBEDDED_PHOTOGRAPHS)}")
    return images.pixels_to_rgb(np.asarray(EMBEDDED_PHOTOGRAPHS[name]()))
