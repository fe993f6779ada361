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

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_distortion_hashes", FIXTURES / "make_distortion_hashes.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
PINNED = json.loads((FIXTURES / "distortion_hashes.json").read_text())


@pytest.mark.parametrize("case", sorted(reference.CASES))
def test_versions_have_their_pinned_bytes(case):
    from grepq_jax import distortions
    _, _, _, _, _, set_name, _ = reference.CASES[case]
    recipe = ("reference",) + distortions.distortion_set(set_name)
    versions = reference.case_versions(case)
    assert len(versions) == len(PINNED[case])
    changed = [recipe[i] for i, (got, want) in enumerate(
        zip(reference.version_hashes(versions), PINNED[case])) if got != want]
    assert not changed, f"{case}: versions changed: {changed}"


def test_a_changed_pixel_changes_the_hash():
    versions = reference.case_versions("astronaut_64x80_kadid")
    versions[3, 10, 10, 1] ^= 1
    assert reference.version_hashes(versions)[3] != PINNED["astronaut_64x80_kadid"][3]
    assert reference.version_hashes(versions)[2] == PINNED["astronaut_64x80_kadid"][2]
