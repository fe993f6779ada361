"""The FSIM label pass (grepq_jax/training/labels/fsim_labels.py): part files that a
killed pass leaves and a rerun reads, progress, and real labels of photographs
of many sizes through a bounded number of programs."""

import logging


from test_data import make_config  # The data fields, shrunk for tests.
import numpy as np
import pytest
import skimage.data
from PIL import Image

from grepq_jax.training.labels import fsim
from grepq_jax.training.labels import fsim_bucketed
from grepq_jax.training.labels import fsim_labels
from grepq_jax.training.data import low_level_pipeline as low_level


class CountingStream:
    """Stands in for fsim_bucketed.MatrixStream: the matrix of version means,
    with every group labelled counted."""

    labelled = []

    def __init__(self, *, data_range, chromatic):
        self._range = data_range

    def add(self, key, versions):
        CountingStream.labelled.append(key)
        means = versions.mean(axis=(1, 2, 3)) / self._range
        return [(key, (1 - np.abs(means[:, None] - means[None, :])).astype(np.float32))]

    def finish(self):
        return []


@pytest.fixture
def counting(monkeypatch):
    CountingStream.labelled = []
    monkeypatch.setattr(fsim_bucketed, "MatrixStream", CountingStream)
    return CountingStream.labelled


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = skimage.data.astronaut()
    for index in range(6):  # six sizes
        crop = photo[20 * index:20 * index + 40 + index, :50 + 2 * index]
        Image.fromarray(crop).save(folder / f"photo{index}.png")
    return folder


def test_a_killed_pass_leaves_part_files_that_a_rerun_reads(photo_folder, tmp_path,
                                                            counting, monkeypatch):
    config, cache = make_config(path=str(photo_folder)), tmp_path / "cache"
    real_distort = low_level._distorted_versions

    def killed_at_the_fifth(read, set_name, seed, index):
        if index == 4:
            raise KeyboardInterrupt  # as a kill: nothing after this runs
        return real_distort(read, set_name, seed, index)

    monkeypatch.setattr(fsim_labels, "_SAVE_EVERY_S", 0.0)  # a part per matrix
    monkeypatch.setattr(fsim_labels.LabelCache, "save", lambda self: None)
    monkeypatch.setattr(low_level, "_distorted_versions", killed_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        low_level.create_low_level_dataset(config, seed=0, cache_dir=str(cache))
    assert counting == [0, 1, 2, 3]
    parts = sorted(path.name for path in cache.iterdir())
    assert len(parts) == 4 and all(name.endswith(".part") for name in parts)

    monkeypatch.undo()
    monkeypatch.setattr(fsim_bucketed, "MatrixStream", CountingStream)
    dataset = low_level.create_low_level_dataset(config, seed=0, cache_dir=str(cache))
    assert counting == [0, 1, 2, 3, 4, 5]  # only the last two were computed
    assert dataset.num_groups == 6
    assert [path.suffix for path in cache.iterdir()] == [".npz"]  # parts folded in
    fresh = low_level.create_low_level_dataset(config, seed=0)
    np.testing.assert_array_equal(dataset._similarities, fresh._similarities)


def test_a_torn_part_file_is_ignored_and_recomputed(photo_folder, tmp_path, counting,
                                                    caplog):
    config, cache = make_config(path=str(photo_folder)), tmp_path / "cache"
    low_level.create_low_level_dataset(config, seed=0, cache_dir=str(cache))
    (npz,) = cache.iterdir()
    npz.rename(cache / npz.name.replace(".npz", ".1-0.part"))
    (cache / npz.name.replace(".npz", ".1-1.part")).write_bytes(b"PK\x03\x04torn")
    with caplog.at_level(logging.WARNING):
        low_level.create_low_level_dataset(config, seed=0, cache_dir=str(cache))
    assert "Ignoring unreadable FSIM cache" in caplog.text
    assert counting == list(range(6))  # nothing recomputed: the good part held all
    assert [path.suffix for path in cache.iterdir()] == [".npz"]


def test_progress_bar_shows_groups_per_second_and_logs(photo_folder, counting,
                                                       capsys, caplog):
    # The absl logger itself: a command run earlier may have left it at WARNING.
    with caplog.at_level(logging.INFO, logger="absl"):
        low_level.create_low_level_dataset(make_config(path=str(photo_folder)), seed=0)
    bar = capsys.readouterr().err
    assert "FSIM labels" in bar and "6/6" in bar and "group/s" in bar
    assert "FSIM soft labels: 6/6 groups (0 cached), 0 skipped" in caplog.text


@pytest.mark.slow
def test_real_labels_of_many_sizes_equal_fsim_at_each_size(photo_folder):
    """The real FSIM: every group its own size, a few programs for all."""
    before = fsim_bucketed.compiled_programs()
    dataset = low_level.create_low_level_dataset(make_config(path=str(photo_folder)),
                                                 seed=0)
    shapes = {dataset.versions(g).shape[1:3] for g in range(dataset.num_groups)}
    buckets = {fsim_bucketed.bucket_size(h * w) for h, w in shapes}
    assert len(shapes) == 6 and len(buckets) < 6
    assert fsim_bucketed.compiled_programs() - before <= len(buckets)
    for group in (0, 5):
        versions = dataset.versions(group).astype(np.float32)[None] / 255
        direct = np.asarray(fsim.fsim_matrix(versions))[0]
        np.testing.assert_allclose(dataset._similarities[group], direct, atol=1e-5)


def test_a_group_too_small_for_fsim_is_skipped_naming_it(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()[:40, :60]).save(folder / "fine.png")
    Image.fromarray(skimage.data.astronaut()[:40, :5]).save(folder / "thin.png")
    dataset = low_level.create_low_level_dataset(
        make_config(path=str(folder), min_side=4), seed=0)
    assert dataset.num_groups == 1
    ((name, reason),) = dataset.skipped
    assert name.endswith("thin.png") and "too small" in reason
