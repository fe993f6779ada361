"""FSIM matrices of groups of any size, with a bounded number of programs.

`fsim.fsim_matrix` under jit compiles one program per image shape, so a
corpus of photographs of many sizes spends its time compiling. Here every
matrix is still exact FSIM at the image's own size (piq's value), and the
programs compiled are at most one per pixel-count bucket, whatever the sizes:

- On the host (NumPy/SciPy, exact size): pooling, YIQ, the gradient map and
  the log-Gabor responses. The Fourier transform is why: a circular
  convolution's values depend on the exact size, so padding an image before
  it would change them, and XLA compiles one FFT per size.
- On the device, one jitted program per bucket of pixel counts (a ladder of 4
  sizes per octave): each image's maps flattened, zero-padded to the bucket
  and given its true pixel count as data. Everything there is per pixel or a
  sum (the median threshold, phase congruency, the pairs' pooled
  similarities), so the padding is masked out and the values are exact.
  Several groups go in one call.

`MatrixStream` overlaps the two: a call runs on the device (asynchronously)
while the host prepares the next.
"""

import collections
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft

from grepq_jax.training.labels import fsim

# A bucket's pixels form rows of this many, for the median's packed counts.
_ROW = 128
# Bucket sizes: _ROW * {4, 5, 6, 7} * 2**k, at most 25% padding.
_STEPS_PER_OCTAVE = 4
# Pixels (groups x versions x bucket) per device call: its complex64
# responses are 128 bytes a pixel, so this bounds a call's input to 256 MiB.
_PIXELS_PER_CALL = 1 << 21


def bucket_size(pixels: int) -> int:
    """The smallest ladder size >= pixels: _ROW * m * 2**k, m in 4..7."""
    rows = max(-(-pixels // _ROW), _STEPS_PER_OCTAVE)
    octave = 1 << (rows.bit_length() - 3)  # rows // octave is in 4..7
    return _ROW * octave * -(-rows // octave)


def groups_per_call(bucket: int, versions: int) -> int:
    return max(1, _PIXELS_PER_CALL // (bucket * versions))


class HostMaps(collections.namedtuple("HostMaps", "luma i q gradient")):
    """One group's exact-size maps, (V, h, w) float32 (i, q None if achromatic)."""


def host_maps(versions: np.ndarray, *, data_range: float, chromatic: bool) -> HostMaps:
    """Pooling, YIQ and gradient of (V, H, W, C) versions, as `fsim` does.

    Raises ValueError for a bad shape or an image too small for FSIM.
    """
    fsim.check_shape((1,) + versions.shape, 5, "versions", chromatic)
    count, height, width, channels = versions.shape
    factor = fsim.downsampling_factor(height, width)
    h, w = height // factor, width // factor
    x = _pixel_sums(np.asarray(versions), factor)
    x *= np.float32(255.0 / data_range / factor**2)  # FSIM's constants are for 0-255.
    if not np.issubdtype(versions.dtype, np.integer) or versions.max() > data_range:
        # An image with a bad pixel where FSIM looks becomes NaN: through the
        # Fourier transform, as in `fsim.fsim_features`, its scores are NaN.
        kept = versions[:, : h * factor, : w * factor]
        x[~((kept >= 0) & (kept <= data_range)).all(axis=(1, 2, 3))] = np.nan
    if channels == 3:
        luma, i, q = np.moveaxis(x @ fsim.RGB_TO_YIQ.T, -1, 0)
    else:
        luma, i, q = x[..., 0], None, None
    if not chromatic:
        i = q = None
    return HostMaps(luma, i, q, _gradient_magnitude(luma))


def _pixel_sums(x: np.ndarray, factor: int) -> np.ndarray:
    """(V, H, W, C) -> (V, h, w, C) float32 sums of factor x factor blocks.

    Rows first, then columns, each a sum of strided slices (NumPy's reductions
    over reshaped axes are far slower). 8-bit pixels are summed as integers,
    exactly (factor**2 * 255 < 2**24 fits float32), and in uint16 while a
    column of factor values fits.
    """
    count, height, width, channels = x.shape
    h, w = height // factor, width // factor
    x = x[:, : h * factor, : w * factor]
    exact = x.dtype == np.uint8 and factor * 255 <= np.iinfo(np.uint16).max
    rows = x[:, ::factor].astype(np.uint16 if exact else np.float32)
    for dy in range(1, factor):
        rows += x[:, dy::factor]
    rows = rows.reshape(count, h, w, factor, channels)
    total = rows[:, :, :, 0].astype(np.float32)
    for dx in range(1, factor):
        total += rows[:, :, :, dx]
    return total


def _gradient_magnitude(luma: np.ndarray) -> np.ndarray:
    """`fsim._gradient_magnitude` in NumPy: Scharr, zero padding, (V, h, w)."""
    p = np.pad(luma, [(0, 0), (1, 1), (1, 1)])
    h, w = luma.shape[-2:]

    def shifted(dy, dx):
        return p[:, dy : dy + h, dx : dx + w]

    along_x = (3 * (shifted(0, 2) - shifted(0, 0)) + 10 * (shifted(1, 2) - shifted(1, 0))
               + 3 * (shifted(2, 2) - shifted(2, 0))) / 16
    along_y = (3 * (shifted(2, 0) - shifted(0, 0)) + 10 * (shifted(2, 1) - shifted(0, 1))
               + 3 * (shifted(2, 2) - shifted(0, 2))) / 16
    return np.sqrt(along_x**2 + along_y**2)


def _fft_workers() -> int:
    return len(os.sched_getaffinity(0))


class _Call:
    """The padded inputs of one device call: `size` groups of one bucket."""

    def __init__(self, bucket: int, size: int, versions: int, chromatic: bool):
        shape = (size, versions)
        self.responses = np.zeros(
            shape + (fsim.ORIENTATIONS, fsim.SCALES, bucket), np.complex64)
        self.gradient = np.zeros(shape + (bucket,), np.float32)
        self.chroma = np.zeros(shape + (2, bucket), np.float32) if chromatic else None
        self.noise_scale = np.zeros((size, fsim.ORIENTATIONS), np.float32)
        self.pixels = np.ones(size, np.int32)  # unused rows: one zero pixel
        self.keys = []

    def put(self, key, maps: HostMaps):
        row, (count, h, w) = len(self.keys), maps.luma.shape
        filters, self.noise_scale[row] = fsim.log_gabor_bank(h, w)
        spectrum = scipy.fft.fft2(maps.luma, workers=_fft_workers())
        # Filtered and transformed back where the call reads them: the first
        # h * w entries of each row, viewed as (h, w), no copy.
        target = self.responses[row, ..., : h * w].reshape(count, *filters.shape)
        assert np.may_share_memory(target, self.responses)  # a view, never a copy
        np.multiply(spectrum[:, None, None], filters, out=target)
        responses = scipy.fft.ifft2(target, workers=_fft_workers(), overwrite_x=True)
        if not np.may_share_memory(responses, target):  # A SciPy that did not overwrite.
            target[...] = responses
        self.gradient[row, :, : h * w] = maps.gradient.reshape(count, -1)
        if self.chroma is not None:
            self.chroma[row, :, 0, : h * w] = maps.i.reshape(count, -1)
            self.chroma[row, :, 1, : h * w] = maps.q.reshape(count, -1)
        self.pixels[row] = h * w
        self.keys.append(key)

    def run(self) -> jax.Array:
        return _bucket_matrices(self.responses, self.gradient, self.chroma,
                                self.noise_scale, self.pixels)


@jax.jit
def _bucket_matrices(responses, gradient, chroma, noise_scale, pixels):
    """(G, V, V) FSIM matrices of padded, flattened maps; see the module doc.

    responses (G, V, O, S, n) complex64; gradient (G, V, n); chroma
    (G, V, 2, n) or None; noise_scale (G, O); pixels (G,) int32, the real
    pixels at the start of each row of n.
    """
    groups, count, bucket = gradient.shape
    as_rows = lambda t: t.reshape(*t.shape[:-1], bucket // _ROW, _ROW)
    real = jnp.arange(bucket) < pixels[:, None, None]  # (G, 1, n)

    def one_image(args):
        image_responses, scale, image_pixels = args
        return fsim.congruency_of_responses(as_rows(image_responses), scale, image_pixels)

    # One image at a time, as `fsim.fsim_features`: bounded memory.
    congruency = jax.lax.map(one_image, (
        responses.reshape(groups * count, *responses.shape[2:]),
        jnp.repeat(noise_scale, count, axis=0),
        jnp.repeat(pixels, count)))
    congruency = jnp.where(real, congruency.reshape(groups, count, bucket), 0.0)
    valid = ~jnp.any(jnp.isnan(congruency), axis=-1)
    i = q = None
    if chroma is not None:
        i, q = as_rows(chroma[:, :, 0]), as_rows(chroma[:, :, 1])
    features = fsim.FsimFeatures(as_rows(congruency), as_rows(gradient), i, q, valid)
    return fsim.matrix_from_features(features)


def compiled_programs() -> int:
    """Programs compiled so far for the device side (one per bucket and V)."""
    return _bucket_matrices._cache_size()


class MatrixStream:
    """FSIM matrices of groups handed in one by one, any sizes.

    `add` prepares a group on the host and returns the matrices finished so
    far; `finish` flushes the rest. Matrices come back as (key, (V, V)
    float32) pairs, not necessarily in the order given: a bucket's call runs
    once it has `groups_per_call` groups. At most two calls are alive, and
    each bucket holds fewer than a call's groups, so memory stays bounded.
    """

    def __init__(self, *, data_range: float = 1.0, chromatic: bool = True):
        self._data_range, self._chromatic = data_range, chromatic
        self._waiting: dict[tuple[int, int], _Call] = {}
        self._in_flight: list[tuple[list, jax.Array]] = []

    def add(self, key, versions: np.ndarray) -> list:
        """Raises ValueError (bad shape, too small) before anything is kept."""
        maps = host_maps(versions, data_range=self._data_range, chromatic=self._chromatic)
        count, h, w = maps.luma.shape
        bucket = bucket_size(h * w)
        call = self._waiting.get((bucket, count))
        if call is None:
            call = _Call(bucket, groups_per_call(bucket, count), count, self._chromatic)
            self._waiting[bucket, count] = call
        call.put(key, maps)
        if len(call.keys) < len(call.pixels):
            return []
        del self._waiting[bucket, count]
        return self._dispatch(call)

    def finish(self) -> list:
        done = []
        for call in self._waiting.values():
            done += self._dispatch(call)
        self._waiting = {}
        return done + self._collect()

    def _dispatch(self, call: _Call) -> list:
        """Starts `call`, then waits for the ones before it: the host prepares
        the next call while this one runs."""
        started = (call.keys, call.run())
        done = self._collect()
        self._in_flight = [started]
        return done

    def _collect(self) -> list:
        done = []
        for keys, matrices in self._in_flight:
            done += zip(keys, np.asarray(matrices, np.float32))
        self._in_flight = []
        return done


def fsim_matrices(groups: Iterable[np.ndarray], *, data_range: float = 1.0,
                  chromatic: bool = True) -> list[np.ndarray]:
    """(V, V) FSIM matrix of each (V, H, W, C) group, in order; see `fsim.fsim_matrix`."""
    stream = MatrixStream(data_range=data_range, chromatic=chromatic)
    done = {}
    for index, versions in enumerate(groups):
        done.update(stream.add(index, versions))
    done.update(stream.finish())
    return [done[index] for index in range(len(done))]
