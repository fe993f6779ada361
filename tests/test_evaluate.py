"""The evaluation command on a tiny generic-CSV dataset, with tiny random models.

The numbers mean nothing (random encoders); the tests check that every table
entry is a valid correlation, that files and plots are written, that
features are computed once and reused, and that a regressor fitted into the
model folder scores images as the cached features predict (1e-6 relative:
the scorer may batch images differently from the feature pass).
"""
import csv
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter

from grepq_jax import cli, evaluate, regression, score
from grepq_jax import quality_model as qm
from grepq_jax.data import corpus, iqa_datasets
from model_fixtures import high_level_export, low_level_export, model_folder  # noqa: F401

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_csv_dataset(root, count, seed, *, broken=False):
    """`count` 128x160 crops of a photograph, blurred and noised by a random
    quality q, with MOS = 1 + 4 q; optionally one undecodable file."""
    rng = np.random.default_rng(seed)
    photo = corpus.load_embedded_photograph("skimage:coffee")
    (root / "images").mkdir(parents=True)
    lines = ["image,mos"]
    for i in range(count):
        q = rng.uniform()
        y, x = rng.integers(0, 200, size=2)
        crop = Image.fromarray(np.round(photo[y:y + 128, x:x + 160] * 255).astype(np.uint8))
        pixels = np.asarray(crop.filter(ImageFilter.GaussianBlur(3 * (1 - q))), np.float64)
        pixels = pixels + rng.normal(0, 30 * (1 - q), pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{i:02d}.png")
        lines.append(f"images/{i:02d}.png,{1 + 4 * q:.4f}")
    if broken:
        (root / "images" / "broken.png").write_text("not a png")
        lines.append("images/broken.png,3.0")
    (root / "scores.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("csv_dataset"), 30, 0, broken=True)


@pytest.fixture(scope="module")
def cli_run(model_folder, dataset_root, tmp_path_factory):
    """One run of the command line; returns its --out folder."""
    out = tmp_path_factory.mktemp("evaluation")
    argv = ["evaluate", f"--model={model_folder}", "--dataset=csv",
            f"--root={dataset_root}", f"--out={out}", "--num_train=10,15", "--splits=3"]
    assert evaluate.main(cli.parse(evaluate.FLAGS, argv)) == 0
    return out


def test_cli_writes_the_table_the_plots_and_the_skipped_image(cli_run):
    rows = list(csv.DictReader((cli_run / "results.csv").open()))
    assert [(r["protocol"], r["method"], r["num_train"]) for r in rows] == [
        ("zero_shot", "low_level", "0"), ("zero_shot", "high_level", "0"),
        ("zero_shot", "combined", "0"),
        ("data_efficient", "ridge[high + low:projection]", "10"),
        ("data_efficient", "ridge[high + low:projection]", "15")]
    for row in rows:
        assert row["num_test"] == str(30 - int(row["num_train"])) and row["mapping"] == "poly3"
        assert row["splits"] == ("3" if row["protocol"] == "data_efficient" else "1")
        for name in ("srocc", "plcc"):
            assert -1 <= float(row[f"{name}_median"]) <= 1
            assert 0 <= float(row[f"{name}_iqr"]) <= 2
    markdown = (cli_run / "results.md").read_text()
    assert "third-order polynomial" in markdown and "| data_efficient |" in markdown
    assert "30 images used, 1 skipped" in markdown and "images/broken.png" in markdown
    skipped = list(csv.reader((cli_run / "skipped.csv").open()))
    assert skipped[1][:2] == ["csv", "images/broken.png"]
    for name in ("srocc_vs_labels.png", "predicted_vs_true.png"):
        assert (cli_run / name).read_bytes()[:8] == PNG_SIGNATURE
    assert (cli_run / "features_csv.npz").is_file()


def test_features_are_computed_once_and_recomputed_when_stale(
        cli_run, model_folder, dataset_root, monkeypatch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cli_run, out)
    computed = []
    original = evaluate.compute_features
    monkeypatch.setattr(evaluate, "compute_features",
                        lambda *a, **k: computed.append(1) or original(*a, **k))
    dataset = iqa_datasets.load_iqa_dataset("csv", dataset_root)
    rows = evaluate.evaluate(model_folder, dataset, out, num_train=(10,), splits=3,
                             mapping="logistic4", features="pooled")
    assert not computed  # Other mapping and features: the cache still serves.
    assert rows[-1]["method"] == "ridge[high + low:pooled]"
    assert "four-parameter logistic" in (out / "results.md").read_text()
    flipped = iqa_datasets.load_iqa_dataset("csv", dataset_root, higher_is_better=False)
    evaluate.evaluate(model_folder, flipped, out, num_train=(10,), splits=3)
    assert computed == [1]  # The direction is part of the key.
    features = evaluate.load_features(out / "features_csv.npz",
                                      evaluate.cache_key(model_folder, flipped))
    low, high = flipped.score_range
    scores = {item.name: item.score for item in flipped.items}
    np.testing.assert_allclose(features.quality,
                               [low + high - scores[name] for name in features.names])


def test_predicted_vs_true_refits_the_protocols_first_split(cli_run, model_folder,
                                                             dataset_root):
    dataset = iqa_datasets.load_iqa_dataset("csv", dataset_root)
    features = evaluate.load_features(cli_run / "features_csv.npz",
                                      evaluate.cache_key(model_folder, dataset))
    result = evaluate.data_efficient(features, "projection", num_train=[15], splits=2,
                                     mapping="poly3", seed=0)[15]
    x, y = features.regression_features("projection"), features.quality
    train = result.train_indices[0]
    test = np.setdiff1d(np.arange(len(y)), train)
    ridge = regression.fit_ridge(x[train], y[train], float(result.alpha[0]))
    srocc, _ = regression.evaluate_regressor(ridge, x[test], y[test], "poly3")
    assert srocc == pytest.approx(result.srocc[0], abs=1e-12)


def test_cross_dataset_and_a_regressor_fitted_into_the_model(
        model_folder, dataset_root, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    other = write_csv_dataset(tmp_path / "other", 12, 1)
    dataset = iqa_datasets.load_iqa_dataset("csv", dataset_root)
    rows = evaluate.evaluate(folder, dataset, tmp_path / "out", num_train=(10,), splits=2,
                             cross_dataset=iqa_datasets.load_iqa_dataset("csv", other),
                             fit_regressor=True)
    cross = [r for r in rows if r["protocol"] == "cross_dataset"]
    assert len(cross) == 1 and cross[0]["num_train"] == 30 and cross[0]["num_test"] == 12
    assert -1 <= cross[0]["srocc_median"] <= 1
    assert (tmp_path / "out" / "features_csv_cross.npz").is_file()
    model = qm.QualityModel.load(folder)
    assert model.regressor_info["score_range"] == list(dataset.score_range)
    assert model.regressor_info["orientation"] == "score"
    scorer = score.create_scorer(folder, mode="regressor")
    assert scorer.score_range == dataset.score_range and scorer.higher_is_better
    features = evaluate.load_features(tmp_path / "out" / "features_csv.npz",
                                      evaluate.cache_key(folder, dataset))
    expected = model.regressor.predict(features.regression_features("projection")[:3])
    got = [scorer.score(dataset_root / name) for name in features.names[:3]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_dmos_is_turned_so_higher_is_better():
    dataset = iqa_datasets.IqaDataset("d", (), higher_is_better=False, score_kind="DMOS",
                                      score_range=(0.0, 100.0))
    np.testing.assert_array_equal(evaluate.oriented_quality(dataset, [10.0, 90.0]),
                                  [90.0, 10.0])
