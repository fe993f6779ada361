"""Scoring a folder of odd and malformed files: a row for every file, whatever
its name, a message for each bad one, no traceback, exit 1; and the memory
bounds: one image at a time on the low-level path, pixel-capped batches on
the whole-image paths, pixels kept in their file's depth.

The corpus is generated here. Good images are all 144x160 (after EXIF
rotation), so the whole-image encoder compiles once.
"""
import csv
import io
import json
import os
import pathlib
import weakref

import numpy as np
from PIL import Image
import pytest

from grepq_jax.scoring.model_folder import load_model
from grepq_jax.commands import cli, score
from grepq_jax.scoring import batch
from grepq_jax.scoring import api
from grepq_jax.scoring import quality_model as qm
from grepq_jax.formats import images
from support.model_fixtures import high_level_export, low_level_export, model_folder  # noqa: F401

HEIGHT, WIDTH = 144, 160
NON_UTF8 = b"b_\xff.png"  # A Latin-1 name, as old cameras and archives write them.
ODD_NAME = 'comma, "quote"\nnewline.png'


def _photo(seed, height=HEIGHT, width=WIDTH):
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.normal(size=(height, width, 3)), axis=1)
    smooth -= smooth.min()
    return (255 * smooth / smooth.max()).astype(np.uint8)


def _png_bytes(pixels, **params):
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", **params)
    return out.getvalue()


def _good_files(folder):
    """Odd but valid: each must be scored."""
    Image.fromarray(_photo(0)).save(folder / "good.png")
    with open(os.path.join(os.fsencode(folder), NON_UTF8), "wb") as file:
        file.write(_png_bytes(_photo(1)))
    Image.fromarray(_photo(2)).save(folder / "é.jpg", quality=90)
    Image.fromarray(_photo(3)).save(folder / ODD_NAME)
    Image.fromarray(_photo(4)[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")
    Image.fromarray(_photo(5)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(_photo(6)).quantize(32).save(folder / "palette.png")
    rgba = np.concatenate([_photo(7), _photo(8)[..., :1]], -1)
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(_photo(9)[..., 0]).convert("LA").save(folder / "la.png")
    turned = Image.fromarray(np.ascontiguousarray(_photo(10).transpose(1, 0, 2)))
    exif = turned.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to view.
    turned.save(folder / "rotated.jpg", exif=exif)
    frames = [Image.fromarray(_photo(11)), Image.fromarray(_photo(12))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(_photo(13)).save(folder / "UPPER.PNG")
    (folder / "link.png").symlink_to(folder / "good.png")


# name -> the start of its error (the rest may name Pillow's details).
BAD = {
    "empty.jpg": "cannot decode (UnidentifiedImageError: cannot identify image file",
    "text.png": "cannot decode (UnidentifiedImageError: cannot identify image file",
    "truncated.jpg": "cannot decode (OSError: image file is truncated",
    "truncated.png": "cannot decode (OSError: image file is truncated",
    "tiny.png": "image of 50x60 (HxW) is smaller than one 96x96 patch",
    "one_patch.png": "image of 96x130 (HxW) gives 1 patch of 96x96 at stride 48; "
                     "the low-level score needs at least 2",
    "float.tif": "floating-point pixels (mode F) have no agreed range",
    "int32.tif": "I pixels outside the 16-bit range",
    "dangling.png": "a broken symbolic link",
    "loop.png": "a symbolic link loop",
    "fifo.png": "not a regular file",
    "huge.png": "300x300 px (90,000 pixels) is above the limit of max_pixels=60,000",
}


def _bad_files(folder):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    for name, fmt in (("truncated.jpg", "JPEG"), ("truncated.png", "PNG")):
        out = io.BytesIO()
        Image.fromarray(_photo(20)).save(out, format=fmt)
        (folder / name).write_bytes(out.getvalue()[:len(out.getvalue()) // 2])
    Image.fromarray(_photo(21, 50, 60)).save(folder / "tiny.png")
    Image.fromarray(_photo(22, 96, 130)).save(folder / "one_patch.png")
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.float32)).save(folder / "float.tif")
    Image.fromarray(np.full((HEIGHT, WIDTH), 70000, np.int32)).save(folder / "int32.tif")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    os.mkfifo(folder / "fifo.png")  # Opening it would wait for a writer forever.
    Image.fromarray(_photo(23, 300, 300)).save(folder / "huge.png")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    _good_files(folder)
    _bad_files(folder)
    (folder / "sub").mkdir()
    Image.fromarray(_photo(30)).save(folder / "sub" / "deep.png")
    (folder / "notes.txt").write_text("not an image suffix")
    (folder / "to_sub").symlink_to(folder / "sub", target_is_directory=True)
    return folder


GOOD = ["good.png", "b_\\xff.png", "é.jpg", ODD_NAME, "grey16.png", "cmyk.jpg",
        "palette.png", "rgba.png", "la.png", "rotated.jpg", "anim.gif", "UPPER.PNG",
        "link.png", "sub/deep.png"]


def _relative(corpus, path):
    return path[len(str(corpus)) + 1:]


@pytest.mark.slow
def test_every_file_gets_a_row_in_csv_json_and_stdout(corpus, model_folder, tmp_path,
                                                      capsys):
    out_csv, out_json = tmp_path / "scores.csv", tmp_path / "scores.json"
    base = ["score", f"--model={model_folder}", "--batch_size=1", "--max_pixels=60000"]
    paths = [str(corpus), str(corpus / "missing.png")]
    to_files = score.main(cli.parse(score.FLAGS, base + [
        f"--output={out_csv}", f"--json={out_json}"] + paths))
    files_err = capsys.readouterr().err
    to_stdout = score.main(cli.parse(score.FLAGS, base + paths))
    captured = capsys.readouterr()
    assert to_files == to_stdout == 1
    for err in (files_err, captured.err):
        assert "Traceback" not in err
        assert f"scored {len(GOOD)} image(s); {len(BAD) + 1} failed" in err
        assert ("not scored: 1 file(s) without an image suffix (.txt 1); name a file "
                "to read it whatever its suffix") in err
        assert f"not scored: {corpus / 'to_sub'}: a link to a folder, not followed" in err

    raw = out_csv.read_bytes()
    assert b"\r\n" not in raw and raw.startswith(b"path,low_level,high_level,combined,error\n")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    assert rows == list(csv.DictReader(io.StringIO(captured.out)))  # The same text.
    records = json.loads(out_json.read_text(encoding="utf-8"))
    assert [r["path"] for r in records] == [r["path"] for r in rows]

    by_name = {_relative(corpus, row["path"]): row for row in rows[:-1]}
    assert rows[-1]["path"] == str(corpus / "missing.png")
    assert rows[-1]["error"] == "cannot open (No such file or directory)"
    assert sorted(by_name) == sorted(GOOD + list(BAD))
    for name in GOOD:
        row = by_name[name]
        assert row["error"] == "", (name, row)
        assert 0 < float(row["low_level"]) <= 0.5 and 0 < float(row["high_level"]) < 1
    for name, message in BAD.items():
        assert by_name[name]["error"].startswith(message), (name, by_name[name])
        assert by_name[name]["combined"] == ""
    for record, row in zip(records, rows):
        assert record["error"] == (row["error"] or None)
        assert record["combined"] == (float(row["combined"]) if row["combined"] else None)


def test_the_odd_files_score_as_their_plain_pixels(corpus, model_folder):
    """EXIF rotation applied, alpha over white, 16 bits kept, a GIF's first frame."""
    scorer = api.create_scorer(model_folder, "zero_shot_low")
    rotated = scorer.score(corpus / "rotated.jpg")
    upright = images.read_pixels(corpus / "rotated.jpg")
    assert upright.shape == (HEIGHT, WIDTH, 3) and scorer.score(upright) == rotated
    assert scorer.score(corpus / "anim.gif") == scorer.score(
        np.asarray(Image.open(corpus / "anim.gif").convert("RGB")))
    grey16 = images.read_pixels(corpus / "grey16.png")
    assert grey16.dtype == np.uint16
    assert scorer.score(corpus / "grey16.png") == scorer.score(images.to_float(grey16))
    rgba = np.asarray(Image.open(corpus / "rgba.png"), np.float32) / 255
    over_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    assert scorer.score(corpus / "rgba.png") == scorer.score(over_white)


def test_names_are_printable_and_the_same_everywhere():
    assert api.printable(b"a_\xff.png") == "a_\\xff.png"
    assert api.printable(os.fsdecode(b"a_\xff.png")) == "a_\\xff.png"
    assert api.printable(pathlib.Path("é/x.png")) == "é/x.png"
    assert api.printable("lone \ud800") == "lone \\ud800"


def test_a_row_the_output_encoding_refuses_is_escaped_not_lost(model_folder, corpus):
    scorer = api.create_scorer(model_folder, "zero_shot_low")
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii", newline="")
    paths = [str(corpus / "é.jpg"), str(corpus / "good.png")]
    assert batch.score_paths(scorer, paths, ascii_out, progress=False) == (2, 0)
    lines = raw.getvalue().decode("ascii").splitlines()
    assert len(lines) == 3 and lines[1].startswith(str(corpus / "\\xe9.jpg,"))
    assert lines[2].startswith(str(corpus / "good.png,"))


def test_a_non_finite_score_is_never_written_without_an_error(model_folder, corpus,
                                                              monkeypatch):
    scorer = api.create_scorer(model_folder, "zero_shot_low")
    monkeypatch.setattr(scorer.model.low_level, "patch_features",
                        lambda patches: np.full((len(patches), 8), np.nan, np.float32))
    out = io.StringIO()
    assert batch.score_paths(scorer, [str(corpus / "good.png")], out,
                             progress=False) == (0, 1)
    row = list(csv.DictReader(io.StringIO(out.getvalue())))[0]
    assert row["low_level"] == "" and row["error"] == (
        "the model gave a non-finite low_level result (NaN or inf); its parameters or "
        "statistics are damaged")


def test_the_api_names_empty_arrays_and_takes_bytes_paths(model_folder, corpus):
    scorer = api.create_scorer(model_folder, "zero_shot_low")
    with pytest.raises(ValueError, match=r"^ndarray image: an empty image \(an array of "
                                         r"shape \(0, 0, 3\)\)$"):
        scorer.score(np.zeros((0, 0, 3), np.float32))
    with pytest.raises(ValueError, match=r"^list image: an empty image \(an array of shape \(0,\)\)$"):
        scorer.score([])
    path = corpus / "good.png"
    assert scorer.score(os.fsencode(path)) == scorer.score(path)
    non_utf8 = os.path.join(os.fsencode(corpus), NON_UTF8)
    assert 0 < scorer.score(non_utf8) <= 0.5
    with pytest.raises(ValueError, match=r"b_\\xff\.pn: cannot open"):
        scorer.score(non_utf8[:-1])


# Memory bounds ---------------------------------------------------------------------

def _counting(items, pulled):
    for key, image in items:
        pulled.append(key)
        yield key, image


def test_the_low_level_path_holds_one_image_at_a_time(model_folder):
    model = load_model(model_folder)
    pulled, alive = [], []

    def items():
        for k in range(5):
            # The previous image is gone before this one is read.
            assert not any(ref() is not None for ref in alive), k
            image = images.to_uint8(np.full((HEIGHT, WIDTH, 3), k / 10, np.float32))
            alive.append(weakref.ref(image))
            pulled.append(k)
            yield k, image
            del image  # This reader holds nothing once it has handed an image on.

    for key, analysis in model.analyse(items(), needs={"low_level_score"}, batch_size=8):
        assert pulled == list(range(key + 1))  # Nothing read ahead.
        assert 0 < analysis.low_level_score <= 0.5
    assert len(alive) == 5


def test_whole_image_batches_are_capped_in_pixels(model_folder, monkeypatch):
    model = load_model(model_folder)
    shapes = []
    original = model.high_level.embeddings
    monkeypatch.setattr(model.high_level, "embeddings",
                        lambda batch: shapes.append(batch.shape) or original(batch))
    small = np.zeros((64, 64, 3), np.uint8)
    large = np.zeros((128, 128, 3), np.uint8)  # 4x the pixels of a small one
    items = enumerate([small, small, small, large, small, small])
    pulled = []
    results = list(model.analyse(_counting(items, pulled), needs={"high_level"},
                                 batch_size=8, batch_pixels=3 * 64 * 64))
    assert [key for key, _ in results] == list(range(6))
    assert all(isinstance(a, qm.ImageAnalysis) for _, a in results)
    # Three small ones fill the cap; the large one goes alone; then two small.
    assert shapes == [(2, 64, 64, 3), (1, 64, 64, 3), (1, 128, 128, 3), (2, 64, 64, 3)]
    assert all(s[0] * s[1] * s[2] <= 3 * 64 * 64 or s[0] == 1 for s in shapes)


@pytest.mark.slow
def test_a_huge_image_is_held_as_uint8_and_made_float_a_chunk_at_a_time(model_folder,
                                                                       monkeypatch):
    import tracemalloc  # pylint: disable=import-outside-toplevel
    model = load_model(model_folder, chunk=16)
    image = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), np.uint8)
    seen = []
    original = model.low_level.patch_features
    monkeypatch.setattr(model.low_level, "patch_features",
                        lambda patches: seen.append(patches.dtype) or original(patches))
    model.low_level_score(image[:200, :200])  # Compile first, outside the trace.
    tracemalloc.start()
    value = model.low_level_score(image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Less than one uint8 copy of the image (12 MB), let alone a float32 one
    # (48 MB): a chunk of 16 patches is 1.8 MB as float32.
    assert peak < image.nbytes, (peak, image.nbytes)
    assert set(seen) == {np.dtype(np.float32)}
    np.testing.assert_allclose(value, model.low_level_score(images.to_float(image)),
                               rtol=0, atol=0)
