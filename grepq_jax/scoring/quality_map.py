"""Where an image looks damaged to the low-level encoder: a map of each
patch's distance to the pristine Gaussian, and a PNG of it over the image.

The zero-shot score compares two Gaussians (the image's patches against the
pristine ones). A single patch has no covariance of its own, so its distance
weighs its difference from the pristine mean by the pristine covariance alone,
with the same ridge as the score: sqrt(d^T (S_r + ridge I)^-1 d), d = f - mu_r
(a Mahalanobis distance). Larger is worse.
"""
import numpy as np

from grepq_jax.scoring.patches import iter_patch_chunks, patch_grid
from grepq_jax.scoring.pristine import FeaturesFn, PristineStatistics, features_in_chunks


def patch_distances(image: np.ndarray, features_fn: FeaturesFn, stats: PristineStatistics,
                    *, stride: int, chunk: int = 64, ridge: float = 1e-3) -> np.ndarray:
    """(rows, cols) float64: each patch's distance to the pristine Gaussian.

    image: pixels as the zero-shot score takes them ((H, W, 3) float in [0, 1],
    or uint8/uint16 as `formats.images.read_pixels` gives them), cut into
    `stats.patch_size` patches at `stride`, row by row, remainder dropped.
    """
    rows, cols = patch_grid(image.shape[0], image.shape[1], stats.patch_size, stride)
    features = features_in_chunks(
        iter_patch_chunks(np.asarray(image), stats.patch_size, stride, chunk), features_fn)
    diff = features.astype(np.float64) - np.asarray(stats.mu, np.float64)
    cov = np.asarray(stats.cov, np.float64) + ridge * np.eye(diff.shape[1])
    weighted = np.linalg.solve(cov, diff.T).T
    return np.sqrt(np.einsum("nc,nc->n", diff, weighted)).reshape(rows, cols)


def pixel_map(distances: np.ndarray, height: int, width: int, *, size: int,
              stride: int) -> np.ndarray:
    """(height, width) float64: at each pixel, the mean distance of the patches
    that cover it; NaN where none does (the dropped right and bottom edges)."""
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for row, col in np.ndindex(distances.shape):
        window = (slice(row * stride, row * stride + size),
                  slice(col * stride, col * stride + size))
        total[window] += distances[row, col]
        count[window] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def write_map_png(path, image: np.ndarray, distance_map: np.ndarray, title: str) -> None:
    """A PNG: the image, and beside it the map with a colour bar.

    image: (H, W, 3) pixels (any of the forms `patch_distances` takes);
    distance_map: (H, W), NaN where no patch lies (drawn blank).
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")  # No screen needed; chosen before pyplot loads.
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    pixels = np.asarray(image)
    if np.issubdtype(pixels.dtype, np.integer):
        pixels = pixels[..., :3] / np.iinfo(pixels.dtype).max
    height, width = distance_map.shape
    figure, (left, right) = pyplot.subplots(
        1, 2, figsize=(10, 5 * height / width + 0.8), constrained_layout=True)
    try:
        left.imshow(np.clip(pixels[..., :3], 0, 1))
        left.set_title(title, fontsize=9)
        shown = right.imshow(distance_map, cmap="magma")
        right.set_title("patch distance to pristine (higher is worse)", fontsize=9)
        for axes in (left, right):
            axes.set_axis_off()
        figure.colorbar(shown, ax=right, shrink=0.8)
        figure.savefig(path, dpi=100)
    finally:
        pyplot.close(figure)
