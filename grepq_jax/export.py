"""Packages exported encoders into one self-contained scoring model folder.

    python -m grepq_jax.export --low_level=runs/low_level/export \
        --high_level=runs/high_level/export --out=models/grepq

Copies each encoder export (its parameters and encoder.json), computes the
pristine statistics once with the low-level encoder (from --pristine, a
folder of pristine images, --pristine_patches, the original GRepQ's patch
file, or by default the embedded photographs), and writes the folder's
description, model.json, last. Either encoder may be left out. The layout is
described in grepq_jax/scoring/model_folder.py; `python -m grepq_jax.evaluate
--fit_regressor_into_model` adds a regressor later. Nothing is written
outside --out, which must be new or empty.
"""
import os

if __name__ == "__main__":  # No PyTorch needed: see grepq_jax/cli.py.
    os.environ.setdefault("USE_TORCH", "0")

import json
import pathlib
import sys
from collections.abc import Iterator

from absl import flags
from absl import logging
import numpy as np

from grepq_jax import checkpoint, cli
from grepq_jax.scoring import encoders
from grepq_jax.scoring import pristine
from grepq_jax.scoring import model_folder
from grepq_jax.data import corpus, images

FLAGS = flags.FlagValues()
_LOW_LEVEL = flags.DEFINE_string(
    "low_level", None, "The low-level training export (WORKDIR/export).", flag_values=FLAGS)
_HIGH_LEVEL = flags.DEFINE_string(
    "high_level", None, "The high-level training export (WORKDIR/export).", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "The model folder to write (new or empty).",
                           required=True, flag_values=FLAGS)
_PRISTINE = flags.DEFINE_string(
    "pristine", None, "A folder of pristine images (searched recursively) for the "
    "low-level statistics; default: the embedded photographs.", flag_values=FLAGS)
_PRISTINE_PATCHES = flags.DEFINE_string(
    "pristine_patches", None, "The original GRepQ's pristine patch file "
    "(pristine_patches_096_0.75_0.80.hdf5) for the low-level statistics, instead of "
    "--pristine.", flag_values=FLAGS)
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 96, "Pristine and test patch side, px.",
                                   lower_bound=32, flag_values=FLAGS)
_CHUNK = flags.DEFINE_integer("chunk", 64, "Patches through the encoder at once.",
                              lower_bound=1, flag_values=FLAGS)


def pristine_images(folder: str | None, skipped: list[tuple[str, str]]
                    ) -> Iterator[np.ndarray]:
    """(H, W, 3) images of `folder`, or the embedded photographs if None.

    An unreadable file is logged, appended to `skipped` as (path, reason),
    and left out.
    """
    if folder is None:
        for name in corpus.EMBEDDED_PHOTOGRAPHS:
            yield corpus.load_embedded_photograph(name)
        return
    for path in images.find_image_files(folder):
        try:
            yield images.read_image(path)
        except images.UnusableImageError as error:
            logging.warning("pristine image %s skipped: %s", path, error)
            skipped.append((str(path), str(error)))


def _check_out_folder(out: pathlib.Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose "
                              "a new --out")


def export_model(out, *, low_level: str | None = None, high_level: str | None = None,
                 pristine_folder: str | None = None, pristine_patches: str | None = None,
                 patch_size: int = 96, chunk: int = 64) -> dict:
    """Packages the encoder exports of training runs as the model folder `out`.

    The pristine statistics come from `pristine_folder` (images, selected
    here), `pristine_patches` (the original's patch file, already selected;
    its patch size replaces `patch_size`) or the embedded photographs.
    Returns its description (model.json). Raises ValueError when neither
    encoder is given, both pristine sources are, or a pristine source is
    unusable, FileExistsError when `out` is not new or empty.
    """
    if not (low_level or high_level):
        raise ValueError("give at least one of the low-level and high-level exports")
    if pristine_folder and pristine_patches:
        raise ValueError("give a pristine image folder or a pristine patch file, not both")
    out = pathlib.Path(out).absolute()  # Orbax wants absolute paths.
    _check_out_folder(out)
    description = {"format_version": model_folder.FORMAT_VERSION, "low_level": bool(low_level),
                   "high_level": bool(high_level), "regressor": False,
                   "zero_shot": {"patch_size": patch_size, "stride": patch_size // 2}}
    exports, stats = {}, None
    if high_level:  # Each export is checked as a model folder would be.
        tree, metadata, source = encoders.read_checked_export(high_level, "high_level")
        encoders.HighLevelEncoder.from_tree(tree, metadata, source=source)
        exports[model_folder.HIGH_LEVEL_DIR] = tree, metadata
    if low_level:
        tree, metadata, source = encoders.read_checked_export(low_level, "low_level")
        encoder = encoders.LowLevelEncoder.from_tree(tree, metadata, chunk=chunk,
                                                     source=source)
        exports[model_folder.LOW_LEVEL_DIR] = tree, metadata
        stats, description["pristine"] = _pristine_statistics(
            encoder, pristine_folder, pristine_patches, patch_size=patch_size, chunk=chunk)
        description["zero_shot"] = {"patch_size": stats.patch_size,
                                    "stride": stats.patch_size // 2}
    # Written only once everything above has worked.
    for name, (tree, metadata) in exports.items():
        checkpoint.write_export(str(out / name), tree, metadata)
    if stats is not None:
        np.savez(out / model_folder.PRISTINE_FILE, **stats.to_arrays())
    (out / model_folder.MODEL_JSON).write_text(json.dumps(description, indent=2))
    return description


def _pristine_statistics(encoder: encoders.LowLevelEncoder, folder: str | None,
                         patch_file: str | None, *, patch_size: int, chunk: int):
    """The statistics, computed once, and what model.json says of them."""
    skipped: list[tuple[str, str]] = []
    if patch_file:  # Already selected by the original; its patch size holds.
        stats = pristine.patch_file_statistics(patch_file, encoder.patch_features,
                                               chunk=chunk)
    else:
        stats = pristine.pristine_statistics(pristine_images(folder, skipped),
                                             encoder.patch_features,
                                             patch_size=patch_size, chunk=chunk)
    if stats.num_patches <= len(stats.mu):
        logging.warning("only %d pristine patches for %d features: the covariance is "
                        "singular (the distance's 1e-3 ridge keeps it usable); a larger "
                        "--pristine folder gives better statistics",
                        stats.num_patches, len(stats.mu))
    return stats, {"source": patch_file or folder or "embedded photographs",
                   "num_patches": stats.num_patches,
                   "skipped_images": [path for path, _ in skipped]}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"unexpected arguments: {argv[1:]}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every write at INFO.
    absolute = {name: flag.value and cli.absolute(flag.value) for name, flag in (
        ("out", _OUT), ("low_level", _LOW_LEVEL), ("high_level", _HIGH_LEVEL),
        ("pristine_folder", _PRISTINE), ("pristine_patches", _PRISTINE_PATCHES))}
    try:
        description = export_model(**absolute, patch_size=_PATCH_SIZE.value,
                                   chunk=_CHUNK.value)
    except ImportError as error:  # h5py, for --pristine_patches.
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # Bad exports, folders or pristine images.
        print(f"export failed: {error}", file=sys.stderr)
        return 2
    print(f"wrote the model folder {_OUT.value}: {json.dumps(description)}",
          file=sys.stderr)
    return 0


USAGE = """\
usage: grepq export --out=DIR [--low_level=EXPORT] [--high_level=EXPORT] [flags]
       (or python -m grepq_jax.export ...)

Packages exported encoders into one self-contained scoring model folder.

example:
  grepq export --low_level=runs/low_level/export --out=models/grepq"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
