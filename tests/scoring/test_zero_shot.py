"""Pristine patches and zero-shot scores against direct NumPy derivations.

Tolerances: float64 throughout, so 1e-10 relative unless a float32 feature
path is involved (1e-6).
"""
import io

import numpy as np
import pytest
import scipy.signal

from grepq_jax.scoring import patches
from grepq_jax.scoring import pristine
from grepq_jax.scoring import zero_shot

_LUMA = np.array([0.2989, 0.587, 0.114])  # torchvision Grayscale, written out.


def _random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _toy_features(patches):
    """A cheap stand-in encoder: per-channel means and stds, and mean |dx|."""
    p = np.asarray(patches, np.float64)
    dx = np.abs(np.diff(p.mean(-1), axis=2)).mean(axis=(1, 2))
    return np.concatenate([p.mean(axis=(1, 2)), p.std(axis=(1, 2)), dx[:, None]], 1)


def _bounded(features_fn, chunk):
    """features_fn that fails the test if it is ever given more than `chunk` patches."""
    def call(patches):
        assert patches.shape[0] <= chunk, patches.shape
        return features_fn(patches)
    return call


def _test_patches(size, seed=0):
    """[colour noise, half-desaturated, 0.9-saturated, its luma, flat red, flat grey]."""
    noise = np.random.default_rng(seed).uniform(size=(size, size, 3))
    luma = (noise @ _LUMA)[..., None] * np.ones(3)
    return np.stack([noise, 0.5 * noise + 0.5 * luma, 0.9 * noise + 0.1 * luma, luma,
                     np.ones((size, size, 3)) * [1.0, 0.0, 0.0],
                     np.full((size, size, 3), 0.5)])


# --- formulas -------------------------------------------------------------

def test_gaussian_distance_matches_explicit_inverse():
    rng = np.random.default_rng(0)
    dim = 7
    mu_r, mu_t = rng.normal(size=dim), rng.normal(size=dim)
    cov_r, cov_t = _random_spd(rng, dim), _random_spd(rng, dim)
    diff = mu_r - mu_t
    expected = np.sqrt(diff @ np.linalg.inv((cov_r + cov_t) / 2 + 1e-3 * np.eye(dim)) @ diff)
    got = zero_shot.gaussian_distance(mu_r, cov_r, mu_t, cov_t, ridge=1e-3)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert zero_shot.gaussian_distance(mu_r, cov_r, mu_r, cov_t) == 0.0


def test_low_level_score_formula():
    d = np.array([0.0, 1.0, 50.0, 100.0, 1e4])
    np.testing.assert_allclose(zero_shot.low_level_score(d),
                               1.0 - 1.0 / (1.0 + np.exp(-d / 100.0)), rtol=1e-12, atol=1e-300)
    assert zero_shot.low_level_score(0.0) == 0.5
    assert np.all(np.diff(zero_shot.low_level_score(d)) < 0)


def test_high_level_score_matches_cosine_margin_for_one_and_several_pairs():
    rng = np.random.default_rng(1)
    images, prompts = rng.normal(size=(4, 8)), rng.normal(size=(3, 2, 8))

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    for num_pairs in (1, 3):
        expected = []
        for image in images:
            margins = [cos(image, prompts[p, 0]) - cos(image, prompts[p, 1])
                       for p in range(num_pairs)]
            expected.append(1.0 / (1.0 + np.exp(-10.0 * np.mean(margins))))
        got = zero_shot.high_level_score(3.0 * images, prompts[:num_pairs])
        np.testing.assert_allclose(got, expected, rtol=1e-10)
    # The original's form: 1 / (1 + exp(10 (s_bad - s_good))) with good first.
    s_good, s_bad = cos(images[0], prompts[0, 0]), cos(images[0], prompts[0, 1])
    np.testing.assert_allclose(zero_shot.high_level_score(images[:1], prompts[:1])[0],
                               1.0 / (1.0 + np.exp(10.0 * (s_bad - s_good))), rtol=1e-10)


def test_combined_score_is_the_plain_sum():
    np.testing.assert_allclose(zero_shot.combined_score([0.2, 0.4], [0.5, 0.1]), [0.7, 0.5])


# --- cutting --------------------------------------------------------------

@pytest.mark.parametrize("height, width, rows, cols", [(150, 200, 2, 3), (200, 150, 3, 2),
                                                       (96, 96, 1, 1), (143, 191, 1, 2)])
def test_cut_patches_counts_and_positions_like_torch_unfold(height, width, rows, cols):
    # unfold(size, step) gives floor((L - size) / step) + 1 windows per axis.
    image = np.random.default_rng(2).uniform(size=(height, width, 3))
    patches = pristine.cut_patches(image, 96, 48)
    assert patches.shape == (rows * cols, 96, 96, 3)
    for k, patch in enumerate(patches):
        top, left = 48 * (k // cols), 48 * (k % cols)
        np.testing.assert_array_equal(patch, image[top:top + 96, left:left + 96])


def test_chunks_concatenate_to_all_patches_and_respect_the_bound():
    image = np.random.default_rng(3).uniform(size=(250, 300, 3))
    chunks = list(patches.iter_patch_chunks(image, 96, 48, 4))
    assert max(len(c) for c in chunks) == 4 and len(chunks) == 5  # 4 x 5 = 20 patches
    np.testing.assert_array_equal(np.concatenate(chunks), pristine.cut_patches(image, 96, 48))


def test_image_smaller_than_a_patch_is_an_error_naming_its_size():
    with pytest.raises(ValueError, match="80x120"):
        pristine.cut_patches(np.zeros((80, 120, 3)), 96, 48)


# --- sharpness, colourfulness, selection ----------------------------------

def test_sharpness_matches_zero_padded_gaussian_std_map():
    patches = np.random.default_rng(4).uniform(size=(3, 20, 20, 3))
    g = (np.arange(7) - 3.0) ** 2
    kernel = np.exp(-(g[None, :] + g[:, None]) / (2 * (7 / 6) ** 2))
    kernel /= kernel.sum()
    expected = []
    for patch in patches:
        grey = patch @ _LUMA
        mu = scipy.signal.correlate2d(grey, kernel, mode="same", boundary="fill")
        second = scipy.signal.correlate2d(grey**2, kernel, mode="same", boundary="fill")
        expected.append(np.sqrt(np.abs(second - mu**2)).sum())
    np.testing.assert_allclose(pristine.patch_sharpness(patches), expected, rtol=1e-10)


def test_colourfulness_matches_the_original_variant():
    patches = np.random.default_rng(5).uniform(size=(3, 10, 10, 3))
    expected = []
    for p in patches:
        rg = np.abs(p[..., 0] - p[..., 1])
        yb = np.abs(0.5 * (p[..., 0] + p[..., 1]) - p[..., 2])
        expected.append(np.sqrt(np.var(rg, ddof=1) + np.var(yb, ddof=1))
                        + np.sqrt(rg.mean()**2 + yb.mean()**2))
    np.testing.assert_allclose(pristine.patch_colourfulness(patches), expected, rtol=1e-10)
    assert pristine.patch_colourfulness(np.full((1, 4, 4, 3), 0.3))[0] == 0.0


def test_selection_keeps_sharp_colourful_patches_relative_to_survivors():
    patches = _test_patches(32)
    colourfulness = pristine.patch_colourfulness(patches)
    # Premise: flat red is the most colourful patch overall, so a colourfulness
    # peak taken over all patches (not over sharpness survivors) would drop
    # the colour-noise patches too.
    assert 0.8 * colourfulness[4] > colourfulness[0]
    mask = pristine.select_pristine_patches(patches, sharpness_fraction=0.75,
                                            colourfulness_fraction=0.8)
    np.testing.assert_array_equal(mask, [True, False, True, False, False, False])
    # Relative thresholds: a darker copy (both measures scale by 0.3) keeps
    # the same patches.
    np.testing.assert_array_equal(pristine.select_pristine_patches(0.3 * patches), mask)


def test_selection_of_an_all_flat_image_keeps_nothing():
    assert not pristine.select_pristine_patches(np.zeros((3, 8, 8, 3))).any()


# --- Gaussians and the pristine statistics --------------------------------

def test_fit_gaussian_matches_numpy():
    features = np.random.default_rng(6).normal(size=(30, 5)).astype(np.float32)
    mu, cov = pristine.fit_gaussian(features)
    assert mu.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(features.astype(np.float64), rowvar=False, ddof=1),
                               rtol=1e-10)
    with pytest.raises(ValueError, match="N >= 2"):
        pristine.fit_gaussian(features[:1])


def _tiled_image(patches, cols):
    rows = [np.concatenate(patches[r * cols:(r + 1) * cols], axis=1)
            for r in range(len(patches) // cols)]
    return np.concatenate(rows, axis=0)


def test_pristine_statistics_selects_per_image_and_fits_features():
    size = 32
    image = _tiled_image(_test_patches(size), cols=3)      # 64 x 96: 2 x 3 patches
    dark = 0.3 * image  # Would lose every patch under a corpus-wide maximum.
    stats = pristine.pristine_statistics([image, dark], _bounded(_toy_features, 1),
                                         patch_size=size, sharpness_fraction=0.75,
                                         colourfulness_fraction=0.8, chunk=1)
    kept = _test_patches(size)[[0, 2]]
    mu, cov = pristine.fit_gaussian(_toy_features(np.concatenate(
        [kept, 0.3 * kept]).astype(np.float32)))
    assert stats.num_patches == 4 and stats.patch_size == size
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-6)
    np.testing.assert_allclose(stats.cov, cov, rtol=1e-5, atol=1e-9)


def test_pristine_statistics_round_trip_through_npz():
    rng = np.random.default_rng(7)
    stats = pristine.PristineStatistics(mu=rng.normal(size=4), cov=_random_spd(rng, 4),
                                        num_patches=123, patch_size=96,
                                        sharpness_fraction=0.75, colourfulness_fraction=0.8)
    buffer = io.BytesIO()
    np.savez(buffer, **stats.to_arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as arrays:
        loaded = pristine.PristineStatistics.from_arrays(arrays)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert (loaded.num_patches, loaded.patch_size, loaded.sharpness_fraction,
            loaded.colourfulness_fraction) == (123, 96, 0.75, 0.8)


# --- whole-image low-level score ------------------------------------------

def _reference_stats(rng, dim=7):
    return pristine.PristineStatistics(mu=rng.normal(size=dim), cov=_random_spd(rng, dim),
                                       num_patches=50, patch_size=96,
                                       sharpness_fraction=0.75, colourfulness_fraction=0.8)


def test_image_low_level_score_composes_the_steps_with_bounded_chunks():
    rng = np.random.default_rng(8)
    stats = _reference_stats(rng)
    image = rng.uniform(size=(250, 300, 3)).astype(np.float32)
    score = zero_shot.image_low_level_score(image, _bounded(_toy_features, 3), stats,
                                            patch_size=96, stride=48, chunk=3)
    features = _toy_features(pristine.cut_patches(image, 96, 48)).astype(np.float32)
    mu_t, cov_t = features.astype(np.float64).mean(0), np.cov(features.T.astype(np.float64))
    diff = stats.mu - mu_t
    d = np.sqrt(diff @ np.linalg.inv((stats.cov + cov_t) / 2 + 1e-3 * np.eye(7)) @ diff)
    np.testing.assert_allclose(score, 1.0 - 1.0 / (1.0 + np.exp(-d / 100.0)), rtol=1e-6)


def test_image_low_level_score_rejects_too_few_patches_and_wrong_patch_size():
    stats = _reference_stats(np.random.default_rng(9))
    with pytest.raises(ValueError, match="100x120"):
        zero_shot.image_low_level_score(np.zeros((100, 120, 3)), _toy_features, stats,
                                        patch_size=96, stride=48, chunk=8)
    with pytest.raises(ValueError, match="patch_size 64"):
        zero_shot.image_low_level_score(np.zeros((300, 300, 3)), _toy_features, stats,
                                        patch_size=64, stride=32, chunk=8)


def test_integer_pixels_score_exactly_as_their_float_values():
    """uint8, uint16 and alpha pixels are made float a chunk at a time: the
    same bits as converting the whole image first."""
    from grepq_jax.formats import images  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(10)
    stats = _reference_stats(rng)
    for pixels in (rng.integers(0, 256, (200, 250, 3), np.uint8),
                   rng.integers(0, 65536, (200, 250, 3), np.uint16),
                   rng.integers(0, 256, (200, 250, 4), np.uint8)):
        as_float = images.to_float(pixels)
        assert as_float.shape == (200, 250, 3)
        got = zero_shot.image_low_level_score(pixels, _bounded(_toy_features, 3), stats,
                                              chunk=3)
        assert got == zero_shot.image_low_level_score(as_float, _toy_features, stats,
                                                      chunk=3)


def _saved_statistics(**changes):
    rng = np.random.default_rng(11)
    arrays = pristine.PristineStatistics(
        mu=rng.normal(size=4), cov=_random_spd(rng, 4), num_patches=20, patch_size=96,
        sharpness_fraction=0.75, colourfulness_fraction=0.8).to_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    return arrays


def _with_nan(array):
    array = array.copy()
    array.flat[-1] = np.nan
    return array


def _skewed(cov):
    cov = cov.copy()
    cov[0, 3] += 1e-3
    return cov


@pytest.mark.parametrize("changes, message", [
    ({"cov": None}, "no array 'cov'"),
    ({"mu": _with_nan}, "mu holds NaN or infinite values"),
    ({"cov": _with_nan}, "cov holds NaN or infinite values"),
    ({"mu": np.zeros((4, 1))}, r"mu must be a \(C,\) vector, got shape \[4, 1\]"),
    ({"mu": np.zeros(5)}, r"cov must be \(5, 5\) like mu, got shape \[4, 4\]"),
    ({"cov": _skewed}, "cov is not symmetric"),
    ({"mu": np.array(["a", "b"])}, "mu must be an array of floating, got <U1"),
    ({"num_patches": np.array(1)}, "num_patches must be >= 2"),
    ({"patch_size": np.array(0)}, "patch_size >= 1, got 20 and 0"),
    ({"patch_size": np.array([96])}, "patch_size must be a scalar of integer"),
    ({"sharpness_fraction": np.array(1.5)}, r"sharpness_fraction must be in \[0, 1\]"),
])
def test_damaged_statistics_are_refused_naming_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        pristine.PristineStatistics.from_arrays(_saved_statistics(**changes))
    assert pristine.PristineStatistics.from_arrays(_saved_statistics()).num_patches == 20
