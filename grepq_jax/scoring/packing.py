"""Packs encoder exports into a scoring model folder (the layout: model_folder.py).

Each export is checked as a model folder would be; the pristine statistics
are computed once with the low-level encoder. The folder holds
model_folder.UNFINISHED_MARKER while it is filled, so a run that stops
half-way leaves a folder no reader accepts, and the next export replaces.
"""
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator

from absl import logging
from etils import epath
import numpy as np

from grepq_jax.formats import encoder_export
from grepq_jax import errors
from grepq_jax.formats import corpus, images, output_files
from grepq_jax.formats.paths import absolute
from grepq_jax.scoring import encoders, model_folder, pristine


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


def _check_out_folder(out: epath.Path) -> None:
    """FileExistsError unless `out` is missing, empty, or an unfinished export's
    folder (it holds model_folder.UNFINISHED_MARKER: replaced when writing)."""
    if (out / model_folder.UNFINISHED_MARKER).exists():
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose "
                              "a new --out")


def _prepare_out_folder(out: epath.Path) -> None:
    """`out` as an empty folder: made, or emptied if an unfinished export's."""
    if (out / model_folder.UNFINISHED_MARKER).exists():
        print(f"note: replacing the unfinished model folder {out} (an export that "
              "stopped before finishing)", file=sys.stderr)
        _empty(out)
    out.mkdir(parents=True, exist_ok=True)


def _empty(folder: epath.Path) -> None:
    """Removes what `folder` holds, the unfinished marker last."""
    for entry in folder.iterdir():
        if entry.name == model_folder.UNFINISHED_MARKER:
            continue
        if entry.is_dir() and not os.path.islink(entry):
            entry.rmtree()
        else:
            entry.unlink()
    (folder / model_folder.UNFINISHED_MARKER).unlink(missing_ok=True)


def check_paths(out, inputs: dict[str, str | None]) -> None:
    """errors.UsageError if --out overlaps an input (flag name -> path)."""
    places = []
    for name, path in inputs.items():
        if path:
            is_folder = name != "pristine_patches"
            places.append(output_files.Place(
                f"--{name}={path}", path, folder=is_folder,
                suffixes=images.IMAGE_SUFFIXES if name == "pristine" else None))
    output_files.check_no_clash(places, [output_files.Place(f"--out={out}", out,
                                                            folder=True)])


def _disk_full(error: Exception, out: epath.Path) -> errors.RunFailure | None:
    """A RunFailure if `error` is a write refused for lack of space: an OSError,
    or Orbax's ValueError that quotes one (os_error_code 28)."""
    failure = errors.disk_full(error, out)
    text = str(error)
    if failure is None and ("No space left on device" in text
                            or "os_error_code='28'" in text):
        needed = re.search(r"Failed to write (\d+) bytes", text)
        failure = errors.RunFailure(
            f"cannot write {out}: no space left on device"
            + (f" (a write of {int(needed[1]):,} bytes was refused)" if needed else "")
            + "; free some space or choose another --out, then run it again")
    return failure


def _write_folder(out: epath.Path, exports: dict, stats, description: dict) -> None:
    """The folder's files, model.json last, between the unfinished marker's
    creation and its removal; on failure what was written is removed."""
    made = not out.exists()
    _prepare_out_folder(out)
    (out / model_folder.UNFINISHED_MARKER).touch()
    try:
        for name, (tree, metadata) in exports.items():
            encoder_export.write(str(out / name), tree, metadata)
        if stats is not None:
            output_files.write_npz(out / model_folder.PRISTINE_FILE, stats.to_arrays())
        output_files.write_text(out / model_folder.MODEL_JSON,
                                json.dumps(description, indent=2))
    except BaseException as error:
        with contextlib.suppress(OSError):  # Frees the space a full disk needs back.
            _empty(out)
            if made and out.exists():  # An object store has no empty folders.
                out.rmdir()
        failure = _disk_full(error, out)
        if failure is not None and not isinstance(error, errors.RunFailure):
            raise failure from error
        raise
    (out / model_folder.UNFINISHED_MARKER).unlink()


def export_model(out, *, low_level: str | None = None, high_level: str | None = None,
                 pristine_folder: str | None = None, pristine_patches: str | None = None,
                 patch_size: int = 96, chunk: int = 64) -> dict:
    """Packages the encoder exports of training runs as the model folder `out`.

    The pristine statistics come from `pristine_folder` (images, selected
    here), `pristine_patches` (the original's patch file, already selected;
    its patch size replaces `patch_size`) or the embedded photographs.
    Returns its description (model.json). Raises ValueError when neither
    encoder is given, both pristine sources are, or a pristine source is
    unusable or `out` overlaps an input (errors.UsageError), FileExistsError
    when `out` is not new or empty, errors.RunFailure when the disk is full.
    """
    if not (low_level or high_level):
        raise ValueError("give at least one of the low-level and high-level exports")
    if pristine_folder and pristine_patches:
        raise ValueError("give a pristine image folder or a pristine patch file, not both")
    out = epath.Path(absolute(os.fspath(out)))  # Orbax wants absolute paths; gs:// too.
    check_paths(out, {"low_level": low_level, "high_level": high_level,
                      "pristine": pristine_folder, "pristine_patches": pristine_patches})
    _check_out_folder(out)
    description = {"format_version": model_folder.FORMAT_VERSION, "low_level": bool(low_level),
                   "high_level": bool(high_level), "regressor": False,
                   "zero_shot": {"patch_size": patch_size, "stride": patch_size // 2}}
    exports, stats = {}, None
    if high_level:  # Each export is checked as a model folder would be.
        tree, metadata, source = encoder_export.read_checked(high_level, "high_level")
        encoders.HighLevelEncoder.from_tree(tree, metadata, source=source)
        exports[model_folder.HIGH_LEVEL_DIR] = tree, metadata
    if low_level:
        tree, metadata, source = encoder_export.read_checked(low_level, "low_level")
        encoder = encoders.LowLevelEncoder.from_tree(tree, metadata, chunk=chunk,
                                                     source=source)
        exports[model_folder.LOW_LEVEL_DIR] = tree, metadata
        stats, description["pristine"] = _pristine_statistics(
            encoder, pristine_folder, pristine_patches, patch_size=patch_size, chunk=chunk)
        description["zero_shot"] = {"patch_size": stats.patch_size,
                                    "stride": stats.patch_size // 2}
    _write_folder(out, exports, stats, description)  # Only once all above has worked.
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
