"""FSIM / FSIMc against piq (stored and live), MATLAB values, and properties.

Tolerance against piq: 1e-4 absolute, the project's contract for replacing
piq in the data pipeline, for live comparisons (any piq and torch version).
Against the stored scores (fixed piq 0.8.0 and torch 2.14 outputs; only our
side can change) the limit is 2e-6: both sides compute in float32 with
different FFT libraries and summation orders, and the largest difference
measured over every stored case is 1.8e-7, so 10x headroom.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import skimage.data
from PIL import Image

from grepq_jax.training.labels import fsim as fsim_lib
from grepq_jax.training.labels.fsim import check_images, fsim, fsim_matrix

PIQ_TOLERANCE = 1e-4
STORED_TOLERANCE = 2e-6
FIXTURE = pathlib.Path(__file__).parents[2] / "fixtures" / "fsim_reference.npz"
FIXTURE_255 = FIXTURE.with_name("fsim_255_reference.npz")

# One compiled function per static setting, shared by the tests (and their
# shapes), to keep compile time down.
fsim_jit = jax.jit(fsim, static_argnames=("data_range", "chromatic"))
fsim_matrix_jit = jax.jit(fsim_matrix, static_argnames=("data_range", "chromatic"))


def photo(height=64, width=72, channels=3):
    """A crop of a real photograph, (1, height, width, channels) in [0, 1]."""
    if height <= 240:
        image = skimage.data.chelsea()[60 : 60 + height, 150 : 150 + width]
    else:  # up to 400 x 600
        image = skimage.data.coffee()[:height, :width]
    image = image.astype(np.float32) / 255
    if channels == 1:
        image = image.mean(axis=-1, keepdims=True)
    return image[None]


def blurred(image, sigma):
    return scipy.ndimage.gaussian_filter(image, (0, sigma, sigma, 0))


def noisy(image, sigma, seed=0):
    noise = np.random.default_rng(seed).standard_normal(image.shape)
    return np.clip(image + sigma * noise, 0, 1).astype(np.float32)


# --- agreement with piq ------------------------------------------------------


def _fixture_cases():
    """Case names in the stored fixture."""
    with np.load(FIXTURE) as data:
        return sorted({key.split("__")[0] for key in data.files if "__" in key})


def _fixture_checks():
    """(case, chromatic) pairs: FSIM for every case, FSIMc for RGB ones."""
    with np.load(FIXTURE) as data:
        return [
            pytest.param(
                case, chromatic, id=f"{case}-{'FSIMc' if chromatic else 'FSIM'}"
            )
            for case in _fixture_cases()
            for chromatic in (False, True)
            if not chromatic or data[f"{case}__images"].shape[-1] == 3
        ]


@pytest.mark.parametrize("case,chromatic", _fixture_checks())
def test_matches_stored_piq_scores(case, chromatic):
    with np.load(FIXTURE) as data:
        images = data[f"{case}__images"].astype(np.float32) / 255
        expected = data[f"{case}__fsimc" if chromatic else f"{case}__fsim"]
    pristine = np.repeat(images[:1], len(images) - 1, axis=0)
    ours = fsim_jit(images[1:], pristine, chromatic=chromatic)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=STORED_TOLERANCE)


@pytest.mark.parametrize("chromatic", [False, True], ids=["FSIM", "FSIMc"])
def test_matches_stored_piq_scores_at_data_range_255(chromatic):
    """8-bit images as they are, 0-255 (tests/fixtures/make_fsim_255_reference.py)."""
    with np.load(FIXTURE_255) as stored, np.load(FIXTURE) as data:
        images = data[f"{stored['case']}__images"].astype(np.float32)
        expected = stored["fsimc" if chromatic else "fsim"]
    pristine = np.repeat(images[:1], len(images) - 1, axis=0)
    ours = fsim_jit(images[1:], pristine, data_range=255.0, chromatic=chromatic)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=STORED_TOLERANCE)


def test_fixture_covers_both_downsampling_factors():
    factors = set()
    with np.load(FIXTURE) as data:
        for case in _fixture_cases():
            height, width = data[f"{case}__images"].shape[1:3]
            factors.add(fsim_lib.downsampling_factor(height, width))
    assert factors == {1, 2}


@pytest.mark.parametrize("chromatic", [False, True], ids=["FSIM", "FSIMc"])
@pytest.mark.parametrize(
    "height,width,data_range",
    [
        (70, 83, 1.0),
        (70, 83, 255.0),
        (390, 401, 1.0),  # 2x down-sampling
    ],
)
def test_matches_live_piq(height, width, data_range, chromatic):
    piq = pytest.importorskip("piq")
    torch = pytest.importorskip("torch")
    x = photo(height, width)
    ys = np.concatenate([blurred(x, 1.2), noisy(x, 0.05), x * 0.7 + 0.1])
    xs = np.repeat(x, len(ys), axis=0)
    with torch.no_grad():
        to_nchw = lambda a: torch.from_numpy(a * data_range).permute(0, 3, 1, 2)
        expected = piq.fsim(
            to_nchw(ys),
            to_nchw(xs),
            data_range=data_range,
            chromatic=chromatic,
            reduction="none",
        ).numpy()
    ours = fsim_jit(
        ys * data_range, xs * data_range, data_range=data_range, chromatic=chromatic
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=PIQ_TOLERANCE)


# Published scores of the original MATLAB code, as piq's own tests quote
# them. The images live in piq's repository (tests/assets), not in its
# package; point PIQ_TEST_ASSETS at that folder to run this.
MATLAB_ASSETS = os.environ.get("PIQ_TEST_ASSETS", "")


@pytest.mark.skipif(
    not os.path.isdir(MATLAB_ASSETS),
    reason="set PIQ_TEST_ASSETS to piq's tests/assets folder",
)
@pytest.mark.parametrize(
    "distorted,pristine,chromatic,expected",
    [
        ("goldhill_jpeg.gif", "goldhill.gif", False, 0.89691),
        ("i01_01_5.bmp", "I01.BMP", False, 0.93674),
        ("i01_01_5.bmp", "I01.BMP", True, 0.92587),
    ],
)
def test_matches_published_matlab_scores(distorted, pristine, chromatic, expected):
    def load(name):
        """(1, H, W, C) float32 on 0-255; the GIFs are grey palette images."""
        image = Image.open(os.path.join(MATLAB_ASSETS, name))
        image = np.asarray(
            image.convert("L" if name.endswith(".gif") else "RGB"), np.float32
        )
        return (image[..., None] if image.ndim == 2 else image)[None]

    score = fsim_jit(
        load(distorted), load(pristine), data_range=255.0, chromatic=chromatic
    )
    np.testing.assert_allclose(score, [expected], atol=1e-4)


# --- properties --------------------------------------------------------------


@pytest.mark.parametrize("chromatic", [False, True])
def test_identical_images_score_one(chromatic):
    x = photo()
    np.testing.assert_allclose(fsim_jit(x, x, chromatic=chromatic), [1.0], atol=1e-6)


def test_symmetric():
    x, y = photo(), noisy(photo(), 0.08)
    np.testing.assert_allclose(fsim_jit(x, y), fsim_jit(y, x), atol=1e-6)


@pytest.mark.parametrize("chromatic", [False, True])
@pytest.mark.parametrize(
    "distort,strengths",
    [
        (blurred, (0.5, 1.0, 2.0, 4.0)),  # Gaussian sigma, pixels
        (noisy, (0.01, 0.03, 0.1, 0.3)),  # noise sigma, fraction of white
    ],
    ids=["blur", "noise"],
)
def test_decreases_with_distortion_strength(distort, strengths, chromatic):
    x = photo()
    versions = np.concatenate([distort(x, s) for s in strengths])
    scores = np.asarray(
        fsim_jit(versions, np.repeat(x, len(strengths), axis=0), chromatic=chromatic)
    )
    assert np.all(np.diff(scores) < 0) and scores[0] < 1.0, scores


def test_data_range_only_rescales():
    x, y = photo(), blurred(photo(), 1.5)
    np.testing.assert_allclose(
        fsim_jit(x * 255, y * 255, data_range=255.0), fsim_jit(x, y), atol=1e-6
    )


def test_single_channel_is_luminance_fsim():
    grey = photo(channels=1)
    as_rgb = np.repeat(grey, 3, axis=-1)
    blur_grey = blurred(grey, 1.5)
    # Y of a grey RGB image is the grey value (the Y weights sum to 1).
    np.testing.assert_allclose(
        fsim_jit(grey, blur_grey, chromatic=False),
        fsim_jit(as_rgb, np.repeat(blur_grey, 3, axis=-1), chromatic=False),
        atol=1e-5,
    )


def test_works_under_vmap():
    x = np.concatenate([photo(), photo() * 0.9])
    y = np.concatenate([blurred(photo(), 1.0), noisy(photo(), 0.05)])
    batched = fsim_jit(x, y)
    mapped = jax.jit(jax.vmap(fsim))(x[:, None], y[:, None])[:, 0]
    np.testing.assert_allclose(mapped, batched, atol=1e-6)


def test_gradient_is_finite_and_points_uphill():
    x, y = photo(48, 48), blurred(photo(48, 48), 1.5)
    loss = lambda a: fsim(a, x)[0]
    value, grad = jax.jit(jax.value_and_grad(loss))(y)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    step = 1e-3 / np.abs(grad).max()
    assert jax.jit(loss)(y + step * grad) > value


# --- the pairwise matrix -----------------------------------------------------


def _groups():
    """(2, 4, 64, 72, 3): two photos, each with three distorted versions."""
    groups = []
    for image in (photo(), photo()[:, ::-1] * 0.8 + 0.1):
        groups.append(
            np.concatenate(
                [image, blurred(image, 1.5), noisy(image, 0.06), image * 0.6]
            )
        )
    return np.stack(groups)


def test_matrix_is_symmetric_with_unit_diagonal():
    matrix = np.asarray(fsim_matrix_jit(_groups()))
    assert matrix.shape == (2, 4, 4)
    np.testing.assert_array_equal(matrix, np.swapaxes(matrix, 1, 2))
    np.testing.assert_array_equal(np.diagonal(matrix, axis1=1, axis2=2), 1.0)
    assert np.all(matrix[:, ~np.eye(4, dtype=bool)] < 1.0)


def test_matrix_entries_equal_pairwise_fsim():
    groups = _groups()
    matrix = np.asarray(fsim_matrix_jit(groups))
    rows, cols = np.triu_indices(4, k=1)
    for g in range(2):
        pairwise = fsim_jit(groups[g, rows], groups[g, cols])
        np.testing.assert_allclose(matrix[g, rows, cols], pairwise, atol=1e-6)


def test_matrix_computes_features_once_per_image():
    # One pass of the per-image feature scan over G * V images, not per pair.
    jaxpr = jax.make_jaxpr(fsim_matrix)(_groups())
    scans = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
    assert [scan.params["length"] for scan in scans] == [2 * 4]


def test_matrix_of_single_version_is_one():
    np.testing.assert_array_equal(fsim_matrix_jit(_groups()[:, :1]), np.ones((2, 1, 1)))


# --- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape,y_shape,message",
    [
        ((64, 72, 3), (64, 72, 3), "rank 4"),
        ((1, 64, 72, 3), (1, 64, 70, 3), "same shape"),
        ((1, 64, 72, 4), (1, 64, 72, 4), "1 or 3 channels"),
        ((1, 5, 72, 3), (1, 5, 72, 3), "too small"),
    ],
)
def test_fsim_refuses_bad_shapes(x_shape, y_shape, message):
    with pytest.raises(ValueError, match=message):
        fsim_jit(jnp.zeros(x_shape), jnp.zeros(y_shape))


def test_fsimc_refuses_single_channel():
    grey = photo(channels=1)
    with pytest.raises(ValueError, match="chromatic=False"):
        fsim_jit(grey, grey)


def test_matrix_refuses_wrong_rank():
    with pytest.raises(ValueError, match="rank 5"):
        fsim_matrix_jit(jnp.zeros((4, 64, 72, 3)))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, 1.5, -0.1])
def test_bad_pixels_give_nan_for_their_pair_only(bad_value):
    x = np.concatenate([photo(), photo()])
    y = np.concatenate([blurred(photo(), 1.0), blurred(photo(), 1.0)])
    y[1, 10, 20, 1] = bad_value
    scores = np.asarray(fsim_jit(x, y))
    assert np.isfinite(scores[0]) and np.isnan(scores[1])


def test_bad_version_gives_nan_row_and_column():
    groups = _groups()
    groups[1, 2, 5, 5, 0] = np.nan
    matrix = np.asarray(fsim_matrix_jit(groups))
    assert np.all(np.isfinite(matrix[0]))
    assert np.all(np.isnan(matrix[1, 2])) and np.all(np.isnan(matrix[1, :, 2]))
    others = np.delete(np.delete(matrix[1], 2, axis=0), 2, axis=1)
    assert np.all(np.isfinite(others))


@pytest.mark.parametrize(
    "bad_value,message",
    [
        (np.nan, "non-finite"),
        (np.inf, "non-finite"),
        (1.5, r"\[0, 1.0\]"),
        (-0.1, r"\[0, 1.0\]"),
    ],
)
def test_check_images_names_the_input(bad_value, message):
    images = photo()
    check_images(images, 1.0, name="versions")  # valid: no error
    images[0, 3, 4, 0] = bad_value
    with pytest.raises(ValueError, match=f"versions.*{message}"):
        check_images(images, 1.0, name="versions")


# --- internals worth pinning down --------------------------------------------


# Rows of 1500 and 40000 pack fewer counts per int32 (2 and 1 cuts a step).
@pytest.mark.parametrize("shape", [(3, 7, 9), (2, 64, 64), (2, 4, 1500), (2, 2, 40000)])
def test_lower_median_matches_sorting(shape):
    rng = np.random.default_rng(1)
    values = rng.random(shape).astype(np.float32) ** 4 * 1e4
    values[0] = np.round(values[0])  # ties
    flat = np.sort(values.reshape(shape[0], -1), axis=-1)
    expected = flat[:, (flat.shape[1] - 1) // 2]
    np.testing.assert_array_equal(jax.jit(fsim_lib._lower_median)(values), expected)
