"""Aligned spatial fragments (FAST-VQA's get_spatial_fragments, aligned = V).

A view is a grid x grid mosaic of patch x patch mini-patches, one taken from
each cell of a grid laid over the image, so it keeps native-resolution
texture (no resizing blur) while covering the whole frame. Cells are
`size // grid` long and start at `min(size // grid * i, size - patch)`; inside
a cell the patch sits at a random offset in [0, cell - patch) (0 when
cell <= patch), drawn per cell. Every version of a group is cut at the same
positions, so their views differ only by the distortion.

Images whose shorter side is under grid * patch are first upsampled
bilinearly by 1 / ratio, ratio = min(H, W) / (grid * patch), as the original.
Unlike FAST-VQA, which keeps using the pre-upsampling size for the cell
layout (and so samples only the top-left part of the upsampled frame), the
cells here are laid out over the upsampled image.
"""
import math

import numpy as np


def _linear_resize_axis(values: np.ndarray, axis: int, size: int,
                        ratio: float) -> np.ndarray:
    """Bilinear resampling of one axis, torch's align_corners=False rule.

    Output i reads input (i + 0.5) * ratio - 0.5, clamped to the image.
    """
    length = values.shape[axis]
    source = np.maximum((np.arange(size) + 0.5) * ratio - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(int), length - 1)
    high = np.minimum(low + 1, length - 1)
    weight_shape = [1] * values.ndim
    weight_shape[axis] = size
    weight = (source - low).reshape(weight_shape).astype(values.dtype)
    return ((1 - weight) * np.take(values, low, axis=axis)
            + weight * np.take(values, high, axis=axis))


def upsample_to_cover(versions: np.ndarray, side: int) -> np.ndarray:
    """Upsample (V, H, W, C) so that min(H, W) reaches `side`, if it is short.

    The scale is 1 / ratio, ratio = min(H / side, W / side); sizes are
    floor(H / ratio) and floor(W / ratio). Returns the input when it covers;
    uint8 input is resampled in float32 and rounded back to uint8.
    """
    height, width = versions.shape[1:3]
    ratio = min(height / side, width / side)
    if ratio >= 1:
        return versions
    # The epsilon keeps float rounding from landing a pixel short of `side`.
    new_height = int(math.floor(height / ratio + 1e-6))
    new_width = int(math.floor(width / ratio + 1e-6))
    values = (versions.astype(np.float32) if versions.dtype == np.uint8
              else versions)
    rows = _linear_resize_axis(values, 1, new_height, ratio)
    resized = _linear_resize_axis(rows, 2, new_width, ratio)
    if versions.dtype == np.uint8:
        return (np.clip(resized, 0, 255) + 0.5).astype(np.uint8)
    return resized


def _axis_origins(length: int, grid: int, patch: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: (grid,) cell starts and (grid, grid) patch offsets."""
    if length < patch:
        raise ValueError(f"image side {length} is shorter than the "
                         f"{patch} px patch")
    cell = length // grid
    starts = np.minimum(cell * np.arange(grid), length - patch)
    if cell > patch:
        offsets = rng.integers(0, cell - patch, size=(grid, grid))
    else:
        offsets = np.zeros((grid, grid), dtype=int)
    return starts, offsets


def fragment_origins(height: int, width: int, grid: int, patch: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixel (rows, cols), each (grid, grid), of every cell's patch.

    Cell (i, j) covers rows starting at start_row[i] and columns at
    start_col[j]; its offsets are drawn independently of the other cells'.
    """
    row_starts, row_offsets = _axis_origins(height, grid, patch, rng)
    col_starts, col_offsets = _axis_origins(width, grid, patch, rng)
    return row_starts[:, None] + row_offsets, col_starts[None, :] + col_offsets


def gather_fragments(versions: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                     patch: int) -> np.ndarray:
    """Stitch the patches at (rows, cols) of every version into one view each.

    Args:
        versions: (V, H, W, C).
        rows, cols: (grid, grid) top-left pixels from fragment_origins.
        patch: patch side in px.

    Returns:
        (V, grid * patch, grid * patch, C); patch (i, j) lands in tile (i, j).
    """
    grid = rows.shape[0]
    steps = np.arange(patch)
    patch_rows = rows[:, :, None, None] + steps[:, None]  # (g, g, p, 1)
    patch_cols = cols[:, :, None, None] + steps[None, :]  # (g, g, 1, p)
    tiles = versions[:, patch_rows, patch_cols]  # (V, g, g, p, p, C)
    count, channels = versions.shape[0], versions.shape[-1]
    return (tiles.transpose(0, 1, 3, 2, 4, 5)
            .reshape(count, grid * patch, grid * patch, channels))


def fragment_views(versions: np.ndarray, *, grid: int, patch: int,
                   rng: np.random.Generator) -> np.ndarray:
    """One aligned fragment view of every version of a group.

    Args:
        versions: (V, H, W, C) float or uint8, all the same size.
        grid, patch: cells per side and patch side in px.
        rng: draws the per-cell offsets, shared by all versions.

    Returns:
        (V, grid * patch, grid * patch, C), the input's dtype.
    """
    versions = upsample_to_cover(versions, grid * patch)
    rows, cols = fragment_origins(versions.shape[1], versions.shape[2], grid,
                                  patch, rng)
    return gather_fragments(versions, rows, cols, patch)


def random_flips(views: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip (V, S, S, C) left-right, then up-down, each with probability 0.5.

    One draw for the whole group, as torchvision's RandomHorizontalFlip and
    RandomVerticalFlip applied to the stacked versions.
    """
    if rng.random() < 0.5:
        views = views[:, :, ::-1]
    if rng.random() < 0.5:
        views = views[:, ::-1]
    return np.ascontiguousarray(views)
