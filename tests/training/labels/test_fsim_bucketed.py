"""FSIM matrices at any size (grepq_jax/training/labels/fsim_bucketed.py): piq parity at odd
sizes, exactness of the padding, and a bounded number of compiled programs.

Tolerances: 1e-4 absolute against live piq (the project's contract for
replacing piq); against the stored piq matrices (piq 0.8.0, torch 2.14,
tests/fixtures/make_fsim_sizes_reference.py) 2e-6, as in test_fsim.py: both
sides compute in float32 with different FFT libraries and summation orders,
and the largest difference measured over the stored cases is 3.6e-7.
Against `fsim.fsim_matrix` at the image's own shape 1e-6: the same float32
arithmetic, padded and flattened, with reductions in another order.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
import skimage.data

from grepq_jax.training.labels import fsim
from grepq_jax.training.labels import fsim_bucketed

PIQ_TOLERANCE = 1e-4
STORED_TOLERANCE = 2e-6
SAME_ARITHMETIC_TOLERANCE = 1e-6
FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_fsim_sizes_reference", FIXTURES / "make_fsim_sizes_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def photo_group(height, width, count=3, seed=0):
    """(count, H, W, 3) uint8: a photograph and noisy copies of it."""
    image = skimage.data.astronaut()[:height, :width].astype(np.float64)
    rng = np.random.default_rng(seed)
    versions = [image] + [image + rng.normal(0, 4.0 * k, image.shape)
                          for k in range(1, count)]
    return np.clip(np.round(np.stack(versions)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stored_cases():
    names = list(reference.CASES)
    groups = [reference.case_versions(name) for name in names]
    with np.load(FIXTURES / "fsim_sizes_reference.npz") as stored:
        for name, versions in zip(names, groups):
            assert reference.checksum(versions) == str(stored[f"{name}__sha256"]), (
                f"{name}: the inputs changed; regenerate the fixture")
        expected = {name: (stored[f"{name}__fsim"], stored[f"{name}__fsimc"])
                    for name in names}
    # All cases in one stream, as the label pass hands them in.
    grey = [name for name, versions in zip(names, groups) if versions.shape[-1] == 1]
    colour = [name for name in names if name not in grey]
    computed = {}
    for chromatic in (False, True):
        chosen = colour if chromatic else names
        matrices = fsim_bucketed.fsim_matrices(
            [groups[names.index(name)] for name in chosen], data_range=255,
            chromatic=chromatic)
        for name, matrix in zip(chosen, matrices):
            computed[name, chromatic] = matrix
    return expected, computed


@pytest.mark.slow
@pytest.mark.parametrize("name", list(reference.CASES))
def test_matches_stored_piq_matrices_at_odd_sizes(stored_cases, name):
    expected, computed = stored_cases
    for chromatic, piq_matrix in zip((False, True), expected[name]):
        if np.isnan(piq_matrix).all():  # FSIMc of a grey image: not defined.
            assert (name, chromatic) not in computed
            continue
        np.testing.assert_allclose(computed[name, chromatic], piq_matrix,
                                   rtol=0, atol=STORED_TOLERANCE)


def test_stored_cases_cover_three_downsampling_factors():
    factors = {fsim.downsampling_factor(h, w) for h, w, _ in reference.CASES.values()}
    assert factors == {1, 2, 3}


@pytest.mark.slow
@pytest.mark.parametrize("height,width", [(53, 71), (389, 263)])
def test_matches_live_piq(height, width):
    piq = pytest.importorskip("piq")
    torch = pytest.importorskip("torch")
    versions = photo_group(height, width)
    rows, cols = np.triu_indices(len(versions), k=1)
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        scores = piq.fsim(to_tensor(versions[rows]), to_tensor(versions[cols]),
                          data_range=1.0, reduction="none").numpy()
    (matrix,) = fsim_bucketed.fsim_matrices([versions], data_range=255)
    np.testing.assert_allclose(matrix[rows, cols], scores, rtol=0, atol=PIQ_TOLERANCE)


@pytest.mark.slow
def test_equals_the_per_shape_program_for_groups_of_mixed_sizes():
    groups = [photo_group(h, w, seed=h) for h, w in [(45, 61), (61, 45), (70, 99), (44, 60)]]
    matrices = fsim_bucketed.fsim_matrices(groups, data_range=255)
    per_shape = jax.jit(fsim.fsim_matrix, static_argnames="data_range")
    for versions, matrix in zip(groups, matrices):
        direct = np.asarray(per_shape(versions[None].astype(np.float32), data_range=255.0))[0]
        np.testing.assert_allclose(matrix, direct, rtol=0, atol=SAME_ARITHMETIC_TOLERANCE)
    assert len({m[0, 1] for m in matrices}) == 4  # Each group its own matrix, in order.


@pytest.mark.slow
def test_compiled_programs_stay_bounded_as_distinct_sizes_grow():
    # 30 distinct shapes with 2,600 to 4,000 pixels after down-sampling fall in
    # three buckets (3,072, 3,584 and 4,096 pixels): at most 3 new programs.
    rng = np.random.default_rng(0)
    shapes = set()
    while len(shapes) < 30:
        height = int(rng.integers(40, 80))
        width = int(rng.integers(2600, 4000)) // height
        shapes.add((height, width))
    shapes = sorted(shapes)
    buckets = {fsim_bucketed.bucket_size(h * w) for h, w in shapes}
    assert buckets == {3072, 3584, 4096}
    before = fsim_bucketed.compiled_programs()
    seen = []
    for first in (0, 10):  # 10 shapes, then 20 more
        groups = [photo_group(h, w, count=2) for h, w in shapes[first:first + 10 + first]]
        fsim_bucketed.fsim_matrices(groups, data_range=255)
        seen.append(fsim_bucketed.compiled_programs() - before)
    assert seen[-1] <= len(buckets) and seen[0] <= seen[-1]


def test_bucket_ladder():
    for pixels in [1, 36, 511, 512, 513, 4000, 76800, 612800, 10**7]:
        bucket = fsim_bucketed.bucket_size(pixels)
        assert bucket >= pixels and bucket % 128 == 0
        assert bucket <= max(512, 1.25 * pixels + 128 * 8)
    ladder = {fsim_bucketed.bucket_size(p) for p in range(512, 2**20 + 1, 97)}
    assert len(ladder) == 4 * 11 + 1  # four sizes an octave, up to 2**20 itself
    assert fsim_bucketed.groups_per_call(4096, 9) > 1  # several groups a call


def test_bad_pixels_give_nan_for_that_version_only():
    versions = photo_group(50, 66).astype(np.float32) / 255
    versions[1, 10, 10, 0] = np.nan
    versions[2, 0, 0, 1] = 1.5
    (matrix,) = fsim_bucketed.fsim_matrices([versions])
    assert np.isnan(matrix[1]).all() and np.isnan(matrix[:, 2]).all()
    assert matrix[0, 0] == 1 and np.isnan(matrix[0, 1])


def test_too_small_or_odd_shapes_are_refused():
    stream = fsim_bucketed.MatrixStream(data_range=255)
    with pytest.raises(ValueError, match="too small"):
        stream.add(0, photo_group(5, 40))
    with pytest.raises(ValueError, match="channels"):
        stream.add(0, photo_group(40, 40)[..., :2])
    assert stream.finish() == []


@pytest.mark.parametrize("factor", [1, 2, 3, 6])
def test_host_pooling_of_bytes_is_exact(factor):
    """8-bit pixels pooled as integers: every block sum exact, whatever the order."""
    versions = np.random.default_rng(factor).integers(
        0, 256, (2, 6 * factor + 5, 4 * factor + 3, 3), dtype=np.uint8)
    h, w = versions.shape[1] // factor, versions.shape[2] // factor
    blocks = versions[:, : h * factor, : w * factor].astype(np.int64).reshape(
        2, h, factor, w, factor, 3).sum(axis=(2, 4))
    sums = fsim_bucketed._pixel_sums(versions, factor)
    assert sums.dtype == np.float32
    np.testing.assert_array_equal(sums, blocks)
