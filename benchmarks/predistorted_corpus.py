"""Distorted versions written once, in the original GRepQ's pre-distorted layout.

Both sides of bench_learning_parity.py read these files: grepq_jax with
`--config.data.layout=predistorted --config.data.path=ROOT/LIVE_FB_synthetic`,
the original's data loader through data_read_utils.py:26-37, which lists the
groups in ROOT/LIVE_FB_synthetic/LIVEFB.csv (column `im_loc`) and reads the
folder `<stem>.bmp` of each. A group folder holds the reference and its 8
"livefb" versions (4 families x 2 levels, grepq_jax.training.labels.distortions) as PNG,
named so that sorted order puts the reference first.
"""
import csv
import pathlib
import re
import sys

import numpy as np
from PIL import Image

from grepq_jax.training.labels import distortions
from grepq_jax.formats import corpus, images

DATASET = "LIVE_FB_synthetic"  # data_read_utils.py:26
INDEX_FILE = "LIVEFB.csv"  # data_read_utils.py:29
DISTORTION_SET = "livefb"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def embedded_sources(max_side: int) -> dict:
    """The embedded corpus: name -> loader of (H, W, 3) float32 in [0, 1], its
    longer side limited to max_side px (area filter)."""
    return {name: (lambda name=name: images.limit_longer_side(
        corpus.load_embedded_photograph(name), max_side))
            for name in corpus.EMBEDDED_PHOTOGRAPHS}


def folder_sources(folder, max_side: int) -> dict:
    """Every image file under `folder`, its longer side limited to max_side px."""
    return {str(path): (lambda path=path: images.load_image(path, min_side=32,
                                                            max_side=max_side))
            for path in images.find_image_files(folder)}


def _loaded(name: str, load):
    """load(), or None after a one-line report when the file is unusable."""
    try:
        return load()
    except images.UnusableImageError as error:
        print(f"skipped {name}: {error}", file=sys.stderr)
        return None


def write_predistorted(root, sources: dict, *, seed: int = 0) -> pathlib.Path:
    """Writes ROOT/LIVE_FB_synthetic (groups and LIVEFB.csv); returns that folder.

    sources: name -> loader of a pristine (H, W, 3) image in [0, 1]. Versions
    are seeded by (seed, the source's place), as grepq_jax's own layout
    "pristine" seeds them. An unusable source is reported and left out.
    """
    dataset = pathlib.Path(root) / DATASET
    dataset.mkdir(parents=True, exist_ok=True)
    names = []
    for index, (name, load) in enumerate(sources.items()):
        stem = f"{index:03d}_{_slug(name)[-40:]}"
        rng = np.random.default_rng([seed, 0, index])
        image = _loaded(name, load)
        if image is None:
            continue
        versions = distortions.make_versions_uint8(image, DISTORTION_SET, rng)
        group = dataset / f"{stem}.bmp"
        group.mkdir(exist_ok=True)
        labels = ["reference"] + [f"{family}_{level}" for family, level
                                  in distortions.DISTORTION_SETS[DISTORTION_SET]]
        for number, (label, pixels) in enumerate(zip(labels, versions)):
            Image.fromarray(pixels).save(group / f"{stem}_{number}_{label}.png")
        names.append(f"{stem}.png")
    with open(dataset / INDEX_FILE, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["im_loc"])
        writer.writerows([name] for name in names)
    return dataset


def write_pristine_folder(folder, sources: dict) -> pathlib.Path:
    """The pristine images themselves as PNG: the folder both judges' statistics read."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, load) in enumerate(sources.items()):
        image = _loaded(name, load)
        if image is None:
            continue
        pixels = images.to_uint8(np.asarray(image)[None])[0]
        Image.fromarray(pixels).save(folder / f"{index:03d}_{_slug(name)[-40:]}.png")
    return folder
