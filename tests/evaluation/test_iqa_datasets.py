"""Tests of the IQA dataset readers and their TFDS builders on tiny fixtures."""
import os
import sys
from pathlib import Path

from support import iqa_layouts
import numpy as np
import pytest
import scipy.io

from grepq_jax.evaluation import iqa_datasets


def rows_of(dataset: iqa_datasets.IqaDataset) -> list[tuple]:
    return [(item.name, item.score, item.std, item.split, item.reference)
            for item in dataset.items]


def assert_rows(dataset, expected):
    """Exact names, splits, references; scores and std to float64 rounding."""
    got = rows_of(dataset)
    assert [(n, sp, r) for n, _, _, sp, r in got] == [
        (n, sp, r) for n, _, _, sp, r in expected]
    np.testing.assert_allclose([row[1] for row in got],
                               [row[1] for row in expected], rtol=1e-12)
    assert [row[2] is None for row in got] == [row[2] is None
                                               for row in expected]
    np.testing.assert_allclose([row[2] for row in got if row[2] is not None],
                               [row[2] for row in expected
                                if row[2] is not None], rtol=1e-12)


# (dataset, higher_is_better, score_kind, score_range) as each is published.
SCALES = [("koniq10k", True, "MOS", (1, 5)), ("clive", True, "MOS", (0, 100)),
          ("kadid10k", True, "DMOS", (1, 5)), ("flive", True, "MOS", (0, 100)),
          ("spaq", True, "MOS", (0, 100)), ("agiqa3k", True, "MOS", (0, 5)),
          ("csiq", False, "DMOS", (0, 1)), ("live", False, "DMOS", (0, 100)),
          ("tid2013", True, "MOS", (0, 9))]


@pytest.mark.parametrize("name, higher_is_better, kind, score_range", SCALES)
def test_each_reader_reads_its_layout(tmp_path, name, higher_is_better, kind,
                                      score_range):
    expected = iqa_layouts.WRITERS[name](tmp_path)
    if name == "clive":
        expected = expected[7:]  # The training images are left out.
    dataset = iqa_datasets.load_iqa_dataset(name, tmp_path)
    assert_rows(dataset, expected)
    assert dataset.name == name
    assert dataset.higher_is_better is higher_is_better
    assert dataset.score_kind == kind
    assert dataset.score_range == score_range
    for item in dataset.items:
        assert Path(item.path).is_absolute() and Path(item.path).is_file()
        assert Path(item.path).resolve().is_relative_to(tmp_path.resolve())


def test_registry_and_layouts_cover_the_same_datasets():
    assert set(iqa_datasets.DATASETS) == set(iqa_datasets.LAYOUTS)
    assert {name for name, *_ in SCALES} | {"csv"} == set(
        iqa_datasets.DATASETS)


def test_koniq_zscore_column_gives_the_0_100_scale_without_std(tmp_path):
    iqa_layouts.write_koniq10k(tmp_path)
    dataset = iqa_datasets.read_koniq10k(tmp_path, score_column="MOS_zscore")
    assert [item.score for item in dataset.items] == [77.38, 75.11, 15.23]
    assert all(item.std is None for item in dataset.items)
    assert dataset.score_range == (0, 100)


def test_koniq_scores_file_may_stay_in_its_zip_folder(tmp_path):
    iqa_layouts.write_koniq10k(tmp_path)
    name = "koniq10k_scores_and_distributions.csv"
    (tmp_path / "koniq10k_scores_and_distributions").mkdir()
    (tmp_path / name).rename(tmp_path / "koniq10k_scores_and_distributions"
                             / name)
    assert len(iqa_datasets.read_koniq10k(tmp_path).items) == 3


def test_clive_can_keep_the_seven_training_images(tmp_path):
    expected = iqa_layouts.write_clive(tmp_path)
    dataset = iqa_datasets.read_clive(tmp_path, include_training_images=True)
    assert_rows(dataset, expected)
    assert dataset.items[0].path.endswith(
        os.path.join("Images", "trainingImages", "t1.bmp"))


def test_clive_without_std_file_gives_no_std(tmp_path):
    iqa_layouts.write_clive(tmp_path)
    (tmp_path / "Data/AllStdDev_release.mat").unlink()
    dataset = iqa_datasets.read_clive(tmp_path)
    assert [item.std for item in dataset.items] == [None] * 3


def test_live_dmos_mat_instead_of_realigned(tmp_path):
    iqa_layouts.write_live(tmp_path)
    dataset = iqa_datasets.read_live(tmp_path, realigned=False)
    assert [item.score for item in dataset.items] == \
        iqa_layouts.live_old_dmos()
    assert all(item.std is None for item in dataset.items)
    assert "jp2k/img1.bmp" not in [item.name for item in dataset.items]


def test_live_wrong_entry_count_names_the_files(tmp_path):
    iqa_layouts.write_live(tmp_path)
    scipy.io.savemat(tmp_path / "dmos_realigned.mat",
                     {"dmos_new": np.zeros((1, 981)), "orgs": np.ones((1, 981)),
                      "dmos_std": np.ones((1, 981))})
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"dmos_realigned.mat.*981.*expected 982"):
        iqa_datasets.read_live(tmp_path)


def test_flive_without_split_files_has_no_split(tmp_path):
    expected = iqa_layouts.write_flive(tmp_path, with_splits=False)
    assert_rows(iqa_datasets.read_flive(tmp_path), expected)


def test_csiq_label_txt_with_images_directly_in_dst_imgs(tmp_path):
    expected = iqa_layouts.write_csiq_label(tmp_path)
    assert_rows(iqa_datasets.read_csiq(tmp_path), expected)


def test_agiqa3k_alignment_aspect(tmp_path):
    iqa_layouts.write_agiqa3k(tmp_path)
    dataset = iqa_datasets.read_agiqa3k(tmp_path, aspect="align")
    assert [(i.score, i.std) for i in dataset.items] == [(1.3, 0.8),
                                                         (4.1, 0.35)]


def test_xlsx_without_openpyxl_says_to_install_it_or_save_as_csv(
        tmp_path, monkeypatch):
    iqa_layouts.write_spaq(tmp_path)
    sheet = tmp_path / "Annotations/MOS and Image attribute scores"
    sheet.with_suffix(".csv").rename(sheet.with_suffix(".xlsx"))
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # Import fails.
    with pytest.raises(ImportError, match=r"openpyxl.*save.*as CSV.*"
                       r"MOS and Image attribute scores\.csv"):
        iqa_datasets.read_spaq(tmp_path)


def test_generic_csv_in_grepq_evaluation_style(tmp_path):
    expected = iqa_layouts.write_grepq_csv(tmp_path)
    dataset = iqa_datasets.read_generic_csv(
        tmp_path, csv_file="LIVEC.csv", image_folder="Images",
        score_range=(0, 100))
    assert_rows(dataset, expected)
    assert (dataset.higher_is_better, dataset.score_kind,
            dataset.score_range) == (True, "MOS", (0, 100))


def test_generic_csv_dmos_column_needs_a_direction(tmp_path):
    iqa_layouts.write_csv(tmp_path / "scores.csv",
                          [["name", "dmos"], ["x.png", 0.3], ["y.png", 0.1]])
    iqa_layouts.write_image(tmp_path / "x.png")
    iqa_layouts.write_image(tmp_path / "y.png")
    with pytest.raises(ValueError, match="higher_is_better"):
        iqa_datasets.read_generic_csv(tmp_path)
    dataset = iqa_datasets.read_generic_csv(tmp_path, higher_is_better=False)
    assert (dataset.higher_is_better, dataset.score_kind,
            dataset.score_range) == (False, "DMOS", (0.1, 0.3))


def test_generic_csv_without_a_score_column_lists_the_header(tmp_path):
    iqa_layouts.write_csv(tmp_path / "scores.csv",
                          [["image_name", "rating"], ["x.png", 3]])
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"scores.csv, line 1: no score column.*rating"):
        iqa_datasets.read_generic_csv(tmp_path)


# Each bad row, written as row 3 (line 3 of the file) of a generic CSV
# beside a good row 2, and the message it must raise.
BAD_ROWS = {
    "missing image": (["gone.png", 3.0], r"line 3: image 'gone.png' not found"),
    "too few columns": (["x.png"], r"line 3: 1 columns, but the header has 2"),
    "too many columns": (["x.png", 3.0, 9], r"line 3: 3 columns"),
    "non-numeric score": (["x.png", "good"], r"line 3: score 'good' is not a "
                                             r"number"),
    "NaN score": (["x.png", "nan"], r"line 3: score is 'nan', not a finite"),
    "infinite score": (["x.png", "inf"], r"line 3: score is 'inf'"),
    "parent path": (["../outside.png", 3.0], r"line 3: image path "
                                             r"'../outside.png' .* leads out"),
    "absolute path": (["/etc/passwd", 3.0], r"line 3: image path "
                                            r"'/etc/passwd' .* absolute"),
    "windows drive": (["C:\\x.png", 3.0], r"line 3: image path"),
    "empty name": (["", 3.0], r"line 3: image path '' is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_names_file_and_row(tmp_path, case):
    row, message = BAD_ROWS[case]
    root = tmp_path / "dataset"
    iqa_layouts.write_image(root / "x.png")
    iqa_layouts.write_image(tmp_path / "outside.png")
    iqa_layouts.write_csv(root / "scores.csv",
                          [["image_name", "score"], ["x.png", 2.0], row])
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"scores\.csv, " + message):
        iqa_datasets.read_generic_csv(root)


def test_nul_byte_in_an_image_name_names_the_row(tmp_path):
    iqa_layouts.write_image(tmp_path / "x.png")
    (tmp_path / "scores.csv").write_bytes(b"image_name,score\nx.png,2\n"
                                          b"y\x00.png,3\n")
    with pytest.raises(iqa_datasets.IqaLayoutError) as raised:
        iqa_datasets.read_generic_csv(tmp_path)
    assert str(raised.value) == (f"{tmp_path / 'scores.csv'}, line 3: image "
                                 "name 'y\\x00.png' contains a NUL byte")


def write_duplicated_csv(root, third_row):
    """Rows: x.png 3.0, y.png 1.0, then `third_row`."""
    iqa_layouts.write_image(root / "x.png", 0)
    iqa_layouts.write_image(root / "y.png", 1)
    return iqa_layouts.write_csv(root / "scores.csv", [
        ["image_name", "score", "std", "split"], ["x.png", 3.0, 0.5, "train"],
        ["y.png", 1.0, 0.2, "train"], third_row])


@pytest.mark.parametrize("spelling", ["x.png", "./x.png", "X.png"])
def test_an_image_listed_twice_is_an_error_naming_both_rows(tmp_path,
                                                            spelling):
    path = write_duplicated_csv(tmp_path, [spelling, 4.5, 0.5, "test"])
    with pytest.raises(iqa_datasets.IqaLayoutError) as raised:
        iqa_datasets.read_generic_csv(tmp_path)
    assert str(raised.value) == (
        f"{path}, line 4: image {spelling!r} (score 4.5) is already listed at "
        f"{path}, line 2 (score 3); remove one, or pass "
        'duplicates="average" to average them')


def test_duplicates_averaged_on_request_and_said_so(tmp_path):
    path = write_duplicated_csv(tmp_path, ["x.png", 4.0, 0.3, "train"])
    dataset = iqa_datasets.read_generic_csv(tmp_path, duplicates="average")
    assert rows_of(dataset) == [("x.png", 3.5, None, "train", None),
                                ("y.png", 1.0, 0.2, "train", None)]
    assert dataset.notes == (
        f"{path}: 1 image(s) listed more than once, their scores averaged and "
        f"std dropped (the first: 'x.png' at {path}, line 2, 2 times)",)
    (tmp_path / "scores.csv").write_text("image_name,score\nx.png,1\n")
    assert iqa_datasets.read_generic_csv(tmp_path, duplicates="average"
                                         ).notes == ()


def test_duplicates_in_different_splits_are_not_averaged(tmp_path):
    path = write_duplicated_csv(tmp_path, ["x.png", 4.0, 0.3, "test"])
    with pytest.raises(iqa_datasets.IqaLayoutError) as raised:
        iqa_datasets.read_generic_csv(tmp_path, duplicates="average")
    assert str(raised.value) == (
        f"{path}, line 4: image 'x.png' has another split or reference than "
        f"at {path}, line 2, so its scores cannot be averaged")


def test_an_official_score_file_with_a_duplicate_names_both_lines(tmp_path):
    iqa_layouts.write_tid2013(tmp_path)
    path = tmp_path / "mos_with_names.txt"
    with open(path, "a") as file:  # Another spelling of line 1's image.
        file.write("4.2 I01_01_1.BMP\n")
    (tmp_path / "mos_std.txt").write_text("0.1\n" * 4)
    with pytest.raises(iqa_datasets.IqaLayoutError) as raised:
        iqa_datasets.read_tid2013(tmp_path)
    assert str(raised.value) == (
        f"{path}, line 4: image 'I01_01_1.BMP' (score 4.2) is already listed "
        f"at {path}, line 1 (score 5.51429); remove one")


def test_generic_csv_reference_column(tmp_path):
    for seed, name in enumerate(["a1.png", "a2.png", "b1.png"]):
        iqa_layouts.write_image(tmp_path / name, seed)
    iqa_layouts.write_csv(tmp_path / "scores.csv", [
        ["dist_name", "ref_name", "mos"], ["a1.png", "a.png", 3.0],
        ["a2.png", "a.png", 2.0], ["b1.png", "", 4.0]])
    dataset = iqa_datasets.read_generic_csv(tmp_path)
    assert [(i.name, i.reference) for i in dataset.items] == [
        ("a1.png", "a.png"), ("a2.png", "a.png"), ("b1.png", None)]
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"line 1: no reference column 'source'"):
        iqa_datasets.read_generic_csv(tmp_path, reference_column="source")


def test_symlink_out_of_the_dataset_is_refused(tmp_path):
    root = tmp_path / "dataset"
    iqa_layouts.write_koniq10k(root)
    outside = iqa_layouts.write_image(tmp_path / "secret.jpg")
    target = root / "1024x768/100117038.jpg"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"koniq10k_scores_and_distributions\.csv, line 3:"
                             r" image '100117038.jpg' links out"):
        iqa_datasets.read_koniq10k(root)


def test_image_folder_itself_may_be_a_symlink(tmp_path):
    # Big image folders often live on another disk, linked in.
    root = tmp_path / "dataset"
    iqa_layouts.write_koniq10k(root)
    (root / "1024x768").rename(tmp_path / "elsewhere")
    (root / "1024x768").symlink_to(tmp_path / "elsewhere")
    assert len(iqa_datasets.read_koniq10k(root).items) == 3


def test_mat_entry_errors_name_the_entry(tmp_path):
    iqa_layouts.write_clive(tmp_path)
    (tmp_path / "Images/1024.JPG").unlink()
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"AllMOS_release\.mat, entry 9: image '1024.JPG' "
                             r"not found"):
        iqa_datasets.read_clive(tmp_path)


def test_text_file_errors_name_the_line(tmp_path):
    iqa_layouts.write_tid2013(tmp_path)
    with open(tmp_path / "mos_with_names.txt", "a") as file:
        file.write("4.2 i02_01_1.bmp extra\n")
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"mos_with_names\.txt, line 4: 3 fields"):
        iqa_datasets.read_tid2013(tmp_path)


def test_sheet_errors_name_the_row(tmp_path):
    iqa_layouts.write_csiq_sheet(tmp_path)
    path = tmp_path / "csiq.DMOS.csv"
    path.write_text(path.read_text().replace("blur", "swirl"))
    with pytest.raises(iqa_datasets.IqaLayoutError,
                       match=r"csiq\.DMOS\.csv, line 8: unknown dst_type "
                             r"'swirl'"):
        iqa_datasets.read_csiq(tmp_path)


@pytest.mark.parametrize("name", sorted(iqa_datasets.DATASETS))
def test_missing_score_file_says_what_to_put_where(tmp_path, name):
    with pytest.raises(FileNotFoundError) as raised:
        iqa_datasets.load_iqa_dataset(name, tmp_path)
    message = str(raised.value)
    assert str(tmp_path) in message
    assert iqa_datasets.LAYOUTS[name] in message


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*\n.*KADID"):
        iqa_datasets.read_kadid10k(tmp_path / "nowhere")


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown IQA dataset 'koniq'; known:"
                                         r" koniq10k, clive, .*csv"):
        iqa_datasets.load_iqa_dataset("koniq", tmp_path)


# --- TFDS builders: few and small, since preparing a dataset is slowish. ---

@pytest.fixture(scope="module")
def tfds():
    # Imported here: slow, and only these need it.
    return pytest.importorskip(
        "tensorflow_datasets",
        reason="TensorFlow Datasets is the extra [tfds]: pip install -e '.[tfds]'")


def prepare(tfds, dataset, manual_dir, data_dir):
    from grepq_jax.evaluation import tfds_iqa
    builder = tfds_iqa.BUILDERS[dataset](data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
    return builder


def read_split(tfds, builder, split) -> list[dict]:
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


def test_tfds_koniq_keeps_original_bytes_and_scores(tmp_path, tfds):
    expected = iqa_layouts.write_koniq10k(tmp_path / "manual")
    builder = prepare(tfds, "koniq10k", tmp_path / "manual", tmp_path / "tfds")
    assert list(builder.info.splits) == ["train"]
    examples = sorted(read_split(tfds, builder, "train"),
                      key=lambda e: e["name"])
    expected = sorted(expected)
    assert [e["name"].decode() for e in examples] == [r[0] for r in expected]
    np.testing.assert_allclose([e["score"] for e in examples],
                               [r[1] for r in expected], rtol=1e-6)
    np.testing.assert_allclose([e["std"] for e in examples],
                               [r[2] for r in expected], rtol=1e-6)
    record = next(iter(tfds.as_numpy(builder.as_dataset(
        split="train", decoders={"image": tfds.decode.SkipDecoding()}))))
    original = tmp_path / "manual/1024x768" / record["name"].decode()
    assert record["image"] == original.read_bytes()  # Not re-encoded.
    from grepq_jax.evaluation import tfds_iqa
    reloaded = tfds_iqa.BUILDERS["koniq10k"](data_dir=str(tmp_path / "tfds"))
    assert dict(reloaded.info.metadata) == {  # Saved with the data.
        "higher_is_better": True, "score_kind": "MOS", "score_range": [1, 5]}


def test_tfds_generic_csv_keeps_its_splits_and_pixels(tmp_path, tfds):
    iqa_layouts.write_generic_csv(tmp_path / "manual")
    builder = prepare(tfds, "csv", tmp_path / "manual", tmp_path / "tfds")
    assert sorted(builder.info.splits) == ["test", "train"]
    (test_example,) = read_split(tfds, builder, "test")
    assert test_example["name"] == b"a/second.png"
    assert test_example["score"] == 4.0 and np.isnan(test_example["std"])
    np.testing.assert_array_equal(test_example["image"],
                                  iqa_layouts.image_pixels(1))
    train = read_split(tfds, builder, "train")
    assert sorted(e["name"] for e in train) == [b"a/first.png", b"third.png"]


def test_tfds_missing_files_say_what_to_put_where(tmp_path, tfds):
    with pytest.raises(AssertionError, match=r"(?s)does not exist.*"
                       r"KonIQ-10k: in the dataset folder put"):
        prepare(tfds, "koniq10k", tmp_path / "manual", tmp_path / "tfds")
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual/README").write_text("not the dataset")
    with pytest.raises(FileNotFoundError,
                       match=r"koniq10k_scores_and_distributions\.csv.*\n"
                             r"KonIQ-10k: in the dataset folder put"):
        prepare(tfds, "koniq10k", tmp_path / "manual", tmp_path / "tfds")
    from grepq_jax.evaluation import tfds_iqa
    assert all(tfds_iqa.BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS
               == iqa_datasets.LAYOUTS[name] for name in iqa_datasets.DATASETS)
