"""Pristine patches and their Gaussian statistics, for the zero-shot low-level score.

Matches the original GRepQ code, Evaluation/zeroshot_ll_model.py
(`pristine`, `select_patches`, `select_colorful_patches`) and
Evaluation/compute_statistical_deviation.py (`NIQE.batch_covariance`):

- Pristine images are cut into NON-overlapping patches (`unfold(2, ps, ps)`,
  stride = patch size); a test image into patches with stride patch/2
  (`unfold(-3, ps, int(ps/2))`). Both drop the remainder at the right and
  bottom edges, and both order patches row by row.
- Selection is PER IMAGE and SEQUENTIAL: within one image, keep patches whose
  sharpness is strictly above `sharpness_fraction` x the image's sharpest
  patch; then, among those survivors only, keep patches whose colourfulness
  is strictly above `colourfulness_fraction` x the most colourful survivor.
- Covariance is np.cov(rowvar=False, ddof=1) (`bias=False`).

Pixel values are float in [0, 1] (torchvision's ToTensor), shape
(..., H, W, 3) channels-last; a scored image may also be held as uint8 or
uint16 pixels (`formats.images.read_pixels`), each chunk of its patches made
float on its own.
"""
import dataclasses
import pathlib
import re
from collections.abc import Callable, Iterable

import numpy as np

from grepq_jax.formats import images
from grepq_jax.scoring.patches import cut_patches

FeaturesFn = Callable[[np.ndarray], np.ndarray]
"""(N, P, P, 3) float32 in [0, 1] -> (N, C) features (NumPy or JAX array)."""

# torchvision.transforms.Grayscale (ITU-R 601-2 luma, as rgb_to_grayscale).
_GREY_WEIGHTS = np.array([0.2989, 0.587, 0.114])
# zeroshot_ll_model.select_patches: a 7x7 Gaussian window, sigma 7/6.
_SHARPNESS_WINDOW = 7
_SHARPNESS_SIGMA = 7.0 / 6.0


def _zero_padded_gaussian_blur(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H, W): F.conv2d with the 7x7 Gaussian, zero padding 3.

    The normalised 2-D kernel is the outer product of a normalised 1-D one, so
    the blur is applied as two 1-D passes.
    """
    half = _SHARPNESS_WINDOW // 2
    coords = np.arange(_SHARPNESS_WINDOW) - half
    kernel = np.exp(-coords**2 / (2 * _SHARPNESS_SIGMA**2))
    kernel /= kernel.sum()
    out = images
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (half, half)
        padded = np.pad(out, pad)
        length = out.shape[axis]
        out = sum(weight * np.take(padded, np.arange(k, k + length), axis=axis)
                  for k, weight in enumerate(kernel))
    return out


def patch_sharpness(patches: np.ndarray) -> np.ndarray:
    """Sum of the local standard-deviation map: (N, P, P, 3) in [0, 1] -> (N,).

    As zeroshot_ll_model.select_patches: grey = Grayscale(patch); sigma =
    sqrt(|G*grey^2 - (G*grey)^2|) with G the 7x7 Gaussian (sigma 7/6) and zero
    padding (so patch borders contribute); sharpness = sum(sigma). No MSCN
    normalisation. Computed in float64.
    """
    grey = np.asarray(patches, np.float64) @ _GREY_WEIGHTS
    mean = _zero_padded_gaussian_blur(grey)
    mean_of_square = _zero_padded_gaussian_blur(grey**2)
    return np.sqrt(np.abs(mean_of_square - mean**2)).sum(axis=(1, 2))


def patch_colourfulness(patches: np.ndarray) -> np.ndarray:
    """Colourfulness as the original computes it: (N, P, P, 3) in [0, 1] -> (N,).

    As zeroshot_ll_model.select_colorful_patches, a variant of Hasler and
    Suesstrunk's: rg = |R - G|, yb = |(R + G)/2 - B| (absolute values), std
    with ddof=1 (torch.std), and sqrt(std_rg^2 + std_yb^2) +
    sqrt(mean_rg^2 + mean_yb^2) (no 0.3 weight on the mean term).
    """
    patches = np.asarray(patches, np.float64)
    red, green, blue = patches[..., 0], patches[..., 1], patches[..., 2]
    rg = np.abs(red - green).reshape(len(patches), -1)
    yb = np.abs(0.5 * (red + green) - blue).reshape(len(patches), -1)
    spread = np.hypot(rg.std(axis=1, ddof=1), yb.std(axis=1, ddof=1))
    return spread + np.hypot(rg.mean(axis=1), yb.mean(axis=1))


def select_pristine_patches(patches: np.ndarray, *, sharpness_fraction: float = 0.75,
                            colourfulness_fraction: float = 0.8) -> np.ndarray:
    """Which of ONE image's patches (N, P, P, 3) are pristine -> (N,) bool.

    Thresholds are relative to the maxima within this image, and the
    colourfulness maximum is taken over the sharpness survivors only, as the
    original applies select_colorful_patches(select_patches(x)). Comparisons
    are strict (`>`), so an all-flat image keeps nothing.
    """
    sharpness = patch_sharpness(patches)
    sharp = sharpness > sharpness_fraction * sharpness.max()
    if not sharp.any():
        return sharp
    colourfulness = np.full(len(patches), -np.inf)
    colourfulness[sharp] = patch_colourfulness(patches[sharp])
    return sharp & (colourfulness > colourfulness_fraction * colourfulness[sharp].max())


def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (C,) and covariance (C, C) of features (N, C), float64, ddof=1."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError("fitting a Gaussian needs features (N >= 2, C), "
                         f"got shape {features.shape}")
    mean = features.mean(axis=0)
    centred = features - mean
    return mean, centred.T @ centred / (len(features) - 1)


def features_in_chunks(chunks: Iterable[np.ndarray], features_fn: FeaturesFn) -> np.ndarray:
    """Concatenated `features_fn(chunk)` over patch chunks -> (N, C) float32.

    Each chunk is made float32 in [0, 1] on its own (`images.to_float`), so
    an image may be held as uint8 and only one chunk is ever float.

    Raises ValueError when `features_fn` does not return one row per patch.
    """
    outputs = []
    for patches in chunks:
        features = np.asarray(features_fn(images.to_float(patches)), np.float32)
        if features.ndim != 2 or len(features) != len(patches):
            raise ValueError(f"features_fn must map ({len(patches)}, P, P, 3) patches "
                             f"to ({len(patches)}, C) features, got {features.shape}")
        outputs.append(features)
    return np.concatenate(outputs)


@dataclasses.dataclass(frozen=True)
class PristineStatistics:
    """The pristine Gaussian and the settings it was computed with.

    mu: (C,) float64 mean; cov: (C, C) float64 covariance; num_patches: how
    many patches it was fitted to; patch_size in pixels; the two selection
    fractions.
    """
    mu: np.ndarray
    cov: np.ndarray
    num_patches: int
    patch_size: int
    sharpness_fraction: float
    colourfulness_fraction: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (e.g. for np.savez); inverse of `from_arrays`."""
        return {field.name: np.asarray(getattr(self, field.name))
                for field in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays) -> "PristineStatistics":
        """From `to_arrays()` output or an np.load of it, checked.

        Raises ValueError naming the key when one is missing, of the wrong
        shape or type, or not finite, when cov is not a symmetric (C, C)
        matrix, num_patches < 2, patch_size < 1 or a fraction outside [0, 1].
        """
        mu, cov = _stored(arrays, "mu", np.floating), _stored(arrays, "cov", np.floating)
        if mu.ndim != 1 or not len(mu):
            raise ValueError(f"mu must be a (C,) vector, got shape {list(mu.shape)}")
        if cov.shape != (len(mu), len(mu)):
            raise ValueError(f"cov must be ({len(mu)}, {len(mu)}) like mu, got shape "
                             f"{list(cov.shape)}")
        if np.abs(cov - cov.T).max() > 1e-9 * np.abs(cov).max():
            raise ValueError("cov is not symmetric")
        num_patches = int(_stored(arrays, "num_patches", np.integer, scalar=True))
        patch_size = int(_stored(arrays, "patch_size", np.integer, scalar=True))
        if num_patches < 2 or patch_size < 1:
            raise ValueError(f"num_patches must be >= 2 and patch_size >= 1, got "
                             f"{num_patches} and {patch_size}")
        fractions = {key: float(_stored(arrays, key, np.floating, scalar=True))
                     for key in ("sharpness_fraction", "colourfulness_fraction")}
        for key, value in fractions.items():
            if not 0 <= value <= 1:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        return cls(mu=mu.astype(np.float64), cov=cov.astype(np.float64),
                   num_patches=num_patches, patch_size=patch_size, **fractions)


def _stored(arrays, key: str, kind, *, scalar: bool = False) -> np.ndarray:
    """arrays[key], numeric of `kind` (np.floating also takes integers), finite."""
    if key not in arrays:
        raise ValueError(f"no array {key!r}")
    value = np.asarray(arrays[key])
    kinds = (np.floating, np.integer) if kind is np.floating else (kind,)
    if not any(np.issubdtype(value.dtype, k) for k in kinds) or (scalar and value.ndim):
        raise ValueError(f"{key} must be {'a scalar' if scalar else 'an array'} of "
                         f"{kind.__name__}, got {value.dtype} of shape {list(value.shape)}")
    if not np.isfinite(value).all():
        raise ValueError(f"{key} holds NaN or infinite values")
    return value


def pristine_statistics(images: Iterable[np.ndarray], features_fn: FeaturesFn, *,
                        patch_size: int = 96, sharpness_fraction: float = 0.75,
                        colourfulness_fraction: float = 0.8,
                        chunk: int = 64) -> PristineStatistics:
    """The Gaussian of `features_fn` over the pristine patches of `images`.

    images: (H, W, 3) float in [0, 1], each cut into non-overlapping
    `patch_size` patches and selected on its own (see the module docstring);
    features_fn is called on at most `chunk` patches at a time. The original's
    random shuffle of each image's patches is omitted: it changes no statistic.
    Compute this once and store it (`to_arrays`), not per scored image.
    """
    features = []
    for image in images:
        patches = cut_patches(np.asarray(image), patch_size, patch_size)
        kept = patches[select_pristine_patches(
            patches, sharpness_fraction=sharpness_fraction,
            colourfulness_fraction=colourfulness_fraction)]
        if len(kept):
            features.append(features_in_chunks(
                (kept[i:i + chunk] for i in range(0, len(kept), chunk)), features_fn))
    if not features:
        raise ValueError("no pristine patches were selected: the images are empty "
                         "or have no texture at all")
    features = np.concatenate(features)
    mu, cov = fit_gaussian(features)
    return PristineStatistics(mu=mu, cov=cov, num_patches=len(features),
                              patch_size=patch_size,
                              sharpness_fraction=sharpness_fraction,
                              colourfulness_fraction=colourfulness_fraction)


# The original's patch file: pristine_patches_%03d_%0.2f_%0.2f.hdf5 % (patch
# size, sharpness, colourfulness), one float32 dataset "data" of the selected
# patches, (N, 3, P, P) as ToTensor gives them, in [0, 1].
PATCH_FILE_DATASET = "data"
_PATCH_FILE_NAME = re.compile(r"pristine_patches_(\d+)_([\d.]+)_([\d.]+)\.hdf5$")
ORIGINAL_FRACTIONS = (0.75, 0.8)  # test_zeroshot.py's defaults


def _patch_file_fractions(path: pathlib.Path, patch_size: int) -> tuple[float, float]:
    """The selection fractions the file's name states (the original's defaults
    for another name); ValueError when its stated patch size is not the data's."""
    match = _PATCH_FILE_NAME.search(path.name)
    if not match:
        return ORIGINAL_FRACTIONS
    if int(match[1]) != patch_size:
        raise ValueError(f"{path}: the name says {int(match[1])} px patches, "
                         f"{PATCH_FILE_DATASET!r} holds {patch_size} px ones")
    return float(match[2]), float(match[3])


def patch_file_statistics(path, features_fn: FeaturesFn, *,
                          chunk: int = 64) -> PristineStatistics:
    """The Gaussian of `features_fn` over the ORIGINAL's selected pristine patches.

    path: the original's `pristine_patches_096_0.75_0.80.hdf5` (layout above;
    read with h5py, `chunk` patches at a time, so a large file is never held
    whole). The patches are used as stored: the file holds them already
    selected. Raises ValueError naming the file and the dataset when it is
    not such a file (missing dataset, wrong shape or type, values outside [0,
    1] or not finite, fewer than 2 patches); ImportError without h5py.
    """
    try:
        import h5py
    except ImportError:
        raise ImportError("reading the original's pristine patch file needs h5py: "
                          "pip install h5py") from None
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not an HDF5 file ({error})") from None
    with file:
        data = file.get(PATCH_FILE_DATASET)
        where = f"{path}: dataset {PATCH_FILE_DATASET!r}"
        if not isinstance(data, h5py.Dataset):
            raise ValueError(f"{where} is missing")
        shape = data.shape
        if (len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[0] < 2
                or not np.issubdtype(data.dtype, np.floating)):
            raise ValueError(f"{where} must be (N >= 2, 3, P, P) float patches, got "
                             f"{data.dtype} of shape {list(shape)}")
        fractions = _patch_file_fractions(path, shape[2])

        def chunks():
            for start in range(0, shape[0], chunk):
                patches = np.asarray(data[start:start + chunk], np.float32)
                if not (np.isfinite(patches).all() and patches.min() >= 0
                        and patches.max() <= 1):
                    raise ValueError(f"{where}: patches {start} to {start + len(patches) - 1}"
                                     " hold values outside [0, 1] (or NaN)")
                yield np.moveaxis(patches, 1, -1)  # NCHW -> NHWC

        features = features_in_chunks(chunks(), features_fn)
    mu, cov = fit_gaussian(features)
    return PristineStatistics(mu=mu, cov=cov, num_patches=len(features),
                              patch_size=shape[2], sharpness_fraction=fractions[0],
                              colourfulness_fraction=fractions[1])
