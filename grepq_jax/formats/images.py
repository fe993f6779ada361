"""Finding image files and reading them safely, as pixels or RGB float32 in [0, 1].

Conversions, so odd-but-valid files are used rather than dropped: grayscale
and bilevel images are replicated to RGB; palette images are expanded; CMYK
and YCbCr go through Pillow's conversion; 16-bit images keep their 16 bits
(scaled by 1/65535 when made float); an alpha channel (RGBA, LA, palette or
colour-key transparency) is composited over white, as a viewer shows the
image; EXIF orientation is applied. Anything else (floating-point or 32-bit
integer pixels out of the 16-bit range, undecodable, truncated, more pixels
than `max_pixels`, not a regular file) raises UnusableImageError, whose
message is the reason the caller reports.

`read_pixels` keeps an image in its stored integer depth (a quarter of the
memory of float32); `to_float` converts it, or any part of it (a patch, a
chunk of patches), to float32 with the same arithmetic, so a part converted
alone equals the same part of the whole image converted.
"""
import collections
import dataclasses
import errno
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

from absl import logging
import numpy as np
from PIL import Image, ImageOps

from grepq_jax import errors

# GIF: the first frame, as Pillow decodes it.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff",
                            ".webp", ".gif"})
# Pillow's own decompression-bomb limit (it refuses larger images outright):
# 178,956,970 px, e.g. 16,000 x 11,000.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class UnusableImageError(errors.InputError):
    """An image that cannot be used; the message says why."""


# Finding files --------------------------------------------------------------

@dataclasses.dataclass
class WalkSkips:
    """What a folder walk passed over, besides the files it yields.

    other_suffixes: suffix (lower case, "" for none) -> how many files;
    folder_links: links to folders, not followed (so no link loop can hang
    a walk); unlistable: (folder, reason) for folders that could not be read.
    """
    other_suffixes: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    folder_links: list[Path] = dataclasses.field(default_factory=list)
    unlistable: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> list[str]:
        """One line per kind of skip, naming links and folders; [] if none."""
        lines = []
        if self.other_suffixes:
            counts = ", ".join(f"{suffix or '(no suffix)'} {count}" for suffix, count
                               in sorted(self.other_suffixes.items()))
            lines.append(f"{sum(self.other_suffixes.values())} file(s) without an image "
                         f"suffix ({counts}); name a file to read it whatever its suffix")
        lines += [f"{path}: a link to a folder, not followed" for path in self.folder_links]
        lines += [f"{path}: cannot list this folder ({why})" for path, why in self.unlistable]
        return lines


def walk_image_files(folder: str | os.PathLike, skips: WalkSkips | None = None, *,
                     recursive: bool = True) -> Iterator[Path]:
    """Entries under `folder` with an image suffix (case-insensitive), lazily.

    Each folder's entries come sorted by name, its files before its
    subfolders (depth first). Entries that are not readable files (broken
    links, link loops, special files) are yielded too, for the reader to
    report; what is passed over is counted in `skips`.
    """
    skips = WalkSkips() if skips is None else skips
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            skips.unlistable.append((current, error.strerror or str(error)))
            continue
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
            elif entry.is_symlink() and _is_folder(entry.path):
                skips.folder_links.append(Path(entry.path))
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(entry.path)
            else:
                skips.other_suffixes[Path(entry.name).suffix.lower()] += 1
        if recursive:
            stack.extend(reversed(subfolders))


def _is_folder(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:  # A broken link or a link loop: reported when read.
        return False


def find_image_files(folder: str | os.PathLike, *,
                     recursive: bool = True) -> list[Path]:
    """The readable image files under `folder` (by suffix), sorted.

    Entries with an image suffix that are not regular files (broken links,
    link loops) are logged as warnings, each named, and left out, as are
    links to folders (not followed). Raises FileNotFoundError when `folder`
    is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist "
                                "or is not a folder")
    skips, found = WalkSkips(), []
    for path in walk_image_files(folder, skips, recursive=recursive):
        problem = file_problem(path)
        if problem:
            logging.warning("Skipping %s: %s", path, problem)
        else:
            found.append(path)
    for path in skips.folder_links:
        logging.warning("Skipping %s: a link to a folder, not followed", path)
    for path, why in skips.unlistable:
        logging.warning("Skipping %s: cannot list this folder (%s)", path, why)
    return sorted(found)


def file_problem(path: str | os.PathLike | bytes) -> str | None:
    """Why `path` is not a readable regular file, or None if it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ENOENT and os.path.islink(path):
            return "a broken symbolic link"
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"cannot open ({error.strerror or error})"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


# Reading pixels --------------------------------------------------------------

def check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    """UnusableImageError when width x height is above max_pixels."""
    if width * height > max_pixels:
        raise UnusableImageError(f"{width}x{height} px ({width * height:,} pixels) is "
                                 f"above the limit of max_pixels={max_pixels:,}")


def read_pixels(path: str | os.PathLike | bytes, *,
                max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A file's pixels, fully decoded now, in the file's own depth.

    Returns (H, W, 3) uint8 or uint16, or (H, W, 4) uint8 with straight alpha
    (`to_float` composites it over white). Grey images come as a read-only
    view repeating one plane. The size is checked against `max_pixels`
    before decoding. Raises UnusableImageError with the reason for anything
    else (not a regular file, zero bytes, not an image, truncated, too large).
    """
    problem = file_problem(path)
    if problem:
        raise UnusableImageError(problem)
    try:
        with warnings.catch_warnings():
            # max_pixels decides instead (Pillow warns from half its limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_pixel_count(*image.size, max_pixels)
                image.load()  # Decode everything now, so a truncated file fails.
                ImageOps.exif_transpose(image, in_place=True)
                return pil_to_pixels(image)
    except UnusableImageError:
        raise
    except Exception as error:  # Pillow raises many types on hostile files.
        raise UnusableImageError(
            f"cannot decode ({type(error).__name__}: {error})") from error


def grey_to_rgb(plane: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3), a read-only view (no copy)."""
    return np.broadcast_to(plane[..., None], plane.shape + (3,))


def pil_to_pixels(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> pixels as `read_pixels` returns them."""
    mode = image.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit) grey levels.
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnusableImageError(f"{mode} pixels outside the 16-bit range")
        return grey_to_rgb(values.astype(np.uint16))
    if mode == "F":
        raise UnusableImageError("floating-point pixels (mode F) have no "
                                 "agreed range")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))
    if mode in ("L", "1"):
        return grey_to_rgb(np.asarray(image.convert("L") if mode == "1" else image))
    return np.asarray(image if mode == "RGB" else image.convert("RGB"))


def to_float(pixels: np.ndarray) -> np.ndarray:
    """Pixels (..., 3) or (..., 4) with alpha -> (..., 3) float32 in [0, 1].

    uint8 is divided by 255, uint16 by 65535; floating point is taken as
    [0, 1] already. Alpha is composited over white. Elementwise, so any
    slice converts exactly as in the whole.
    """
    if pixels.dtype == np.uint8:
        values = pixels.astype(np.float32)
        values /= 255
    elif pixels.dtype == np.uint16:
        values = pixels.astype(np.float32)
        values /= 65535
    elif np.issubdtype(pixels.dtype, np.floating):
        values = pixels.astype(np.float32, copy=False)
    else:
        raise TypeError(f"expected uint8, uint16 or float pixels, got {pixels.dtype}")
    if values.shape[-1] == 4:
        alpha = values[..., 3:]
        return values[..., :3] * alpha + (1 - alpha)  # Over white.
    return values


def pixels_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> (H, W, 3) float32 in [0, 1]."""
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return to_float(grey_to_rgb(pixels) if pixels.ndim == 2 else pixels)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8, rounded to the nearest of 256 levels.

    Raises UnusableImageError on NaN or infinite values rather than casting
    them to arbitrary levels.
    """
    if not np.isfinite(pixels).all():
        raise UnusableImageError("pixels are not finite")
    return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> (H, W, 3) float32 in [0, 1]."""
    return to_float(pil_to_pixels(image))


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A file's pixels as (H, W, 3) float32 in [0, 1], fully decoded now.

    `to_float(read_pixels(path))`; raises UnusableImageError with the reason.
    """
    return to_float(read_pixels(path, max_pixels=max_pixels))


def limit_longer_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (H, W, C) with an area (box) filter so max(H, W) <= max_side.

    max_side = 0 means no limit. Returns the input itself when it fits.
    """
    height, width = image.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))
                         .resize(size, Image.Resampling.BOX))
              for c in range(image.shape[-1])]
    return np.clip(np.stack(planes, -1), 0, 1).astype(np.float32)


def fit_size(image: np.ndarray, *, min_side: int, max_side: int) -> np.ndarray:
    """limit_longer_side, then UnusableImageError if the shorter side < min_side."""
    image = limit_longer_side(image, max_side)
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        raise UnusableImageError(f"{width}x{height} px is smaller than "
                                 f"min_side={min_side}")
    return image


def load_image(path: str | os.PathLike, *, min_side: int,
               max_side: int) -> np.ndarray:
    """read_image, then fit_size: (H, W, 3) float32 in [0, 1].

    Raises UnusableImageError with the reason.
    """
    return fit_size(read_image(path), min_side=min_side, max_side=max_side)
