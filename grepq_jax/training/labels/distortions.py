"""Synthetic distortions: a registry of named functions and the sets drawn from it.

Every distortion is `fn(image, level, rng) -> image`: `image` is (H, W, 3)
float32 in [0, 1], `level` an int severity in 1..5 (KADID-10k's five levels,
1 the mildest), and `rng` a `np.random.Generator`, the only source of
randomness, so a version is a pure function of the generator's seed. The
output has the input's shape, is float32 and clipped to [0, 1]; the input is
never modified.

Parameter tables are KADID-10k's (Lin, Hosu, Saupe, QoMEX 2019), in the form
ARNIQA's Python port lists them, except where a KADID value would leave the
image unchanged; each such change is noted. Chroma and luminance operations
use full-range BT.601 YCbCr rather than KADID's CIELAB: the same kind of
change, cheaper, and free of out-of-gamut warnings.

KADID-10k's 25 types, by family, are all here except "denoise" (it needs a
trained denoising CNN). `DISTORTION_SETS["kadid"]` holds every implemented type
at all five levels (121 versions a group, reference included).

The default set, "livefb", stands in for the paper's synthetic LIVE-FB set:
the original repository's data reader states "4 distortion types of 2 levels
each", but neither it nor the text available to us names the types. We take
the four classic synthetic types of LIVE and CSIQ, each a different way to
lose quality: Gaussian blur (lost high frequencies), white Gaussian noise
(added energy), JPEG through a real codec (blocking and ringing) and contrast
reduction (a global tone change), at levels 2 and 4 (moderate, strong): far
enough apart for FSIM to rank them, neither invisible nor destroyed.
"""
import io
from typing import Callable

import numpy as np
from PIL import Image, features
from scipy import ndimage, signal

from grepq_jax.formats import images

Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

NUM_LEVELS = 5

# Full-range BT.601 RGB -> (Y, Cb, Cr), with Cb and Cr centred on 0.
_RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                          [-0.168736, -0.331264, 0.5],
                          [0.5, -0.418688, -0.081312]])
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)


def _parameter(table: tuple, level: int):
    """The entry of a five-level parameter table for a 1-based `level`."""
    if not 1 <= level <= len(table):
        raise ValueError(f"distortion level must be in 1..{len(table)}, "
                         f"got {level!r}")
    return table[level - 1]


def _finish(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _to_ycbcr(image: np.ndarray) -> np.ndarray:
    return image @ _RGB_TO_YCBCR.T


def _from_ycbcr(ycbcr: np.ndarray) -> np.ndarray:
    return ycbcr @ _YCBCR_TO_RGB.T


def _luma(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) BT.601 luma."""
    return image @ _RGB_TO_YCBCR[0][:, None]


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel of (H, W, C) convolved with an odd (k, k) kernel.

    Borders replicate, as KADID's imfilter(..., 'replicate'); FFT because the
    blur kernels reach 21 x 21 taps.
    """
    pad = kernel.shape[0] // 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return signal.fftconvolve(padded, kernel[:, :, None], mode="valid",
                              axes=(0, 1))


def _codec_round_trip(image: np.ndarray, format: str, **options) -> np.ndarray:
    """Encode as 8-bit RGB with Pillow's codec, decode back to float."""
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"), np.float32) / 255


def _tone_curve(image: np.ndarray, midpoint: float) -> np.ndarray:
    """The parabola through (0, 0), (0.5, midpoint), (1, 1).

    MATLAB's spline through three points, as KADID's brighten and darken use.
    """
    a = 2 - 4 * midpoint
    return a * image ** 2 + (1 - a) * image


# Blurs ----------------------------------------------------------------------

def gaussian_blur(image, level, rng):
    """Gaussian blur, sigma 0.1 to 5 px (2 * ceil(2 sigma) + 1 taps)."""
    sigma = _parameter((0.1, 0.5, 1.0, 2.0, 5.0), level)
    radius = int(np.ceil(2 * sigma))
    return _finish(ndimage.gaussian_filter(
        image, sigma=(sigma, sigma, 0), mode="nearest", radius=(radius, radius, 0)))


def _disk_kernel(radius: float) -> np.ndarray:
    """Pillbox of `radius` px, pixel coverage by 8 x 8 supersampling."""
    size = 2 * int(np.ceil(radius)) + 1
    fine = (np.arange(size * 8) + 0.5) / 8 - size / 2
    inside = fine[:, None] ** 2 + fine[None, :] ** 2 <= radius ** 2
    kernel = inside.reshape(size, 8, size, 8).mean(axis=(1, 3))
    return kernel / kernel.sum()


def lens_blur(image, level, rng):
    """Defocus: a pillbox of radius 1 to 8 px."""
    radius = _parameter((1, 2, 4, 6, 8), level)
    return _finish(_convolve(image, _disk_kernel(radius)))


def _line_kernel(length: int, angle: float) -> np.ndarray:
    """A `length`-px line through the centre at `angle` rad, bilinearly drawn."""
    kernel = np.zeros((length, length))
    centre = (length - 1) / 2
    along = np.linspace(-centre, centre, 8 * length)
    rows = centre - along * np.sin(angle)
    cols = centre + along * np.cos(angle)
    row0, col0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    row_frac, col_frac = rows - row0, cols - col0
    for d_row, d_col, weight in ((0, 0, (1 - row_frac) * (1 - col_frac)),
                                 (1, 0, row_frac * (1 - col_frac)),
                                 (0, 1, (1 - row_frac) * col_frac),
                                 (1, 1, row_frac * col_frac)):
        np.add.at(kernel, (np.minimum(row0 + d_row, length - 1),
                           np.minimum(col0 + d_col, length - 1)), weight)
    return kernel / kernel.sum()


def motion_blur(image, level, rng):
    """Linear motion at a random angle over 2 r + 1 px, r = 1 to 10.

    KADID's radius r is read as the half-length: fspecial('motion', 1) would
    be the identity.
    """
    radius = _parameter((1, 2, 4, 6, 10), level)
    kernel = _line_kernel(2 * radius + 1, rng.uniform(0, np.pi))
    return _finish(_convolve(image, kernel))


# Colour distortions -----------------------------------------------------------

def color_diffusion(image, level, rng):
    """Colour bleeding: the chroma planes blurred, sigma 1 to 12 px."""
    sigma = _parameter((1, 3, 6, 8, 12), level)
    ycbcr = _to_ycbcr(image)
    ycbcr[..., 1:] = ndimage.gaussian_filter(ycbcr[..., 1:], (sigma, sigma, 0),
                                             mode="nearest")
    return _finish(_from_ycbcr(ycbcr))


def color_shift(image, level, rng):
    """Green plane shifted 1 to 12 px in a random direction, along edges.

    As KADID: the shifted plane is blended in with the image's normalised,
    smoothed gradient magnitude as weight, so flat areas stay put.
    """
    amount = _parameter((1, 3, 6, 8, 12), level)
    grad_rows, grad_cols = np.gradient(_luma(image)[..., 0])
    edges = ndimage.gaussian_filter(np.hypot(grad_rows, grad_cols), 4.0,
                                    mode="nearest")
    span = edges.max() - edges.min()
    edges = (edges - edges.min()) / span if span > 0 else np.zeros_like(edges)
    direction = rng.normal(size=2)
    shift = np.round(direction / max(np.linalg.norm(direction), 1e-12) * amount)
    green = image[..., 1]
    shifted = ndimage.shift(green, shift, order=0, mode="nearest")
    out = image.copy()
    out[..., 1] = edges * shifted + (1 - edges) * green
    return _finish(out)


def color_quantization(image, level, rng):
    """Palette of 64 down to 8 colours (median cut), Floyd-Steinberg dithered."""
    colors = _parameter((64, 48, 32, 16, 8), level)
    pixels = np.round(image * 255).astype(np.uint8)
    quantized = Image.fromarray(pixels).quantize(
        colors, method=Image.Quantize.MEDIANCUT,
        dither=Image.Dither.FLOYDSTEINBERG)
    return _finish(np.asarray(quantized.convert("RGB"), np.float32) / 255)


def color_desaturation(image, level, rng):
    """KADID "colour saturation 1": chroma scaled by 0.4 down to -0.4.

    Scaled about the luma; the last level inverts the hues.
    """
    factor = _parameter((0.4, 0.2, 0.1, 0.0, -0.4), level)
    luma = _luma(image)
    return _finish(luma + factor * (image - luma))


def color_oversaturation(image, level, rng):
    """KADID "colour saturation 2": chroma scaled by 1.5 up to 9.

    KADID's first factor, 1, is the identity; 1.5 replaces it.
    """
    factor = _parameter((1.5, 2.0, 3.0, 6.0, 9.0), level)
    ycbcr = _to_ycbcr(image)
    ycbcr[..., 1:] *= factor
    return _finish(_from_ycbcr(ycbcr))


# Compression -----------------------------------------------------------------

def jpeg(image, level, rng):
    """JPEG through Pillow's libjpeg, quality 43 down to 4."""
    quality = _parameter((43, 36, 24, 7, 4), level)
    return _finish(_codec_round_trip(image, "JPEG", quality=quality))


def jpeg2000(image, level, rng):
    """JPEG 2000 through Pillow's OpenJPEG, compression ratio 16 up to 170."""
    ratio = _parameter((16, 32, 45, 120, 170), level)
    if not features.check("jpg_2000"):
        raise RuntimeError("the jpeg2000 distortion needs Pillow built with "
                           "OpenJPEG (PIL.features.check('jpg_2000') is False)")
    return _finish(_codec_round_trip(image, "JPEG2000", quality_mode="rates",
                                     quality_layers=[ratio]))


# Noise -----------------------------------------------------------------------

def white_noise(image, level, rng):
    """Additive white Gaussian noise, variance 0.001 to 0.01."""
    variance = _parameter((0.001, 0.002, 0.003, 0.005, 0.01), level)
    # rng.normal(0, s) is s * standard_normal() from the same stream, made
    # faster this way; in place on the float64 noise, the values of
    # image + noise in fewer passes.
    noisy = rng.standard_normal(image.shape)
    noisy *= np.sqrt(variance)
    noisy += image
    return np.clip(noisy, 0.0, 1.0, out=noisy).astype(np.float32)


def white_noise_color(image, level, rng):
    """White Gaussian noise added in YCbCr, variance 0.0001 to 0.003."""
    variance = _parameter((0.0001, 0.0005, 0.001, 0.002, 0.003), level)
    noisy = _to_ycbcr(image) + rng.normal(0, np.sqrt(variance), image.shape)
    return _finish(_from_ycbcr(noisy))


def impulse_noise(image, level, rng):
    """Salt and pepper on a fraction 0.001 to 0.03 of the samples."""
    density = _parameter((0.001, 0.005, 0.01, 0.02, 0.03), level)
    hit = rng.random(image.shape) < density
    salt = rng.random(image.shape) < 0.5
    return _finish(np.where(hit, salt.astype(np.float32), image))


def multiplicative_noise(image, level, rng):
    """Speckle: x + x * n, n Gaussian of variance 0.001 to 0.05."""
    variance = _parameter((0.001, 0.005, 0.01, 0.02, 0.05), level)
    return _finish(image * (1 + rng.normal(0, np.sqrt(variance), image.shape)))


# Brightness change -------------------------------------------------------------

def brighten(image, level, rng):
    """Tone curve lifting mid-grey by 0.05 to 0.55 (KADID amounts / 2)."""
    amount = _parameter((0.1, 0.2, 0.4, 0.7, 1.1), level)
    return _finish(_tone_curve(image, 0.5 + amount / 2))


def darken(image, level, rng):
    """Tone curve lowering mid-grey by 0.025 to 0.4 (KADID amounts / 2)."""
    amount = _parameter((0.05, 0.1, 0.2, 0.4, 0.8), level)
    return _finish(_tone_curve(image, 0.5 - amount / 2))


def mean_shift(image, level, rng):
    """A constant 0.02 to 0.15 added or (at random) subtracted.

    KADID's table runs 0.15, 0.08, 0, -0.08, -0.15, its third level the
    identity; here the magnitude grows with the level and the sign is drawn.
    """
    amount = _parameter((0.02, 0.05, 0.08, 0.11, 0.15), level)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _finish(image + sign * amount)


# Spatial distortions -------------------------------------------------------------

def jitter(image, level, rng):
    """Five rounds of random per-pixel displacement, std 0.05 to 1 px."""
    amount = _parameter((0.05, 0.1, 0.2, 0.5, 1.0), level)
    height, width, _ = image.shape
    grid = np.mgrid[0:height, 0:width].astype(np.float64)
    out = image
    for _ in range(5):
        coords = grid + rng.normal(0, amount, grid.shape)
        out = np.stack([ndimage.map_coordinates(out[..., c], coords, order=1,
                                                mode="nearest")
                        for c in range(3)], axis=-1)
    return _finish(out)


def non_eccentricity_patch(image, level, rng):
    """20 to 100 small patches copied onto nearby spots.

    KADID uses 16 px patches moved up to 8 px; patches shrink to a quarter of
    the shorter side on small images.
    """
    count = _parameter((20, 40, 60, 80, 100), level)
    height, width, _ = image.shape
    patch = max(1, min(16, height // 4, width // 4))
    reach = patch // 2
    out = image.copy()
    for _ in range(count):
        row = rng.integers(0, height - patch + 1)
        col = rng.integers(0, width - patch + 1)
        to_row = np.clip(row + rng.integers(-reach, reach + 1), 0, height - patch)
        to_col = np.clip(col + rng.integers(-reach, reach + 1), 0, width - patch)
        out[to_row:to_row + patch, to_col:to_col + patch] = (
            out[row:row + patch, col:col + patch])
    return _finish(out)


def pixelate(image, level, rng):
    """Nearest-neighbour down to 0.95 - s ** 0.6 of the size and back up."""
    strength = _parameter((0.01, 0.05, 0.1, 0.2, 0.5), level)
    scale = 0.95 - strength ** 0.6
    height, width, _ = image.shape
    rows = (np.arange(max(1, int(height * scale))) / scale).astype(int)
    cols = (np.arange(max(1, int(width * scale))) / scale).astype(int)
    small = image[np.minimum(rows, height - 1)][:, np.minimum(cols, width - 1)]
    up_rows = np.arange(height) * len(rows) // height
    up_cols = np.arange(width) * len(cols) // width
    return _finish(small[up_rows][:, up_cols])


def quantization(image, level, rng):
    """Each channel cut into 20 down to 7 equal bins, shown at bin centres.

    KADID thresholds with multi-level Otsu on the grey image; equal bins are
    the simple, image-independent version of the same posterisation.
    """
    bins = _parameter((20, 16, 13, 10, 7), level)
    index = np.minimum(np.floor(image * bins), bins - 1)
    return _finish((index + 0.5) / bins)


def color_block(image, level, rng):
    """2 to 10 square blocks of random solid colour.

    32 px blocks as KADID; smaller on images under 128 px a side.
    """
    count = _parameter((2, 4, 6, 8, 10), level)
    height, width, _ = image.shape
    size = max(1, min(32, height // 4, width // 4))
    out = image.copy()
    for _ in range(count):
        row = rng.integers(0, height - size + 1)
        col = rng.integers(0, width - size + 1)
        out[row:row + size, col:col + size] = rng.random(3)
    return _finish(out)


# Sharpness and contrast ------------------------------------------------------------

def sharpen(image, level, rng):
    """Unsharp mask of the luma, amount 1 to 12, Gaussian sigma 3 px.

    As MATLAB's imsharpen(..., 'Radius', 3, 'Amount', a) that KADID calls.
    """
    amount = _parameter((1, 2, 3, 6, 12), level)
    ycbcr = _to_ycbcr(image)
    luma = ycbcr[..., 0]
    blurred = ndimage.gaussian_filter(luma, 3.0, mode="nearest", radius=6)
    ycbcr[..., 0] = luma + amount * (luma - blurred)
    return _finish(_from_ycbcr(ycbcr))


def contrast_change(image, level, rng):
    """Contrast reduced about mid-grey, slope 0.8 down to 0.1."""
    half_range = _parameter((0.4, 0.3, 0.2, 0.1, 0.05), level)
    return _finish(0.5 + 2 * half_range * (image - 0.5))


DISTORTIONS: dict[str, Distortion] = {
    "gaussian_blur": gaussian_blur,
    "lens_blur": lens_blur,
    "motion_blur": motion_blur,
    "color_diffusion": color_diffusion,
    "color_shift": color_shift,
    "color_quantization": color_quantization,
    "color_desaturation": color_desaturation,
    "color_oversaturation": color_oversaturation,
    "jpeg2000": jpeg2000,
    "jpeg": jpeg,
    "white_noise": white_noise,
    "white_noise_color": white_noise_color,
    "impulse_noise": impulse_noise,
    "multiplicative_noise": multiplicative_noise,
    "brighten": brighten,
    "darken": darken,
    "mean_shift": mean_shift,
    "jitter": jitter,
    "non_eccentricity_patch": non_eccentricity_patch,
    "pixelate": pixelate,
    "quantization": quantization,
    "color_block": color_block,
    "sharpen": sharpen,
    "contrast_change": contrast_change,
}

# KADID-10k's seven families; "denoise" (noise family) is not implemented.
KADID_FAMILIES: dict[str, tuple[str, ...]] = {
    "blurs": ("gaussian_blur", "lens_blur", "motion_blur"),
    "color_distortions": ("color_diffusion", "color_shift", "color_quantization",
                          "color_desaturation", "color_oversaturation"),
    "compression": ("jpeg2000", "jpeg"),
    "noise": ("white_noise", "white_noise_color", "impulse_noise",
              "multiplicative_noise"),
    "brightness_change": ("brighten", "darken", "mean_shift"),
    "spatial_distortions": ("jitter", "non_eccentricity_patch", "pixelate",
                            "quantization", "color_block"),
    "sharpness_contrast": ("sharpen", "contrast_change"),
}

# Each set is the (name, level) of every distorted version, in order.
DISTORTION_SETS: dict[str, tuple[tuple[str, int], ...]] = {
    "livefb": (("gaussian_blur", 2), ("gaussian_blur", 4),
               ("white_noise", 2), ("white_noise", 4),
               ("jpeg", 2), ("jpeg", 4),
               ("contrast_change", 2), ("contrast_change", 4)),
    "kadid": tuple((name, level) for family in KADID_FAMILIES.values()
                   for name in family for level in range(1, NUM_LEVELS + 1)),
}


def distortion_set(set_name: str) -> tuple[tuple[str, int], ...]:
    """The (name, level) recipe of a set; ValueError naming the known sets."""
    if set_name not in DISTORTION_SETS:
        raise ValueError(f"unknown distortion set {set_name!r}; known sets: "
                         f"{sorted(DISTORTION_SETS)}")
    return DISTORTION_SETS[set_name]


def _reference(image) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    return image


def make_versions(image: np.ndarray, set_name: str,
                  rng: np.random.Generator) -> np.ndarray:
    """The reference and its distorted versions.

    Args:
        image: (H, W, 3) float in [0, 1], the pristine reference.
        set_name: a key of DISTORTION_SETS.
        rng: consumed in recipe order, so equal seeds give equal versions.

    Returns:
        (V, H, W, 3) float32 in [0, 1], V = 1 + len(set); the reference first.
    """
    recipe, image = distortion_set(set_name), _reference(image)
    versions = [image] + [DISTORTIONS[name](image, level, rng)
                          for name, level in recipe]
    return np.stack(versions)


def make_versions_uint8(image: np.ndarray, set_name: str,
                        rng: np.random.Generator) -> np.ndarray:
    """`make_versions` rounded to 8 bits, as the label pass stores them.

    The same bytes as `images.to_uint8(make_versions(...))`, each version
    rounded (and checked finite) as soon as it is made: no (V, H, W, 3) float
    stack.

    Raises images.UnusableImageError if a version holds NaN or infinite values.
    """
    recipe, image = distortion_set(set_name), _reference(image)
    out = np.empty((1 + len(recipe),) + image.shape, np.uint8)
    out[0] = images.to_uint8(image)
    for index, (name, level) in enumerate(recipe, start=1):
        out[index] = images.to_uint8(DISTORTIONS[name](image, level, rng))
    return out
