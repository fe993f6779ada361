"""The stored versions' bytes, pinned: a faster distortion must not change them.

The label pass caches FSIM matrices of the 8-bit versions, so any change to
a version's bytes silently changes the soft labels. The hashes in
fixtures/distortion_hashes.json were made by
fixtures/make_distortion_hashes.py before the distortions were optimised.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import skimage.data

from grepq_jax.training.labels import distortions

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_distortion_hashes", FIXTURES / "make_distortion_hashes.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
PINNED = json.loads((FIXTURES / "distortion_hashes.json").read_text())


def uint8_versions(case):
    """The case through `make_versions_uint8`, the label pass's own path."""
    photo, top, left, height, width, set_name, index = reference.CASES[case]
    image = getattr(skimage.data, photo)()[top:top + height, left:left + width]
    return distortions.make_versions_uint8(
        image.astype(np.float32) / 255, set_name, np.random.default_rng([0, 0, index]))


@pytest.mark.parametrize("build", [reference.case_versions, uint8_versions],
                         ids=["make_versions", "make_versions_uint8"])
@pytest.mark.parametrize("case", sorted(reference.CASES))
def test_versions_have_their_pinned_bytes(case, build):
    recipe = ("reference",) + distortions.distortion_set(reference.CASES[case][5])
    versions = build(case)
    assert versions.dtype == np.uint8 and len(versions) == len(PINNED[case])
    changed = [recipe[i] for i, (got, want) in enumerate(
        zip(reference.version_hashes(versions), PINNED[case])) if got != want]
    assert not changed, f"{case}: versions changed: {changed}"


def test_a_changed_pixel_changes_the_hash():
    versions = reference.case_versions("astronaut_64x80_kadid")
    versions[3, 10, 10, 1] ^= 1
    assert reference.version_hashes(versions)[3] != PINNED["astronaut_64x80_kadid"][3]
    assert reference.version_hashes(versions)[2] == PINNED["astronaut_64x80_kadid"][2]


def test_a_version_that_is_not_finite_makes_the_group_unusable(monkeypatch):
    """The label pass skips such a group by name (UnusableImageError), never stores it."""
    from grepq_jax.formats import images
    monkeypatch.setitem(distortions.DISTORTIONS, "jpeg",
                        lambda image, level, rng: np.full_like(image, np.nan))
    with pytest.raises(images.UnusableImageError, match="not finite"):
        distortions.make_versions_uint8(np.full((8, 8, 3), 0.5, np.float32), "livefb",
                                        np.random.default_rng(0))
