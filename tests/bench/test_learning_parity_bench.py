"""bench_learning_parity's pieces: the shared files, the restated loader, the shim."""
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("piq")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

import original_llm_restated  # noqa: E402
import original_repo_shim  # noqa: E402
import predistorted_corpus  # noqa: E402

from configs import low_level as low_level_config  # noqa: E402
from grepq_jax.training.data import low_level_pipeline as low_level  # noqa: E402


def _sources(count=2, shape=(40, 48, 3)):
    rng = np.random.default_rng(7)
    pictures = [rng.random(shape, np.float32) for _ in range(count)]
    return {f"photo {i}": (lambda p=p: p) for i, p in enumerate(pictures)}


@pytest.mark.slow
def test_both_sides_read_the_same_versions_from_a_relative_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sources = _sources()
    data = predistorted_corpus.write_predistorted("shared", sources)
    assert not data.is_absolute()
    # The original's reader (data_read_utils.py:29-37) finds <im_loc stem>.bmp folders.
    stems = (data / predistorted_corpus.INDEX_FILE).read_text().split()[1:]
    folders = original_llm_restated.group_folders(data)
    assert [f"{s.split('.')[0]}.bmp" for s in stems] == [f.name for f in folders]
    config = low_level_config.get_config().data
    config.layout, config.path = "predistorted", str(data)
    ours = low_level.create_low_level_dataset(config, seed=0)
    assert (ours.num_groups, ours.num_versions) == (2, 9)
    for group, (folder, load) in enumerate(zip(folders, sources.values())):
        theirs = np.stack([v.numpy() for v in original_llm_restated.read_versions(folder)])
        np.testing.assert_array_equal(np.round(theirs * 255).astype(np.uint8),
                                      ours.versions(group))
        # Sorted file order puts the reference first.
        np.testing.assert_array_equal(ours.versions(group)[0],
                                      np.round(load() * 255).astype(np.uint8))


def test_restated_fragments_cut_every_version_at_the_same_places():
    torch.manual_seed(0)
    video = torch.rand(3, 9, 40, 48, dtype=torch.float64)
    views = original_llm_restated.spatial_fragments(video, grid=2, size=8)
    assert views.shape == (3, 9, 16, 16)
    for i in range(2):
        for j in range(2):
            tile = views[:, 0, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8]
            cell_h, cell_w = 40 // 2, 48 // 2  # rows i*20..i*20+11, cols j*24..j*24+15
            hits = [(top, left) for top in range(i * cell_h, i * cell_h + cell_h - 8)
                    for left in range(j * cell_w, j * cell_w + cell_w - 8)
                    if torch.equal(video[:, 0, top:top + 8, left:left + 8], tile)]
            assert len(hits) == 1
            top, left = hits[0]
            assert torch.equal(views[:, :, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8],
                               video[:, :, top:top + 8, left:left + 8])


def test_labels_are_piqs_and_are_read_back_from_the_cache(tmp_path, monkeypatch):
    data = predistorted_corpus.write_predistorted(tmp_path, _sources(count=1))
    cache = tmp_path / "labels.npz"
    (labels,) = original_llm_restated.group_labels(data, cache)
    assert labels.shape == (9, 9)
    np.testing.assert_array_equal(labels.numpy(), labels.numpy().T)
    np.testing.assert_array_equal(np.diag(labels.numpy()), np.ones(9))
    versions = original_llm_restated.read_versions(original_llm_restated.group_folders(data)[0])
    import piq  # pylint: disable=import-outside-toplevel
    expected = float(piq.fsim(versions[3].permute(2, 0, 1)[None],
                              versions[0].permute(2, 0, 1)[None], data_range=1.0))
    assert labels[3, 0].item() == pytest.approx(expected, abs=1e-6)
    assert labels[3, 0].item() < 1

    def no_fsim(_):
        raise AssertionError("recomputed a cached label")
    monkeypatch.setattr(original_llm_restated, "fsim_matrix", no_fsim)
    (again,) = original_llm_restated.group_labels(data, cache)
    assert torch.equal(again, labels)


def test_the_shim_sends_cuda_to_the_cpu_only_while_inside():
    module_to = torch.nn.Module.to
    with original_repo_shim.cuda_means_cpu():
        layer = torch.nn.Linear(2, 2).to("cuda")
        tensor = torch.zeros(2).to(device="cuda")
        assert layer.weight.device.type == "cpu" and tensor.device.type == "cpu"
        assert torch.zeros(2).to(torch.float64).dtype == torch.float64
    assert torch.nn.Module.to is module_to


def test_an_unusable_photograph_is_reported_and_the_rest_written(tmp_path, capsys):
    from grepq_jax.formats import images  # pylint: disable=import-outside-toplevel

    def broken():
        raise images.UnusableImageError("cannot identify image file")
    sources = {"broken.jpg": broken, **_sources(count=1)}
    data = predistorted_corpus.write_predistorted(tmp_path, sources)
    assert "skipped broken.jpg: cannot identify image file" in capsys.readouterr().err
    assert [f.name for f in original_llm_restated.group_folders(data)] == ["001_photo_0.bmp"]
    assert (data / predistorted_corpus.INDEX_FILE).read_text().split() == [
        "im_loc", "001_photo_0.png"]
