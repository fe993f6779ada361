"""Quality maps: per-patch distances to the pristine Gaussian, spread over the
image, and `score --maps`.

The formulas are checked against direct NumPy derivations in float64 (1e-10
relative); the whole path with the tiny random-weight model of
model_fixtures.py on a photograph whose right half alone is noisy.
"""
import pathlib

import numpy as np
import pytest
import skimage.data
from PIL import Image

from grepq_jax.commands import cli, score
from grepq_jax.scoring import api
from grepq_jax.scoring import packing
from grepq_jax.scoring import patches, pristine, quality_map
from support.model_fixtures import high_level_export, low_level_export, model_folder  # noqa: F401


def _toy_features(batch):
    """Per-channel means and standard deviations of each patch: (N, 6)."""
    batch = np.asarray(batch, np.float64)
    return np.concatenate([batch.mean(axis=(1, 2)), batch.std(axis=(1, 2))], axis=1)


def test_patch_distances_are_the_mahalanobis_distance_of_each_patch():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(70, 90, 3)).astype(np.float32)
    a = rng.normal(size=(6, 6))
    stats = pristine.PristineStatistics(
        mu=rng.normal(size=6), cov=a @ a.T / 6, num_patches=40, patch_size=32,
        sharpness_fraction=0.75, colourfulness_fraction=0.8)
    got = quality_map.patch_distances(image, _toy_features, stats, stride=16, chunk=3)
    cut = patches.cut_patches(image, 32, 16)
    inverse = np.linalg.inv(stats.cov + 1e-3 * np.eye(6))
    want = [np.sqrt((f - stats.mu) @ inverse @ (f - stats.mu))
            for f in _toy_features(cut).astype(np.float32).astype(np.float64)]
    assert got.shape == patches.patch_grid(70, 90, 32, 16) == (3, 4)
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-10)


def test_pixel_map_averages_the_patches_covering_each_pixel():
    distances = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
    got = quality_map.pixel_map(distances, 7, 9, size=4, stride=2)
    want = np.full((7, 9), np.nan)
    for y in range(7):
        for x in range(9):
            covering = [distances[r, c] for r in range(2) for c in range(3)
                        if 2 * r <= y < 2 * r + 4 and 2 * c <= x < 2 * c + 4]
            if covering:
                want[y, x] = np.mean(covering)
    np.testing.assert_allclose(got, want, rtol=1e-12)  # NaNs in the same places.
    assert np.isnan(got[6]).all() and np.isnan(got[:, 8]).all()


@pytest.fixture(scope="module")
def half_noisy(tmp_path_factory):
    """A photograph whose right half alone has Gaussian noise (sigma 0.15)."""
    image = skimage.data.chelsea().astype(np.float32) / 255  # 300x451
    right = image[:, image.shape[1] // 2:]
    noise = np.random.default_rng(0).normal(0, 0.15, right.shape)
    image[:, image.shape[1] // 2:] = np.clip(right + noise, 0, 1)
    pixels = np.round(image * 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("half_noisy")
    for name in ("a/cat.png", "b/cat.png"):  # Same stem twice: two map names.
        (folder / name).parent.mkdir()
        Image.fromarray(pixels).save(folder / name)
    return folder


@pytest.mark.slow
def test_the_noisy_half_comes_out_worse(model_folder, half_noisy):
    distance_map = api.create_scorer(model_folder).quality_map(half_noisy / "a/cat.png")
    assert distance_map.shape == (300, 451)
    width = distance_map.shape[1]
    # Patches are 96 px wide: leave out those that straddle the middle.
    clean = np.nanmean(distance_map[:, :width // 2 - 96])
    noisy = np.nanmean(distance_map[:, width // 2 + 96:])
    assert noisy > 1.2 * clean, (clean, noisy)
    assert np.isnan(distance_map[-1]).all()  # 300 = 5 * 48 + 60: the last rows lie outside.


def test_score_maps_writes_a_png_per_scored_image(model_folder, half_noisy, tmp_path,
                                                  monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # --maps as users type it: relative to here.
    (half_noisy / "broken.png").write_text("not an image")
    try:
        argv = ["score", f"--model={model_folder}", "--mode=zero_shot_low",
                "--output=scores.csv", "--maps=maps", str(half_noisy)]
        assert score.main(cli.parse(score.FLAGS, argv)) == 1  # broken.png
    finally:
        (half_noisy / "broken.png").unlink()
    written = sorted(path.name for path in pathlib.Path("maps").iterdir())
    assert written == ["cat-2.png", "cat.png"]
    with Image.open("maps/cat.png") as png:
        assert png.format == "PNG" and png.size[0] >= 800
    err = capsys.readouterr().err
    assert "wrote 2 quality map(s) into" in err and "could not" not in err


def test_maps_need_a_low_level_encoder(tmp_path, high_level_export, capsys):
    folder = tmp_path / "high_only"
    packing.export_model(folder, high_level=str(high_level_export))
    (tmp_path / "photos").mkdir()  # Apart from --maps: maps inside it would clash.
    argv = ["score", f"--model={folder}", f"--maps={tmp_path / 'maps'}",
            str(tmp_path / "photos")]
    assert score.main(cli.parse(score.FLAGS, argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cannot write maps into") and "low-level encoder" in err[-1]
    assert not (tmp_path / "maps").exists()
    with pytest.raises(ValueError, match="needs a low-level encoder"):
        api.create_scorer(folder).quality_map(np.zeros((64, 64, 3), np.float32))
