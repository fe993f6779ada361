"""Zero-shot quality scores: the low-level Gaussian distance, the high-level
prompt margin, and their sum.

Matches the original GRepQ code:
- Evaluation/compute_statistical_deviation.py (NIQE.forward): d = sqrt(dmu^T
  ((S_r + S_t)/2 + 1e-3 I)^-1 dmu), with dmu = mu_r - mu_t;
- Evaluation/zeroshot_ll_model.py: low = 1 - sigmoid(d / 100), the test image
  cut at its own resolution into 96x96 patches at stride 48;
- Evaluation/zeroshot_hl_model.py: high = 1 / (1 + exp(10 (s_bad - s_good)))
  = sigmoid(10 (s_good - s_bad)), s = cosine similarity to the prompts
  ("A good photo.", "A bad photo.");
- test_zeroshot.py (zeroshot_eval): combined = high + low.
Scores are higher for better quality.
"""
import numpy as np

from grepq_jax.scoring.patches import iter_patch_chunks, patch_grid
from grepq_jax.scoring.pristine import FeaturesFn, PristineStatistics, features_in_chunks, fit_gaussian


def gaussian_distance(mu_r: np.ndarray, cov_r: np.ndarray, mu_t: np.ndarray,
                      cov_t: np.ndarray, ridge: float = 1e-3) -> float:
    """Distance between Gaussians (C,), (C, C) and (C,), (C, C), in float64.

    Uses a linear solve rather than the original's explicit inverse (same
    value, better conditioned).
    """
    diff = np.asarray(mu_r, np.float64) - np.asarray(mu_t, np.float64)
    pooled = (np.asarray(cov_r, np.float64) + np.asarray(cov_t, np.float64)) / 2
    pooled += ridge * np.eye(len(diff))
    return float(np.sqrt(diff @ np.linalg.solve(pooled, diff)))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))  # Overflow-free.


def low_level_score(distance, scale: float = 100.0):
    """1 - sigmoid(distance / scale): in (0, 0.5] for distance >= 0; any shape."""
    return 1.0 - _sigmoid(np.asarray(distance, np.float64) / scale)


def _unit(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def high_level_score(image_emb: np.ndarray, prompt_emb: np.ndarray,
                     scale: float = 10.0) -> np.ndarray:
    """sigmoid(scale * (s_good - s_bad)) per image -> (B,) float64.

    image_emb: (B, D); prompt_emb: (P, 2, D) with [p, 0] the good and [p, 1] the
    bad prompt of pair p. Embeddings need not be normalised (cosine). For
    P > 1 the margins s_good - s_bad are averaged over pairs BEFORE the
    sigmoid (P = 1 is exactly the original).
    """
    images = _unit(np.asarray(image_emb, np.float64))
    prompts = _unit(np.asarray(prompt_emb, np.float64))
    similarity = np.einsum("bd,pkd->bpk", images, prompts)
    margin = (similarity[..., 0] - similarity[..., 1]).mean(axis=1)
    return _sigmoid(scale * margin)


def combined_score(low, high):
    """low + high, as test_zeroshot.py combines them (unweighted sum)."""
    return np.asarray(low, np.float64) + np.asarray(high, np.float64)


def image_low_level_distance(image: np.ndarray, features_fn: FeaturesFn,
                             stats: PristineStatistics, *, patch_size: int = 96,
                             stride: int = 48, chunk: int = 64,
                             ridge: float = 1e-3) -> float:
    """Distance of one image from the pristine Gaussian.

    image: (H, W, 3) float in [0, 1], or pixels as `formats.images.read_pixels`
    gives them ((H, W, 3) uint8 or uint16, (H, W, 4) uint8 with alpha), each
    chunk of patches made float32 on its own (bit-identical to converting the
    whole image first, without its memory). The image is cut at its own
    resolution (no resize, remainder dropped) and `features_fn` sees at most
    `chunk` float32 patches at a time. Raises ValueError,
    naming the image size, when it yields fewer than 2 patches (too small for
    a covariance; the original fails there too) or when `patch_size` differs
    from the one the statistics were computed with.
    """
    if patch_size != stats.patch_size:
        raise ValueError(f"patch_size {patch_size} differs from the pristine "
                         f"statistics' {stats.patch_size}")
    height, width = image.shape[:2]
    rows, cols = patch_grid(height, width, patch_size, stride)
    if rows * cols < 2:
        raise ValueError(f"image of {height}x{width} (HxW) gives {rows * cols} "
                         f"patch of {patch_size}x{patch_size} at stride {stride}; "
                         "at least 2 are needed")
    features = features_in_chunks(
        iter_patch_chunks(np.asarray(image), patch_size, stride, chunk), features_fn)
    mu_t, cov_t = fit_gaussian(features)
    return gaussian_distance(stats.mu, stats.cov, mu_t, cov_t, ridge)


def image_low_level_score(image: np.ndarray, features_fn: FeaturesFn,
                          stats: PristineStatistics, *, patch_size: int = 96,
                          stride: int = 48, chunk: int = 64, ridge: float = 1e-3,
                          scale: float = 100.0) -> float:
    """low_level_score of `image_low_level_distance` (same arguments)."""
    distance = image_low_level_distance(image, features_fn, stats, patch_size=patch_size,
                                        stride=stride, chunk=chunk, ridge=ridge)
    return float(low_level_score(distance, scale))
