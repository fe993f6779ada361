"""Cutting an image into square patches, row by row, as GRepQ's code does
(`unfold`): pristine images at stride = size, scored images at size / 2.
The remainder at the right and bottom edges is dropped.
"""
from collections.abc import Iterator

import numpy as np


def patch_grid(height: int, width: int, size: int, stride: int) -> tuple[int, int]:
    """(rows, cols) of `size` patches at `stride` that fit, remainder dropped.

    Raises ValueError naming the image size when not even one patch fits.
    """
    if height < size or width < size:
        raise ValueError(f"image of {height}x{width} (HxW) is smaller than one "
                         f"{size}x{size} patch")
    return (height - size) // stride + 1, (width - size) // stride + 1


def _patch_windows(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """A view (rows, cols, size, size, C) of `image` (H, W, C); nothing copied."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))
    return np.moveaxis(windows[::stride, ::stride], 2, -1)


def iter_patch_chunks(image: np.ndarray, size: int, stride: int,
                      chunk: int) -> Iterator[np.ndarray]:
    """Patches of `image` (H, W, C), row by row, at most `chunk` at a time.

    Yields (k <= chunk, size, size, C) copies, so only one chunk of patches is
    ever in memory however large the image.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    rows, cols = patch_grid(image.shape[0], image.shape[1], size, stride)
    windows = _patch_windows(image, size, stride)
    for start in range(0, rows * cols, chunk):
        flat = np.arange(start, min(start + chunk, rows * cols))
        yield windows[flat // cols, flat % cols]


def cut_patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """All patches of `image` (H, W, C) -> (rows * cols, size, size, C), row by row.

    Patch k has its top-left corner at (stride * (k // cols), stride * (k % cols)).
    """
    rows, cols = patch_grid(image.shape[0], image.shape[1], size, stride)
    return next(iter_patch_chunks(image, size, stride, rows * cols))
