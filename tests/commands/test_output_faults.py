"""Faults on the use side's outputs, made the way a user makes them: an output
named like an input or like another output, stdout closed, a full disk
(a real size-limited tmpfs where this machine lets a test mount one, a
simulated ENOSPC at the write call everywhere), a killed export.

Each command must answer in one line with the right exit status (2 for the
user's mistake, 1 for a failure) and leave no input touched and no empty or
partial output behind.
"""
import contextlib
import dataclasses
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from PIL import Image
import pytest

from grepq_jax.evaluation import report
from grepq_jax.commands import cli, evaluate, export, score
from grepq_jax.scoring import api, batch
from grepq_jax import errors
from grepq_jax.formats import output_files
from grepq_jax.evaluation import correlation, results_table
from grepq_jax.scoring import model_folder as folder_format
from support.model_fixtures import high_level_export, low_level_export, model_folder  # noqa: F401

REPO = pathlib.Path(__file__).parents[2]


def _photo(seed, height=144, width=160):
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.normal(size=(height, width, 3)), axis=1)
    smooth -= smooth.min()
    return (255 * smooth / smooth.max()).astype(np.uint8)


@pytest.fixture
def photos(tmp_path):
    """tmp_path/photos with three PNGs; the test runs in tmp_path."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_photo(i)).save(folder / f"p{i}.png")
    return folder


def run_command(command, *args, cwd, shell_suffix=""):
    """`python -m grepq_jax.COMMAND args` as a user types it, in `cwd`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]))
    line = " ".join([sys.executable, "-m", f"grepq_jax.{command}", *map(_quote, args)])
    return subprocess.run(["bash", "-c", line + shell_suffix], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _quote(word):
    return "'" + word.replace("'", "'\\''") + "'"


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    return lines[-1]


def leftovers(folder) -> list[str]:
    """Temporary or partial files under `folder`."""
    return sorted(str(p) for p in pathlib.Path(folder).rglob("*")
                  if output_files.PARTIAL_SUFFIX in p.name)


# Outputs never touch inputs or each other ------------------------------------------

@pytest.mark.slow
def test_score_refuses_an_output_onto_an_input_image(model_folder, photos, tmp_path):
    """Issue item 1: --output=photos/p0.png would overwrite the image it scores."""
    before = (photos / "p0.png").read_bytes()
    done = run_command("score", f"--model={model_folder}", "photos",
                       "--output=photos/p0.png", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr) == (
        "--output=photos/p0.png lies inside the input folder photos: a command never "
        "writes onto what it reads or onto another of its outputs; choose another "
        "output path")
    assert (photos / "p0.png").read_bytes() == before


@pytest.mark.slow
def test_score_refuses_an_output_that_is_a_link_to_an_input(model_folder, photos,
                                                            tmp_path):
    (tmp_path / "scores.csv").symlink_to("photos/p1.png")
    before = (photos / "p1.png").read_bytes()
    done = run_command("score", f"--model={model_folder}", "photos/p1.png",
                       "--output=scores.csv", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(
        f"--output=scores.csv (a link to {photos.resolve() / 'p1.png'}) and the input "
        "photos/p1.png are the same file")
    assert (photos / "p1.png").read_bytes() == before


@pytest.mark.slow
def test_score_refuses_csv_and_json_into_one_file(model_folder, photos, tmp_path):
    """Issue item 2: --output=x --json=x wrote both, interleaved, exit 0."""
    done = run_command("score", f"--model={model_folder}", "photos", "--output=x",
                       "--json=./x", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith("--output=x and --json=./x are the same file")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_score_refuses_maps_inside_the_folder_it_scores(model_folder, photos, tmp_path):
    done = run_command("score", f"--model={model_folder}", "photos", "--output=s.csv",
                       "--maps=photos/maps", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(
        "--maps=photos/maps and the input folder photos overlap")
    assert not (photos / "maps").exists() and not (tmp_path / "s.csv").exists()


@pytest.mark.slow
def test_score_writes_beside_inputs_when_nothing_clashes(model_folder, photos, tmp_path):
    """A CSV in the scored folder is no image: allowed, and not scored."""
    done = run_command("score", f"--model={model_folder}", "--mode=zero_shot_low",
                       "photos", "--output=photos/scores.csv", "--json=scores.json",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = (photos / "scores.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["path"] + [
        f"photos/p{i}.png" for i in range(3)]
    assert len(json.loads((tmp_path / "scores.json").read_text())) == 3
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_score_with_stdout_closed_is_a_usage_error(model_folder, photos, tmp_path):
    """Issue item 10: `grepq score ... >&-` was an AttributeError traceback."""
    done = run_command("score", f"--model={model_folder}", "photos", cwd=tmp_path,
                       shell_suffix=" >&-")
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr) == ("stdout is closed, so the CSV has nowhere to go: "
                                     "give --output=FILE (or leave stdout open)")


# A full disk -------------------------------------------------------------------------

@contextlib.contextmanager
def small_tmpfs(size: str):
    """A fresh tmpfs of `size` (mount(8) syntax), or a skip where it cannot be mounted."""
    folder = tempfile.mkdtemp(prefix="grepq_full_")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        os.rmdir(folder)
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              folder], capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield pathlib.Path(folder)
    finally:
        subprocess.run(["umount", folder], check=False)
        os.rmdir(folder)


def fill(folder: pathlib.Path) -> None:
    """Leaves `folder`'s file system with (almost) no free block."""
    with contextlib.suppress(OSError):  # Closing flushes, and fails too.
        with open(folder / "filler", "wb", buffering=0) as file:
            while True:
                file.write(b"\0" * 4096)


@pytest.mark.slow
def test_score_on_a_full_tmpfs_is_one_line_and_leaves_no_file(model_folder, photos,
                                                              tmp_path):
    with small_tmpfs("64k") as full:
        fill(full)
        done = run_command("score", f"--model={model_folder}", "--mode=zero_shot_low",
                           "photos", f"--output={full}/s.csv", f"--json={full}/s.json",
                           cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert one_line(done.stderr).startswith(
            f"score failed: cannot write {full}/s.")
        assert "no space left on device" in one_line(done.stderr)
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


@pytest.mark.slow
def test_score_with_a_simulated_full_disk_leaves_no_file(model_folder, photos, tmp_path,
                                                         monkeypatch, capsys):
    """ENOSPC raised by the row writer after the header, as a full disk would."""
    monkeypatch.chdir(tmp_path)
    written = []

    def write_until_full(file, text):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(text)
        file.write(text)
    monkeypatch.setattr(batch, "_write", write_until_full)
    argv = ["score", f"--model={model_folder}", "--mode=zero_shot_low", "photos",
            "--output=out/s.csv"]
    (tmp_path / "out").mkdir()
    assert score.main(cli.parse(score.FLAGS, argv)) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"score failed: cannot write {tmp_path}/out/s.csv: "
                           "no space left on device")
    assert list((tmp_path / "out").iterdir()) == []


def test_disk_full_names_the_file_and_leaves_other_errors_alone():
    failure = errors.disk_full(OSError(errno.ENOSPC, "No space left on device"), "a/b.csv")
    assert isinstance(failure, errors.RunFailure)
    assert str(failure).startswith("cannot write a/b.csv: no space left on device")
    assert errors.disk_full(OSError(errno.EACCES, "Permission denied"), "a") is None
    assert errors.disk_full(ValueError("no"), "a") is None


def test_replacing_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with output_files.replacing(target) as file:
            file.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    output_files.write_text(target, "new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


# grepq export ------------------------------------------------------------------------

@pytest.mark.slow
def test_export_refuses_an_out_inside_an_input(low_level_export, tmp_path):
    shutil.copytree(low_level_export, tmp_path / "low")
    done = run_command("export", "--low_level=low", "--out=low/model", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(
        "export failed: --out=low/model and --low_level=low overlap")
    assert not (tmp_path / "low" / "model").exists()


@pytest.mark.slow
def test_export_on_a_full_tmpfs_is_one_line_exit_1_and_leaves_nothing(
        low_level_export, high_level_export, tmp_path):
    """Issue item 6: 89 tracebacks and exit 2; the folder needs about 520 kB."""
    with small_tmpfs("256k") as full:
        done = run_command("export", f"--low_level={low_level_export}",
                           f"--high_level={high_level_export}", f"--out={full}/model",
                           cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines() == [
            done.stderr.splitlines()[0]], done.stderr  # One line, nothing else.
        # The words are encoder_export.write's where it reports the full
        # disk itself, export's own otherwise: both name the file system's path.
        assert done.stderr.startswith("export failed: ")
        assert "no space left on device" in done.stderr and f"{full}/model" in done.stderr
        assert list(full.iterdir()) == []


def test_export_with_a_simulated_full_disk_leaves_nothing(low_level_export, tmp_path,
                                                          monkeypatch, capsys):
    """ENOSPC at the pristine statistics' write, after the encoder is written."""
    def write_into_full_disk(path, data):
        with output_files.replacing(path, "wb"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(output_files, "write_bytes", write_into_full_disk)
    monkeypatch.chdir(tmp_path)
    argv = ["export", f"--low_level={os.path.relpath(low_level_export)}", "--out=model"]
    assert export.main(cli.parse(export.FLAGS, argv)) == 1
    assert one_line(capsys.readouterr().err) == (
        f"export failed: cannot write {tmp_path}/model/pristine_statistics.npz: no space "
        "left on device (free some space or choose another folder, then run it again)")
    assert not (tmp_path / "model").exists()


_KILLED_EXPORT = """\
import os, sys
from grepq_jax.formats import encoder_export
from grepq_jax.commands import export
write = encoder_export.write
def write_then_die(directory, tree, metadata):
    write(directory, tree, metadata)
    os._exit(9)  # As a kill -9 after the first encoder's files.
encoder_export.write = write_then_die
sys.argv = ["grepq export"] + sys.argv[1:]
export.run_command()
"""


@pytest.mark.slow
def test_a_killed_export_is_recognised_and_replaced_by_the_rerun(
        low_level_export, high_level_export, photos, tmp_path):
    """Issue item 11: the rerun was refused ("not an empty folder")."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    flags = [f"--low_level={low_level_export}", f"--high_level={high_level_export}",
             "--out=model"]
    killed = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, *flags], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == 9, killed.stderr
    assert (tmp_path / "model" / folder_format.UNFINISHED_MARKER).exists()
    scored = run_command("score", "--model=model", "photos", cwd=tmp_path)
    assert scored.returncode == 2, scored.stderr
    assert one_line(scored.stderr) == (
        f"cannot score with model: {tmp_path}/model is an unfinished model folder (grepq export "
        "stopped before finishing it): run the export again with the same --out, which "
        "replaces it")
    again = run_command("export", *flags, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[0] == (
        f"note: replacing the unfinished model folder {tmp_path}/model (an export that "
        "stopped before finishing)")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "high_level", "low_level", "model.json", "pristine_statistics.npz"]
    assert api.create_scorer(tmp_path / "model").score(photos / "p0.png") > 0


@pytest.mark.slow
def test_export_still_refuses_a_folder_that_is_not_its_own(low_level_export, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    done = run_command("export", f"--low_level={low_level_export}", "--out=model",
                       cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "exists and is not an empty folder" in one_line(done.stderr)
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


# grepq evaluate (with test_evaluate's stand-in model: no encoder to compile) -------------

from support.evaluation_data import SharpnessModel, blur_root, run_cli, stand_in  # noqa: E402,F401


def test_evaluate_refuses_an_out_inside_the_model_folder(stand_in, blur_root, tmp_path,
                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "grepq").mkdir(parents=True)
    assert evaluate.main(cli.parse(evaluate.FLAGS, [
        "evaluate", "--model=models/grepq", "--dataset=csv", f"--root={blur_root}",
        "--out=models/grepq", "--num_train=10"])) == 2
    assert one_line(capsys.readouterr().err) == (
        "evaluation failed: --out=models/grepq (results.csv) lies inside "
        "--model=models/grepq: a command never writes onto what it reads or onto another "
        "of its outputs; choose another output path")
    assert list((tmp_path / "models" / "grepq").iterdir()) == []


def test_evaluate_refuses_an_out_whose_report_would_replace_an_image(
        stand_in, blur_root, tmp_path, capsys):
    root = tmp_path / "dataset"
    shutil.copytree(blur_root, root)
    os.replace(root / "images" / "coffee_0.png", root / "images" / "results.md")
    scores = (root / "scores.csv").read_text()
    (root / "scores.csv").write_text(scores.replace("images/coffee_0.png",
                                                    "images/results.md"))
    before = (root / "images" / "results.md").read_bytes()
    assert run_cli(f"--root={root}", f"--out={root / 'images'}", "--num_train=10") == 2
    assert one_line(capsys.readouterr().err).startswith(
        f"evaluation failed: --out={root / 'images'} (results.md) and the csv image "
        "images/results.md are the same file")
    assert (root / "images" / "results.md").read_bytes() == before


def test_evaluate_with_no_usable_image_says_why(stand_in, blur_root, tmp_path, capsys):
    """Issue item 11: "only 0 of 64 images could be used", without the reason."""
    root = tmp_path / "dataset"
    shutil.copytree(blur_root, root)
    for path in (root / "images").iterdir():
        path.write_bytes(b"not an image")
    assert run_cli(f"--root={root}", f"--out={tmp_path / 'out'}", "--num_train=10") == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("evaluation failed: csv: only 0 of 64 images could be used; "
                           "64 x cannot decode (UnidentifiedImageError: cannot identify "
                           f"image file '{root}/images/")


class ConstantModel(SharpnessModel):
    """Gives every image the same zero-shot score, as a broken encoder would."""

    def analyse(self, items, *, needs, batch_size):
        for key, analysis in super().analyse(items, needs=needs, batch_size=batch_size):
            yield key, (analysis if isinstance(analysis, Exception) else
                        dataclasses.replace(analysis, low_level_score=0.25))


def test_evaluate_with_constant_scores_fails_in_one_line_without_nan(
        stand_in, blur_root, tmp_path, monkeypatch, capsys):
    """Issue item 11: NaN correlations, raw SciPy warnings and exit 0."""
    monkeypatch.setattr(report, "load_model", lambda folder, chunk: ConstantModel())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # A SciPy ConstantInputWarning fails the test.
        status = run_cli(f"--root={blur_root}", f"--out={tmp_path / 'out'}",
                         "--num_train=10")
    assert status == 1
    assert one_line(capsys.readouterr().err) == (
        "evaluation failed: csv, zero-shot low_level score: the predictions of all 64 "
        "images are equal (0.25), so SROCC and PLCC are undefined")
    assert not (tmp_path / "out" / "results.csv").exists()


def test_correlations_of_constant_inputs_are_refused_not_nan():
    varying = np.arange(5.0)
    for function in (correlation.srocc, correlation.krcc, correlation.plcc):
        with pytest.raises(correlation.UndefinedCorrelation, match="subjective scores"):
            function(varying, np.full(5, 3.0))
        assert np.isfinite(function(varying, varying ** 2))


def test_evaluate_on_a_full_tmpfs_is_one_line_and_leaves_no_partial_file(
        stand_in, blur_root, tmp_path, capsys):
    with small_tmpfs("64k") as full:
        fill(full)
        status = run_cli(f"--root={blur_root}", f"--out={full}/out", "--num_train=10")
        assert status == 1
        assert one_line(capsys.readouterr().err) == (
            f"evaluation failed: cannot write {full}/out/features_csv.npz: no space left "
            "on device (free some space or choose another folder, then run it again)")
        assert leftovers(full) == []
        assert not (full / "out" / "results.csv").exists()
        assert not (full / "out" / "features_csv.npz").exists()


def test_evaluate_with_a_simulated_full_disk_names_the_file(stand_in, blur_root, tmp_path,
                                                            monkeypatch, capsys):
    """ENOSPC at the results table's write, after the feature cache is written."""
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(results_table.csv.DictWriter, "writerows", full_disk)
    monkeypatch.chdir(tmp_path)
    assert run_cli(f"--root={blur_root}", "--out=out", "--num_train=10") == 1
    assert one_line(capsys.readouterr().err) == (
        f"evaluation failed: cannot write {tmp_path}/out/results.csv: no space left on "
        "device (free some space or choose another folder, then run it again)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["features_csv.npz"]


def test_replacing_writes_streams_in_place_and_links_through(tmp_path):
    """--output=/dev/null (the benchmarks') must not replace /dev/null, and a
    link to a results file stays a link."""
    before = os.stat("/dev/null")
    output_files.write_text("/dev/null", "rows")
    after = os.stat("/dev/null")
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    target = tmp_path / "shared.csv"
    target.write_text("old")
    target.chmod(0o640)
    (tmp_path / "scores.csv").symlink_to("shared.csv")
    output_files.write_text(tmp_path / "scores.csv", "new")
    assert (tmp_path / "scores.csv").is_symlink() and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640
    output_files.check_no_clash([], [output_files.Place("--output=/dev/null", "/dev/null"),
                                     output_files.Place("--json=/dev/null", "/dev/null")])
