"""FSIM and FSIMc (Zhang et al., IEEE TIP 2011) in jax.numpy.

Follows the reference MATLAB code as `piq.fsim` transcribes it, so the two
agree to float32 rounding. Phase congruency, gradient magnitude and chroma are
properties of one image: `fsim_features` computes them once per image and
`fsim_from_features` combines two images' features cheaply, which is what lets
`fsim_matrix` score all pairs of a group at the cost of one feature pass per
image.

Images are NHWC, RGB or single-channel, with values in [0, data_range].
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Published FSIM constants, on the 0-255 pixel scale.
_T1_PHASE = 0.85
_T2_GRADIENT = 160.0
_T3_I = 200.0
_T4_Q = 200.0
_LAMBDA_CHROMA = 0.03
# Phase-congruency defaults of the reference code. Public, with RGB_TO_YIQ,
# check_shape and log_gabor_bank: fsim_bucketed computes the same maps on the host.
SCALES = 4
ORIENTATIONS = 4
_MIN_WAVELENGTH = 6
_MULT = 2
_SIGMA_ON_F = 0.55
_D_THETA_ON_SIGMA = 1.2
_NOISE_K = 2.0
# The PC_2 measure overestimates the noise effect by about this factor.
_PC2_NOISE_RESCALE = 1.7
# The reference code's low-pass that keeps filters off the FFT corners.
_LOWPASS_CUTOFF, _LOWPASS_ORDER = 0.45, 15
# The float32 machine epsilon the reference adds before dividing.
_EPS = float(np.finfo(np.float32).eps)
# Below the finest filter's wavelength there is nothing for it to measure.
MIN_SIDE = _MIN_WAVELENGTH
# NTSC RGB -> YIQ, rows Y, I, Q.
RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]],
    np.float32,
)


class FsimFeatures(NamedTuple):
    """Per-image FSIM maps, each (..., h, w) float32 at the down-sampled size.

    `i` and `q` are None for the achromatic form. `valid` is (...,) bool: False
    where the input held NaN, inf or values outside [0, data_range].
    """

    phase_congruency: jax.Array
    gradient: jax.Array
    i: jax.Array | None
    q: jax.Array | None
    valid: jax.Array


def downsampling_factor(height: int, width: int) -> int:
    """F = max(1, round(min(H, W) / 256)), with Python's round as in piq."""
    return max(1, round(min(height, width) / 256))


def check_images(images, data_range: float = 1.0, name: str = "images"):
    """Host-side check where data enters: raises ValueError naming `name`.

    Args:
      images: array-like of any shape, pixel values.
      data_range: the largest allowed value; the smallest is 0.
      name: what to call the input in the message.
    """
    values = np.asarray(images)
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError(
            f"{name}: {values.size - finite.sum()} non-finite values (NaN or inf)"
        )
    low, high = values.min(), values.max()
    if low < 0 or high > data_range:
        raise ValueError(
            f"{name}: values must lie in [0, {data_range}], found [{low}, {high}]"
        )


def check_shape(shape, rank: int, name: str, chromatic: bool):
    """Trace-time checks of rank, channels and size; raises ValueError."""
    if len(shape) != rank:
        layout = "(N, H, W, C)" if rank == 4 else "(G, V, H, W, C)"
        raise ValueError(
            f"{name} must have rank {rank} {layout}, got shape {tuple(shape)}"
        )
    height, width, channels = shape[-3:]
    if channels not in (1, 3):
        raise ValueError(
            f"{name} must have 1 or 3 channels (NHWC), got "
            f"{channels} in shape {tuple(shape)}"
        )
    if chromatic and channels != 3:
        raise ValueError(
            f"chromatic=True (FSIMc) needs RGB {name}, got "
            f"{channels} channel(s); pass chromatic=False for FSIM"
        )
    factor = downsampling_factor(height, width)
    if min(height, width) // factor < MIN_SIDE:
        raise ValueError(
            f"{name}: {height}x{width} is too small; FSIM needs at "
            f"least {MIN_SIDE} pixels a side after its {factor}x "
            f"down-sampling"
        )


def _centred_frequencies(n: int) -> np.ndarray:
    """The reference's frequency axis, zero at the centre, in cycles/pixel.

    Odd sizes are divided by n - 1, not n, as the MATLAB code does.
    """
    if n % 2:
        return np.arange(-(n - 1) / 2, n / 2) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


@functools.lru_cache(maxsize=32)
def log_gabor_bank(height: int, width: int):
    """Frequency-domain filters and noise constants for an h x w luminance.

    Returns:
      filters: (O, S, h, w) float32 log-Gabor x angular spread, zero frequency
        at [0, 0] (FFT order).
      noise_scale: (O,) float32; an orientation's noise threshold is
        noise_scale * sqrt(median squared finest-scale response).
    """
    f_row, f_col = np.meshgrid(
        _centred_frequencies(height), _centred_frequencies(width), indexing="ij"
    )
    radius = np.fft.ifftshift(np.hypot(f_row, f_col))
    # The reference's angle convention, which fixes the orientations' order.
    theta = np.fft.ifftshift(np.arctan2(-f_col, f_row))
    lowpass = 1.0 / (1.0 + (radius / _LOWPASS_CUTOFF) ** (2 * _LOWPASS_ORDER))
    radius[0, 0] = 1.0  # keeps log() finite; that bin is zeroed below

    wavelengths = _MIN_WAVELENGTH * _MULT ** np.arange(SCALES)
    log_ratio = np.log(radius[None] * wavelengths[:, None, None])
    radial = np.exp(-(log_ratio**2) / (2 * math.log(_SIGMA_ON_F) ** 2)) * lowpass
    radial[:, 0, 0] = 0.0

    angles = np.arange(ORIENTATIONS) * math.pi / ORIENTATIONS
    # atan2 of sine and cosine differences avoids the angular wrap-around.
    d_sin = (
        np.sin(theta)[None] * np.cos(angles)[:, None, None]
        - np.cos(theta)[None] * np.sin(angles)[:, None, None]
    )
    d_cos = (
        np.cos(theta)[None] * np.cos(angles)[:, None, None]
        + np.sin(theta)[None] * np.sin(angles)[:, None, None]
    )
    theta_sigma = math.pi / (ORIENTATIONS * _D_THETA_ON_SIGMA)
    spread = np.exp(-np.arctan2(d_sin, d_cos) ** 2 / (2 * theta_sigma**2))

    filters = spread[:, None] * radial[None]
    return filters.astype(np.float32), _noise_scale(filters)


def _noise_scale(filters: np.ndarray) -> np.ndarray:
    """Kovesi's noise model folded into one constant per orientation.

    The squared finest-scale response of pure noise is chi-squared with 2 DOF,
    so its mean is median / ln 2; dividing by the finest filter's energy gives
    the noise power, and the filters' spatial auto- and cross-correlations turn
    it into a Rayleigh-distributed noise energy whose mean + k sigma, over 1.7,
    is the threshold.
    """
    # Sums of products of the spatial filters, real(ifft2(filter)) * sqrt(h w),
    # by Parseval in the frequency domain, where the real part's transform is
    # the filter's Hermitian-symmetric part (f[k] + f[-k]) / 2: no transforms.
    mirrored = np.roll(filters[..., ::-1, ::-1], 1, axis=(-2, -1))
    symmetric = (filters + mirrored) / 2
    finest_energy = np.sum(filters[:, 0] ** 2, axis=(-2, -1))
    auto = np.sum(symmetric**2, axis=(1, 2, 3))
    cross = sum(
        np.sum(symmetric[:, s] * symmetric[:, t], axis=(-2, -1))
        for s in range(SCALES)
        for t in range(s + 1, SCALES)
    )
    tau_over_sqrt_median = np.sqrt(
        (2 * auto + 4 * cross) / (2 * math.log(2) * finest_energy)
    )
    rayleigh_mean_plus_k_sigma = math.sqrt(math.pi / 2) + _NOISE_K * math.sqrt(
        2 - math.pi / 2
    )
    return (
        tau_over_sqrt_median * rayleigh_mean_plus_k_sigma / _PC2_NOISE_RESCALE
    ).astype(np.float32)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with a zero (not infinite) gradient at 0, so flat regions train.

    NaN stays NaN (x * 0), so poisoned inputs are never silently repaired.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), x * 0)


_INF_BITS = 0x7F800000  # int32 view of +inf, above every finite float >= 0


@functools.lru_cache(maxsize=None)
def _median_search_plan(width: int):
    """(field_bits, cuts, steps) for `_lower_median` on rows of `width`.

    A row's count below a cut fits in field_bits, so `cuts` counts share one
    int32; each step splits the candidate interval cuts + 1 ways.
    """
    field_bits = width.bit_length()
    cuts = max(1, min(3, 31 // field_bits))
    size, steps = _INF_BITS + 1, 0
    while size > 1:
        size, steps = -(-size // (cuts + 1)), steps + 1
    return field_bits, cuts, steps


def _lower_median(values: jax.Array, count: jax.Array | None = None) -> jax.Array:
    """torch.median over the last two axes: the lower middle value, (...,).

    `count` (..., int32), when given, says how many values are real: the rest
    must be +inf (padding), which never counts below a cut.

    Exact selection by search on the int32 view of the floats (which orders
    values >= 0 as the floats do), because sorting is very slow on XLA:CPU.
    Each step counts the values below 3 cuts in one pass, packed into one
    int32 per row, so about 16 passes replace bisection's 31. Differentiable:
    the gradient goes to the element(s) equal to the median.
    """
    height, width = values.shape[-2:]
    if count is None:
        count = height * width
    count_needed = (count - 1) // 2 + 1
    field_bits, num_cuts, steps = _median_search_plan(width)
    field_mask = (1 << field_bits) - 1
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(values), jnp.int32)

    def narrow(_, bounds):
        low, high = bounds  # the answer lies in [low, high]
        part, extra = jnp.divmod(high - low + 1, num_cuts + 1)
        cuts = [
            low + j * part + jnp.minimum(j, extra) - 1 for j in range(1, num_cuts + 1)
        ]
        packed = sum(
            jnp.where(bits <= cut[..., None, None], 1 << (field_bits * j), 0)
            for j, cut in enumerate(cuts)
        )
        per_row = jnp.sum(packed, axis=-1)
        enough = [
            jnp.sum((per_row >> (field_bits * j)) & field_mask, axis=-1) >= count_needed
            for j in range(num_cuts)
        ]
        # Counts grow with the cut: keep the part after the last cut short of
        # count_needed and up to the first cut that reaches it.
        for cut, reached in zip(cuts, enough):
            low = jnp.where(reached, low, cut + 1)
        for cut, reached in zip(cuts[::-1], enough[::-1]):
            high = jnp.where(reached, cut, high)
        return low, high

    low = jnp.zeros(values.shape[:-2], jnp.int32)
    high = jnp.full(values.shape[:-2], _INF_BITS, jnp.int32)
    median_bits, _ = jax.lax.fori_loop(0, steps, narrow, (low, high))
    # max over the tied copies: exact, and its gradient is shared among them.
    is_median = bits == median_bits[..., None, None]
    return jnp.max(jnp.where(is_median, values, 0.0), axis=(-2, -1))


def _phase_energy(even: list, odd: list) -> jax.Array:
    """Sum over scales of A_s (cos - |sin|) of the phase deviation, (h, w).

    Dot and cross products of each scale's (even, odd) response with the sum
    over scales, divided by the sum's norm once: the same as normalising the
    sum first, with fewer intermediate maps for XLA to write out.
    """
    sum_even, sum_odd = sum(even), sum(odd)
    norm = _safe_sqrt(sum_even**2 + sum_odd**2) + _EPS
    unnormalised = sum(
        e * sum_even + o * sum_odd - jnp.abs(e * sum_odd - o * sum_even)
        for e, o in zip(even, odd)
    )
    return unnormalised / norm


def _phase_congruency(luma: jax.Array) -> jax.Array:
    """Kovesi's PC_2 phase congruency of one (h, w) luminance on 0-255."""
    filters, noise_scale = log_gabor_bank(*luma.shape)
    responses = jnp.fft.ifft2(jnp.fft.fft2(luma) * filters)  # (O, S, h, w)
    return congruency_of_responses(responses, noise_scale)


def congruency_of_responses(
    responses: jax.Array, noise_scale: jax.Array, count: jax.Array | None = None
) -> jax.Array:
    """Phase congruency from one image's log-Gabor responses.

    Args:
      responses: (O, S, a, b) complex64, the filtered luminance (any 2-D
        arrangement of its pixels: only per-pixel values and sums matter).
      noise_scale: (O,) float32 from `log_gabor_bank`.
      count: the number of real pixels when the rest is zero padding at the
        end; None when all are real. Padded pixels come out as 1 (0 / 0
        guarded by eps): mask them.

    Returns:
      (a, b) float32 phase congruency.
    """
    finest_power = responses[:, 0].real ** 2 + responses[:, 0].imag ** 2
    if count is not None:  # Padding sits above every real value.
        real = jnp.arange(finest_power[0].size).reshape(finest_power.shape[1:]) < count
        finest_power = jnp.where(real, finest_power, jnp.inf)
    thresholds = noise_scale * _safe_sqrt(_lower_median(finest_power, count))
    # Explicit slices and sums rather than axis reductions: XLA:CPU fuses them
    # into one vectorised loop, about 7x faster than reducing over (O, S).
    energy = amplitude = 0.0
    for o in range(ORIENTATIONS):
        even = [responses[o, s].real for s in range(SCALES)]
        odd = [responses[o, s].imag for s in range(SCALES)]
        energy += jnp.maximum(_phase_energy(even, odd) - thresholds[o], 0.0)
        amplitude += sum(_safe_sqrt(e**2 + d**2) for e, d in zip(even, odd))
    return (energy + _EPS) / (amplitude + _EPS)


def _gradient_magnitude(luma: jax.Array) -> jax.Array:
    """Scharr gradient magnitude of (..., h, w), zero padding as conv2d."""
    p = jnp.pad(luma, [(0, 0)] * (luma.ndim - 2) + [(1, 1), (1, 1)])
    h, w = luma.shape[-2:]

    def shifted(dy, dx):
        return p[..., dy : dy + h, dx : dx + w]

    along_x = (
        3 * (shifted(0, 2) - shifted(0, 0))
        + 10 * (shifted(1, 2) - shifted(1, 0))
        + 3 * (shifted(2, 2) - shifted(2, 0))
    ) / 16
    along_y = (
        3 * (shifted(2, 0) - shifted(0, 0))
        + 10 * (shifted(2, 1) - shifted(0, 1))
        + 3 * (shifted(2, 2) - shifted(0, 2))
    ) / 16
    return _safe_sqrt(along_x**2 + along_y**2)


def _average_pool(images: jax.Array, factor: int) -> jax.Array:
    """F x F mean with stride F over (N, H, W, C), dropping any remainder."""
    if factor == 1:
        return images
    h, w = images.shape[1] // factor, images.shape[2] // factor
    # A sum of strided slices: XLA:CPU's window reductions are far slower.
    total = sum(
        images[:, dy : h * factor : factor, dx : w * factor : factor]
        for dy in range(factor)
        for dx in range(factor)
    )
    return total / factor**2


def _yiq(images: jax.Array) -> list:
    """[Y, I, Q] maps (N, h, w) of RGB (N, h, w, 3)."""
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    return [wr * r + wg * g + wb * b for wr, wg, wb in RGB_TO_YIQ.tolist()]


def fsim_features(
    images: jax.Array, *, data_range: float = 1.0, chromatic: bool = True
) -> FsimFeatures:
    """The per-image part of FSIM, computed once per image.

    Args:
      images: (N, H, W, C) in [0, data_range], C = 1 or 3 (3 for chromatic).
      data_range: the value of white.
      chromatic: also keep the I and Q chroma maps, for FSIMc.

    Returns:
      FsimFeatures with maps (N, h, w), h = H // F, w = W // F.
    """
    check_shape(images.shape, 4, "images", chromatic)
    images = jnp.asarray(images, jnp.float32)
    # Poison bad pixels (NaN fails both tests): through the Fourier transform
    # one NaN reaches every phase-congruency pixel, hence every score. This
    # costs no reduction over the full-size input.
    images = jnp.where((images >= 0) & (images <= data_range), images, jnp.nan)
    # The FSIM constants are for 0-255 pixels.
    scaled = _average_pool(
        images * (255.0 / data_range), downsampling_factor(*images.shape[1:3])
    )
    if scaled.shape[-1] == 3:
        luma, i, q = _yiq(scaled)
    else:
        luma, i, q = scaled[..., 0], None, None
    if not chromatic:
        i = q = None
    # One image at a time: its 16 responses stay in cache and memory is bounded.
    phase_congruency = jax.lax.map(_phase_congruency, luma)
    valid = ~jnp.any(jnp.isnan(phase_congruency), axis=(-2, -1))
    return FsimFeatures(phase_congruency, _gradient_magnitude(luma), i, q, valid)


def _similarity(a: jax.Array, b: jax.Array, constant: float) -> jax.Array:
    return (2 * a * b + constant) / (a**2 + b**2 + constant)


def _local_similarity(a: FsimFeatures, b: FsimFeatures):
    """Per-pixel weighted similarity S_L * PC_m and the weight PC_m, (..., h, w).

    Leading dimensions broadcast.
    """
    pc_max = jnp.maximum(a.phase_congruency, b.phase_congruency)
    local = (
        _similarity(a.phase_congruency, b.phase_congruency, _T1_PHASE)
        * _similarity(a.gradient, b.gradient, _T2_GRADIENT)
        * pc_max
    )
    if a.i is not None and b.i is not None:
        chroma = _similarity(a.i, b.i, _T3_I) * _similarity(a.q, b.q, _T4_Q)
        # |chroma|**lambda, as exp(log) because XLA's pow is twice as slow.
        local = local * jnp.exp(_LAMBDA_CHROMA * jnp.log(jnp.abs(chroma)))
    return local, pc_max


def _pool(local: jax.Array, pc_max: jax.Array, valid: jax.Array) -> jax.Array:
    """FSIM = sum(S_L PC_m) / sum(PC_m) over (h, w); NaN where not valid."""
    score = jnp.sum(local, axis=(-2, -1)) / jnp.sum(pc_max, axis=(-2, -1))
    return jnp.where(valid, score, jnp.nan)


def fsim_from_features(a: FsimFeatures, b: FsimFeatures) -> jax.Array:
    """FSIM (FSIMc when both carry chroma) of feature pairs, shape (...,).

    Leading dimensions broadcast. NaN where either image was invalid, so bad
    data never looks plausible.
    """
    return _pool(*_local_similarity(a, b), a.valid & b.valid)


def fsim(
    x: jax.Array, y: jax.Array, *, data_range: float = 1.0, chromatic: bool = True
) -> jax.Array:
    """FSIMc (or FSIM with chromatic=False) of image pairs.

    Args:
      x, y: (N, H, W, C) float in [0, data_range], same shape, C = 1 or 3.
      data_range: the value of white (1.0 for [0, 1] floats, 255 for bytes).
      chromatic: FSIMc, which needs RGB; False gives FSIM on luminance.

    Returns:
      (N,) float32, 1 for identical images; NaN for a pair with NaN, inf or
      out-of-range pixels.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    check_shape(x.shape, 4, "x", chromatic)
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {x.shape} and {y.shape}"
        )
    features = fsim_features(
        jnp.concatenate([x, y]), data_range=data_range, chromatic=chromatic
    )
    first = jax.tree.map(lambda t: t[: x.shape[0]], features)
    second = jax.tree.map(lambda t: t[x.shape[0] :], features)
    return fsim_from_features(first, second)


def _upper_triangle_scores(features: FsimFeatures) -> jax.Array:
    """(G, V*(V-1)/2) FSIM of version pairs i < j, in np.triu_indices order."""
    count = features.valid.shape[1]
    if count < 2:
        return jnp.zeros((features.valid.shape[0], 0), jnp.float32)
    # Version i against versions i+1.. by static slices, pooled in a single
    # reduction: XLA:CPU is several times slower with a gather, or with one
    # reduction per slice.
    later = [
        _local_similarity(
            jax.tree.map(lambda t: t[:, i : i + 1], features),
            jax.tree.map(lambda t: t[:, i + 1 :], features),
        )
        for i in range(count - 1)
    ]
    rows, cols = np.triu_indices(count, k=1)
    return _pool(
        jnp.concatenate([local for local, _ in later], axis=1),
        jnp.concatenate([weight for _, weight in later], axis=1),
        features.valid[:, rows] & features.valid[:, cols],
    )


def fsim_matrix(
    versions: jax.Array, *, data_range: float = 1.0, chromatic: bool = True
) -> jax.Array:
    """FSIM between every two versions within each group.

    Args:
      versions: (G, V, H, W, C) float in [0, data_range], C = 1 or 3.
      data_range, chromatic: as for `fsim`.

    Returns:
      (G, V, V) float32, symmetric, ones on the diagonal; NaN in the rows and
      columns of a version with NaN, inf or out-of-range pixels. Costs G*V
      feature computations and G*V*(V-1)/2 cheap combinations.
    """
    versions = jnp.asarray(versions)
    check_shape(versions.shape, 5, "versions", chromatic)
    groups, count = versions.shape[:2]
    features = fsim_features(
        versions.reshape(-1, *versions.shape[2:]),
        data_range=data_range,
        chromatic=chromatic,
    )
    features = jax.tree.map(lambda t: t.reshape(groups, count, *t.shape[1:]), features)
    return matrix_from_features(features)


def matrix_from_features(features: FsimFeatures) -> jax.Array:
    """(G, V, V) FSIM matrices of features with leading dimensions (G, V).

    Maps may be zero outside the image (phase congruency zero there weighs
    nothing), so padded groups give their exact scores.
    """
    count = features.valid.shape[1]
    rows, cols = np.triu_indices(count, k=1)
    scores = _upper_triangle_scores(features)
    diagonal = jnp.where(features.valid, 1.0, jnp.nan)
    matrix = jax.vmap(jnp.diag)(diagonal)
    return matrix.at[:, rows, cols].set(scores).at[:, cols, rows].set(scores)
