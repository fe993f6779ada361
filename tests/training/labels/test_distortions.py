"""Tests of the distortion registry: contract, seeding, and that levels mean severity."""
import numpy as np
import pytest
import skimage.data

from grepq_jax.training.labels import distortions

LEVELS = range(1, distortions.NUM_LEVELS + 1)
# Distortions whose output depends on the generator for every level.
STOCHASTIC = ("motion_blur", "color_shift", "white_noise", "white_noise_color",
              "impulse_noise", "multiplicative_noise", "jitter",
              "non_eccentricity_patch", "color_block")


@pytest.fixture(scope="module")
def photo():
    """A 64 x 80 crop of a natural photograph: edges, texture and flat areas."""
    return skimage.data.astronaut()[120:184, 160:240].astype(np.float32) / 255


def high_frequency_energy(image):
    return np.mean(np.diff(image, axis=0) ** 2) + np.mean(np.diff(image, axis=1) ** 2)


def mse(a, b):
    return float(np.mean((a - b) ** 2))


def by_level(name, image, seed=0):
    return [distortions.DISTORTIONS[name](image, level, np.random.default_rng(seed))
            for level in LEVELS]


def strictly_increasing(values):
    return all(b > a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("name", sorted(distortions.DISTORTIONS))
def test_every_distortion_keeps_the_contract_at_every_level(name, photo):
    original = photo.copy()
    outputs = by_level(name, photo)
    for output in outputs:
        assert output.shape == photo.shape and output.dtype == np.float32
        assert output.min() >= 0 and output.max() <= 1
    np.testing.assert_array_equal(photo, original)  # Input untouched.
    # The strongest level visibly changes the image (1/255 RMS at least).
    assert mse(outputs[-1], photo) > (1 / 255) ** 2


@pytest.mark.parametrize("name", sorted(distortions.DISTORTIONS))
def test_distortions_are_reproducible_from_a_seed(name, photo):
    first = by_level(name, photo, seed=3)
    again = by_level(name, photo, seed=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_distortions_differ_across_seeds(name, photo):
    level = distortions.NUM_LEVELS
    one = distortions.DISTORTIONS[name](photo, level, np.random.default_rng(1))
    two = distortions.DISTORTIONS[name](photo, level, np.random.default_rng(2))
    assert not np.array_equal(one, two)


@pytest.mark.parametrize("name", ["gaussian_blur", "lens_blur", "motion_blur"])
def test_blur_removes_more_high_frequencies_at_higher_levels(name, photo):
    energies = [high_frequency_energy(photo)] + [
        high_frequency_energy(o) for o in by_level(name, photo)]
    # Gaussian level 1 (sigma 0.1) is KADID's near-identity: allow a tie there.
    assert energies[1] <= energies[0]
    assert strictly_increasing([-e for e in energies[1:]])


def test_sharpen_adds_high_frequencies_with_level(photo):
    energies = [high_frequency_energy(o) for o in by_level("sharpen", photo)]
    assert energies[0] > high_frequency_energy(photo)
    assert strictly_increasing(energies)


@pytest.mark.parametrize("name", ["jpeg", "jpeg2000"])
def test_compression_error_grows_with_level(name):
    # 128 px: at 96 px JPEG 2000's two top ratios both hit the codec's floor.
    image = skimage.data.astronaut()[64:192, 128:256].astype(np.float32) / 255
    errors = [mse(o, image) for o in by_level(name, image)]
    assert strictly_increasing(errors)
    assert errors[0] > 0


@pytest.mark.parametrize("name", ["white_noise", "white_noise_color",
                                  "multiplicative_noise"])
def test_noise_std_grows_with_level(name):
    grey = np.full((64, 64, 3), 0.5, np.float32)  # No clipping, no texture.
    stds = [float(np.std(o - grey)) for o in by_level(name, grey)]
    assert strictly_increasing(stds)


def test_white_noise_has_the_stated_variance():
    grey = np.full((128, 128, 3), 0.5, np.float32)
    noisy = distortions.white_noise(grey, 5, np.random.default_rng(0))
    # Variance 0.01; 49k samples put the std's sampling error near 0.3 %.
    assert np.std(noisy - grey) == pytest.approx(0.1, rel=0.02)


def test_impulse_noise_hits_a_growing_fraction():
    grey = np.full((64, 64, 3), 0.5, np.float32)
    fractions = [float(np.mean(o != grey)) for o in by_level("impulse_noise", grey)]
    assert strictly_increasing(fractions)
    assert fractions[-1] == pytest.approx(0.03, abs=0.01)


def test_contrast_change_and_brightness_move_the_way_they_say(photo):
    stds = [float(np.std(o)) for o in by_level("contrast_change", photo)]
    assert stds[0] < np.std(photo) and strictly_increasing([-s for s in stds])
    brighter = [float(np.mean(o)) for o in by_level("brighten", photo)]
    assert brighter[0] > photo.mean() and strictly_increasing(brighter)
    darker = [float(np.mean(o)) for o in by_level("darken", photo)]
    assert darker[0] < photo.mean() and strictly_increasing([-d for d in darker])


@pytest.mark.parametrize("name", ["color_desaturation", "color_oversaturation",
                                  "color_diffusion", "color_quantization",
                                  "quantization"])
def test_colour_and_quantisation_error_grows_with_level(name, photo):
    assert strictly_increasing([mse(o, photo) for o in by_level(name, photo)])


def test_levels_outside_one_to_five_are_rejected(photo):
    for level in (0, 6):
        with pytest.raises(ValueError, match="level"):
            distortions.gaussian_blur(photo, level, np.random.default_rng(0))


def test_make_versions_puts_the_reference_first_in_recipe_order(photo):
    versions = distortions.make_versions(photo, "livefb", np.random.default_rng(0))
    assert versions.shape == (9,) + photo.shape and versions.dtype == np.float32
    np.testing.assert_array_equal(versions[0], photo)
    for version, (name, level) in zip(versions[1:], distortions.DISTORTION_SETS["livefb"]):
        if name not in STOCHASTIC:
            np.testing.assert_array_equal(
                version, distortions.DISTORTIONS[name](photo, level, None))


def test_make_versions_depends_only_on_the_seed(photo):
    def versions(seed):
        return distortions.make_versions(photo, "livefb", np.random.default_rng([seed, 7]))
    np.testing.assert_array_equal(versions(0), versions(0))
    assert not np.array_equal(versions(0), versions(1))


def test_unknown_set_names_the_known_ones(photo):
    with pytest.raises(ValueError, match="livefb"):
        distortions.make_versions(photo, "tid2013", np.random.default_rng(0))


def test_livefb_is_four_types_at_two_levels():
    recipe = distortions.DISTORTION_SETS["livefb"]
    assert len(recipe) == 8 and len({name for name, _ in recipe}) == 4


def test_kadid_set_covers_every_family_at_five_levels():
    families = distortions.KADID_FAMILIES
    assert len(families) == 7 and all(families.values())
    listed = [name for family in families.values() for name in family]
    assert sorted(listed) == sorted(distortions.DISTORTIONS)  # No type unfiled.
    recipe = distortions.DISTORTION_SETS["kadid"]
    assert sorted(recipe) == sorted((name, level) for name in listed for level in LEVELS)
