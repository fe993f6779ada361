"""Cached FSIM matrices are checked when read, as fresh ones are.

A cache file is damaged the way it happens (rewritten with matrices of the
wrong size, or with NaN ones); creating the dataset again must recompute
those entries, say so naming the cache file, and give the same labels as the
first pass.
"""

import io
import logging

import ml_collections
import numpy as np
import pytest

from grepq_jax.training.data import low_level_pipeline as low_level


def data_config(**fields):
    """The tiny config's data fields on the embedded photographs."""
    config = dict(path="", layout="pristine", distortions="livefb",
                  fragment_grid=2, fragment_size=16, min_side=32, max_side=48,
                  scales=(1.0,), fsim_chromatic=True, prefetch=2, workers=0)
    config.update(fields)
    return ml_collections.ConfigDict(config)


def labels(dataset) -> np.ndarray:
    return dataset._similarities  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def first_pass(tmp_path_factory):
    """(cache folder, labels) of a pass that wrote the cache."""
    cache = tmp_path_factory.mktemp("fsim_cache")
    dataset = low_level.create_low_level_dataset(data_config(), seed=0,
                                                 cache_dir=str(cache))
    return cache, labels(dataset)


def rewrite(cache_file, change):
    """Rewrites the .npz with `change(matrices)` in place of its matrices."""
    with np.load(cache_file, allow_pickle=False) as stored:
        keys, matrices = stored["keys"], stored["matrices"]
    buffer = io.BytesIO()
    np.savez(buffer, keys=keys, matrices=change(matrices))
    cache_file.write_bytes(buffer.getvalue())


DAMAGES = {
    "wrong size": lambda m: m[:, :-2, :-2],
    "NaN": lambda m: np.where(np.arange(len(m))[:, None, None] % 2 == 0, np.nan, m
                              ).astype(np.float32),
    "float64": lambda m: m.astype(np.float64),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_bad_cached_matrices_are_recomputed_naming_the_file(
        first_pass, tmp_path, monkeypatch, caplog, damage):
    source, expected = first_pass
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    [cache_file] = source.glob("fsim_labels_*.npz")
    copy = tmp_path / "cache" / cache_file.name
    copy.write_bytes(cache_file.read_bytes())
    rewrite(copy, DAMAGES[damage])

    with caplog.at_level(logging.WARNING):
        dataset = low_level.create_low_level_dataset(
            data_config(), seed=0, cache_dir="cache")  # relative, as typed
    np.testing.assert_array_equal(labels(dataset), expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"FSIM cache cache/{cache_file.name}" in w and "recomputing" in w
               for w in warnings), warnings
    # The file holds good matrices again: a third pass reads them silently.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = low_level.create_low_level_dataset(data_config(), seed=0,
                                                   cache_dir="cache")
    np.testing.assert_array_equal(labels(again), expected)
    assert not [r for r in caplog.records if "FSIM cache" in r.getMessage()]
