"""Finding image files and reading them safely as RGB float32 in [0, 1].

Conversions, so odd-but-valid files are used rather than dropped: grayscale
and bilevel images are replicated to RGB; palette images are expanded; CMYK
and YCbCr go through Pillow's conversion; 16-bit images are scaled by 1/65535;
an alpha channel (RGBA, LA, palette or colour-key transparency) is
composited over white, as a viewer shows the image; EXIF orientation is
applied. Anything else (floating-point or 32-bit integer pixels out of the
16-bit range, undecodable, truncated, too small) raises UnusableImageError,
whose message is the reason the caller reports.
"""
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff",
                            ".webp"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class UnusableImageError(ValueError):
    """An image that cannot be used; the message says why."""


def find_image_files(folder: str | os.PathLike, *,
                     recursive: bool = True) -> list[Path]:
    """Image files under `folder` by suffix (case-insensitive), sorted.

    Symbolic links to folders are not followed, so a link loop cannot hang the
    scan. Raises FileNotFoundError when `folder` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist "
                                "or is not a folder")
    if recursive:
        found = [Path(root, name) for root, _, names in os.walk(folder)
                 for name in names]
    else:
        found = [path for path in folder.iterdir() if path.is_file()]
    return sorted(path for path in found
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


def pixels_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> (H, W, 3) float32 in [0, 1]."""
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels.astype(np.float32) / 255


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
    mode = image.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit) grey levels.
        values = np.asarray(image).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnusableImageError(f"{mode} pixels outside the 16-bit range")
        return np.repeat((values / 65535)[..., None], 3, -1).astype(np.float32)
    if mode == "F":
        raise UnusableImageError("floating-point pixels (mode F) have no "
                                 "agreed range")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), np.float32) / 255
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1 - alpha)  # Over white.
    return np.asarray(image.convert("RGB"), np.float32) / 255


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A file's pixels as (H, W, 3) float32 in [0, 1], fully decoded now.

    Raises UnusableImageError with the reason for any file Pillow cannot open
    or decode completely (zero bytes, not an image, truncated, too large).
    """
    try:
        with Image.open(path) as image:
            image.load()  # Decode everything now, so a truncated file fails.
            return pil_to_rgb(ImageOps.exif_transpose(image))
    except UnusableImageError:
        raise
    except Exception as error:  # Pillow raises many types on hostile files.
        raise UnusableImageError(
            f"cannot decode ({type(error).__name__}: {error})") from error


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
