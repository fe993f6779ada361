"""Export, reload and scoring: the model folder, create_scorer and the score CLI.

Models are tiny and randomly initialised (model_fixtures.py): the scores mean
nothing, but every path a real model takes is exercised.

Tolerances: a reloaded model runs the same programs on the same bytes, so
its scores must be identical (exact). Batch composition and chunk size only
change which compiled program (batch shape) computes an image, which may
reorder float32 sums, so those are compared to 1e-6 (relative), far below
any meaningful quality difference.
"""
import csv
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from grepq_jax.scoring.model_folder import load_model
from grepq_jax import errors
from grepq_jax.commands import cli, export, score
from grepq_jax.scoring import batch
from grepq_jax.scoring import api
from grepq_jax.scoring import packing
from grepq_jax.scoring import pristine
from grepq_jax.evaluation import regression
from grepq_jax.scoring import zero_shot
from grepq_jax.scoring import quality_model as qm
from grepq_jax.scoring.model_folder import write_regressor
from grepq_jax.formats import corpus
from support.model_fixtures import high_level_export, low_level_export, model_folder  # noqa: F401

RTOL = 1e-6


def photo(height, width, offset=0):
    """(H, W, 3) float32 in [0, 1]: a crop of a real photograph."""
    image = corpus.load_embedded_photograph("skimage:astronaut")
    return image[offset:offset + height, offset:offset + width]


def save(image, path):
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def scorer(model_folder):
    return api.create_scorer(model_folder)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Five good images in two sizes (one in a subfolder) and broken files."""
    folder = tmp_path_factory.mktemp("to_score")
    (folder / "sub").mkdir()
    save(photo(160, 200, 0), folder / "a.png")
    save(photo(160, 200, 40), folder / "b.jpg")
    save(photo(150, 170, 80), folder / "c.png")
    save(photo(160, 200, 120), folder / "sub" / "d.png")
    save(photo(150, 170, 160), folder / "sub" / "e.bmp")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("not an image suffix: not scored")
    return folder


@pytest.mark.slow
def test_export_writes_the_layout_and_reloads_with_identical_scores(
        model_folder, low_level_export, high_level_export):
    assert json.loads((model_folder / "model.json").read_text())["format_version"] == 1
    for name in ("low_level/encoder.json", "high_level/encoder.json",
                 "pristine_statistics.npz"):
        assert (model_folder / name).exists(), name
    # The in-memory model, straight from the training exports.
    low = qm.LowLevelEncoder.from_export(low_level_export, chunk=64)
    stats = pristine.pristine_statistics(
        (corpus.load_embedded_photograph(n) for n in corpus.EMBEDDED_PHOTOGRAPHS),
        low.patch_features)
    in_memory = qm.QualityModel(low_level=low, pristine_stats=stats,
                                high_level=qm.HighLevelEncoder.from_export(high_level_export))
    loaded = load_model(model_folder)
    np.testing.assert_array_equal(loaded.pristine_stats.mu, stats.mu)
    np.testing.assert_array_equal(loaded.pristine_stats.cov, stats.cov)
    images = [("x", photo(160, 200)), ("y", photo(150, 170, 30))]
    for (_, a), (_, b) in zip(in_memory.analyse(images, needs=qm.NEEDS),
                              loaded.analyse(images, needs=qm.NEEDS)):
        assert a.low_level_score == b.low_level_score
        assert a.high_level_score == b.high_level_score
        np.testing.assert_array_equal(a.low_level_features["pooled"],
                                      b.low_level_features["pooled"])
        assert 0 < a.low_level_score <= 0.5 and 0 < a.high_level_score < 1


def test_export_refuses_a_used_folder_and_no_encoder(tmp_path, low_level_export):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        packing.export_model(tmp_path / "used", low_level=str(low_level_export))
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="at least one"):
        packing.export_model(tmp_path / "new")
    with pytest.raises(errors.InputError, match="no model.json"):
        load_model(tmp_path / "used")


def test_a_model_with_one_encoder_scores_with_it(tmp_path, high_level_export):
    packing.export_model(tmp_path / "high", high_level=str(high_level_export))
    scorer = api.create_scorer(tmp_path / "high")
    assert scorer.mode == "zero_shot_high" and scorer.score_range == (0.0, 1.0)
    value = scorer.score(photo(64, 64))
    assert 0 < value < 1
    with pytest.raises(ValueError, match=r"no encoder for \['low_level_score'\]"):
        api.create_scorer(tmp_path / "high", mode="zero_shot")


def test_scorer_takes_paths_pil_images_and_arrays_alike(scorer, tmp_path):
    image = photo(160, 200)
    path = save(image, tmp_path / "x.png")
    exact = np.round(image * 255).astype(np.uint8)  # What the PNG holds.
    from_path = scorer.score(path)
    assert scorer.score(str(path)) == from_path
    assert scorer.score(Image.open(path)) == from_path
    assert scorer.score(exact) == from_path  # uint8 array
    assert scorer.score(exact.astype(np.float32) / 255) == from_path
    assert scorer.higher_is_better is True and scorer.score_range == (0.0, 1.5)
    assert 0 < from_path < 1.5
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        scorer.score(exact.astype(np.float32))
    with pytest.raises(ValueError, match="expected an"):
        scorer.score(np.zeros((10, 10, 4), np.float32))
    with pytest.raises(ValueError, match="smaller than one 96x96 patch"):
        scorer.score(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"missing\.png: cannot open \(No such file"):
        scorer.score(tmp_path / "missing.png")


@pytest.mark.slow
def test_scores_do_not_depend_on_the_batch_or_the_order(model_folder):
    """What the README promises, exactly: the low-level score is bit-identical
    whatever the batch and order; whole-image (high-level) outputs may differ
    in the last float32 bits between batch sizes (measured: 1e-7 relative
    here, 5e-7 with ViT-B/32's shape), and are bit-identical for the same
    batches."""
    images = [photo(160, 200, k) for k in (0, 10, 20)] + [photo(150, 170, 30)]
    alone = [r.parts for r in api.create_scorer(model_folder, batch_size=1)
             .score_many(images)]
    batched = api.create_scorer(model_folder, batch_size=8)
    capped = api.create_scorer(model_folder, batch_size=8, batch_pixels=2 * 160 * 200)
    runs = {"batch 8": [r.parts for r in batched.score_many(images)],
            "batch 8 again": [r.parts for r in batched.score_many(images)],
            "backwards": [r.parts for r in batched.score_many(images[::-1])][::-1],
            "2 images' pixels": [r.parts for r in capped.score_many(images)]}
    for name, got in runs.items():
        for a, b in zip(alone, got):
            # The low-level path feeds each image's own patches in fixed
            # chunks: the same program on the same bytes, whatever the batch.
            assert a["low_level"] == b["low_level"], name
            np.testing.assert_allclose(a["high_level"], b["high_level"], rtol=RTOL,
                                       err_msg=name)
    assert runs["batch 8"] == runs["batch 8 again"]  # Deterministic.
    assert len({round(p["combined"], 9) for p in alone}) == 4  # Not all the same.


@pytest.mark.slow
def test_chunked_low_level_path_equals_unchunked(model_folder):
    image = photo(240, 290)  # 4 x 5 = 20 patches
    unchunked = load_model(model_folder, chunk=64)
    chunked = load_model(model_folder, chunk=3)
    expected = zero_shot.image_low_level_score(
        image, lambda p: unchunked.low_level.image_features(p)["projection"],
        unchunked.pristine_stats, chunk=10**6)  # every patch in one call, unpadded
    np.testing.assert_allclose(unchunked.low_level_score(image), expected, rtol=RTOL)
    np.testing.assert_allclose(chunked.low_level_score(image), expected, rtol=RTOL)


def test_images_of_many_sizes_share_the_low_level_programs(model_folder, monkeypatch):
    """Patches go through in chunks padded to powers of two: a folder of mixed
    sizes compiles a few programs (one per input shape), not one per size."""
    model = load_model(model_folder, chunk=16)
    shapes = set()
    original = model.low_level.image_features
    monkeypatch.setattr(model.low_level, "image_features",
                        lambda x: shapes.add(x.shape) or original(x))
    sizes = [(96, 144), (144, 144), (150, 170), (144, 192), (192, 240), (240, 290)]
    patches = [((h - 96) // 48 + 1) * ((w - 96) // 48 + 1) for h, w in sizes]
    assert patches == [2, 4, 4, 6, 12, 20]  # 20 = 16 + 4
    for height, width in sizes:
        model.low_level_score(photo(height, width))
    assert sorted(shapes) == [(n, 96, 96, 3) for n in (2, 4, 8, 16)]


@pytest.mark.slow
def test_a_very_large_image_goes_through_in_bounded_chunks(model_folder, monkeypatch):
    model = load_model(model_folder, chunk=64)
    image = np.random.default_rng(0).uniform(size=(1500, 1500, 3)).astype(np.float32)
    seen = []
    original = model.low_level.patch_features
    monkeypatch.setattr(model.low_level, "patch_features",
                        lambda patches: seen.append(len(patches)) or original(patches))
    tracemalloc.start()
    value = model.low_level_score(image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(seen) == 30 * 30 and max(seen) <= 64  # (1500 - 96) // 48 + 1 = 30
    chunk_bytes = 64 * 96 * 96 * 3 * 4  # one chunk of float32 patches, 7.1 MB
    # A few chunks live at once: the one being encoded, the next being cut
    # and made float, and (once the program is compiled, so dispatch is
    # asynchronous) the previous input until the device lets it go. Measured:
    # 22.2 MB alone, 29.3 MB after the module's other tests (one chunk more).
    # All 900 patches at once would be 14 chunks.
    assert peak < 6 * chunk_bytes, (peak, chunk_bytes)
    assert 0 < value <= 0.5


@pytest.mark.slow
def test_score_cli_writes_a_row_per_file_and_fails_on_broken_ones(
        model_folder, image_folder, tmp_path, capsys):
    out_csv, out_json = tmp_path / "scores.csv", tmp_path / "scores.json"
    argv = ["score", f"--model={model_folder}", f"--output={out_csv}",
            f"--json={out_json}", "--batch_size=2", str(image_folder),
            str(image_folder / "missing.png")]
    assert score.main(cli.parse(score.FLAGS, argv)) == 1
    rows = list(csv.DictReader(out_csv.open()))
    names = [pathlib.Path(row["path"]).name for row in rows]
    assert names == ["a.png", "b.jpg", "c.png", "empty.jpg", "text.jpg", "d.png",
                     "e.bmp", "missing.png"]
    assert list(rows[0]) == ["path", "low_level", "high_level", "combined", "error"]
    broken = {"empty.jpg": "cannot decode", "text.jpg": "cannot decode",
              "missing.png": "cannot open (No such file or directory)"}
    for name, row in zip(names, rows):
        if name in broken:
            assert row["error"].startswith(broken[name]) and row["combined"] == ""
        else:
            assert row["error"] == ""
            np.testing.assert_allclose(float(row["combined"]),
                                       float(row["low_level"]) + float(row["high_level"]))
    scorer = api.create_scorer(model_folder)
    np.testing.assert_allclose(float(rows[0]["combined"]),  # a.png was batched with b.jpg
                               scorer.score(image_folder / "a.png"), rtol=RTOL)
    records = json.loads(out_json.read_text())
    assert [r["path"] for r in records] == [r["path"] for r in rows]
    assert records[3]["error"] == rows[3]["error"] and records[0]["error"] is None
    assert "scored 5 image(s); 3 failed" in capsys.readouterr().err


def test_score_paths_exit_code_is_zero_when_all_scored(scorer, image_folder):
    out = io.StringIO()
    assert batch.score_paths(scorer, [str(image_folder / "sub")], out,
                             progress=False) == (2, 0)
    assert len(out.getvalue().splitlines()) == 3


@pytest.mark.slow
def test_regressor_mode_predicts_with_the_stored_ridge(model_folder, tmp_path):
    folder = tmp_path / "model"
    packing.export_model(folder, low_level=str(model_folder / "low_level"),
                        high_level=str(model_folder / "high_level"))
    model = load_model(folder)
    images = [photo(160, 200, 10 * k) for k in range(8)]
    analyses = [a for _, a in model.analyse(enumerate(images), needs=model.regression_needs())]
    x = np.stack([model.regression_features(a, "pooled") for a in analyses])
    assert x.shape == (8, 16 + 32)  # CLIP embedding + width-4 ResNet-18 pooled
    ridge = regression.fit_ridge(x, np.linspace(1, 5, 8), alpha=1.0)
    write_regressor(folder, ridge, {"features": "pooled", "parts": model.parts,
                                    "score_range": [1.0, 5.0]})
    scorer = api.create_scorer(folder, mode="regressor")
    assert scorer.score_range == (1.0, 5.0) and scorer.columns == api.REGRESSOR_COLUMNS
    got = [r.score for r in scorer.score_many(images)]
    np.testing.assert_allclose(got, ridge.predict(x), rtol=RTOL)


def test_package_import_is_light_and_exports_create_scorer():
    code = ("import sys, grepq_jax; "
            "heavy = [m for m in ('jax', 'tensorflow', 'flax', 'transformers') "
            "if m in sys.modules]; assert not heavy, heavy")
    root = pathlib.Path(__file__).parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    import grepq_jax  # pylint: disable=import-outside-toplevel
    assert grepq_jax.create_scorer is api.create_scorer


@pytest.mark.slow
def test_the_score_command_runs_as_a_module(model_folder, image_folder):
    """`python -m grepq_jax.score`, as a user runs it (without PyTorch's import)."""
    root = pathlib.Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "grepq_jax.score", f"--model={model_folder}",
         "--mode=zero_shot_low", str(image_folder / "a.png")],
        cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 1 and rows[0]["error"] == "" and rows[0]["high_level"] == ""
    assert 0 < float(rows[0]["low_level"]) <= 0.5


@pytest.mark.slow
def test_score_help_shows_the_usage_line_example_and_flags():
    """`grepq score --help`, through the console script's entry point."""
    code = "import sys; from grepq_jax.commands import cli; sys.argv = ['grepq', 'score', '--help']; cli.main()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, cwd=pathlib.Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "usage: grepq score --model=DIR [flags] IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...]\n")
    assert ("example:\n  grepq score --model=models/grepq photos/ extra.jpg "
            "--output=scores.csv") in done.stdout
    for flag in ("--model", "--output", "--json", "--max_pixels", "--batch_pixels"):
        assert flag in done.stdout, flag


@pytest.mark.slow
def test_score_piped_into_a_reader_that_stops_ends_quietly(model_folder, image_folder,
                                                           tmp_path):
    """`grepq score ... | head -1`: no BrokenPipeError traceback."""
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "grepq_jax.score", f"--model={model_folder}",
             "--mode=zero_shot_low"] + [str(image_folder / "a.png")] * 40,
            stdout=subprocess.PIPE, stderr=err, cwd=pathlib.Path(__file__).parents[2])
        assert child.stdout.readline() == b"path,low_level,high_level,combined,error\n"
        child.stdout.close()  # As head does after its line.
        assert child.wait(timeout=300) == 1
    text = stderr.read_text()
    assert "Traceback" not in text and "BrokenPipe" not in text, text
    assert "scored 40" not in text  # It stopped early, at the first row it could not write.


def test_export_and_score_take_relative_paths(tmp_path, monkeypatch, low_level_export,
                                              high_level_export, image_folder):
    pristine_folder = tmp_path / "pristine"
    pristine_folder.mkdir()
    for k in range(2):
        save(photo(288, 288, 60 * k), pristine_folder / f"p{k}.png")
    monkeypatch.chdir(tmp_path)
    argv = ["export", f"--low_level={os.path.relpath(low_level_export)}",
            f"--high_level={os.path.relpath(high_level_export)}",
            "--pristine=pristine", "--out=models/rel"]
    assert export.main(cli.parse(export.FLAGS, argv)) == 0
    description = json.loads((tmp_path / "models" / "rel" / "model.json").read_text())
    assert description["pristine"]["source"] == str(pristine_folder)  # Absolute.
    assert description["pristine"]["num_patches"] >= 2
    (tmp_path / "images").mkdir()
    save(photo(160, 200), tmp_path / "images" / "x.png")
    argv = ["score", "--model=models/rel", "--output=out/../scores.csv", "images/x.png"]
    (tmp_path / "out").mkdir()
    assert score.main(cli.parse(score.FLAGS, argv)) == 0
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [row["path"] for row in rows] == ["images/x.png"] and rows[0]["error"] == ""


@pytest.mark.slow
def test_the_name_grepq_scores_with_the_downloaded_model(model_folder, image_folder,
                                                         tmp_path):
    """`grepq score --model=grepq` as the README types it after `grepq download`:
    the name finds the model folder in the cache ($GREPQ_HOME, relative here);
    before the download it is one line saying to run it, exit 2."""
    env = dict(os.environ, GREPQ_HOME="cache")
    # The dispatcher the `grepq` console script runs.
    command = [sys.executable, "-m", "grepq_jax.commands.cli", "score", "--model=grepq",
               "--mode=zero_shot_low",
               str(image_folder / "a.png")]
    missing = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                             text=True, check=False)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"no model folder 'grepq' here, and the released model is not in the cache yet "
        f"({os.path.join('cache', 'models', 'grepq')}): run `grepq download` first"]
    shutil.copytree(model_folder, tmp_path / "cache" / "models" / "grepq")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    expected = api.create_scorer(model_folder, "zero_shot_low").score(image_folder / "a.png")
    assert float(rows[0]["low_level"]) == pytest.approx(expected, rel=1e-6)
