"""Faults on the use side's outputs, made the way a user makes them: an output
named like an input or like another output, stdout closed, a full disk
(a real size-limited tmpfs where this machine lets a test mount one, a
simulated ENOSPC at the write call everywhere), a killed export.

Each command must answer in one line with the right exit status (2 for the
user's mistake, 1 for a failure) and leave no input touched and no empty or
partial output behind.
"""
import contextlib
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
import pytest

from grepq_jax import cli, errors, export, output_files, score
from grepq_jax.scoring import model_folder as folder_format
from model_fixtures import high_level_export, low_level_export, model_folder  # noqa: F401

REPO = pathlib.Path(__file__).parents[1]


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


def test_score_refuses_csv_and_json_into_one_file(model_folder, photos, tmp_path):
    """Issue item 2: --output=x --json=x wrote both, interleaved, exit 0."""
    done = run_command("score", f"--model={model_folder}", "photos", "--output=x",
                       "--json=./x", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith("--output=x and --json=./x are the same file")
    assert not (tmp_path / "x").exists()


def test_score_refuses_maps_inside_the_folder_it_scores(model_folder, photos, tmp_path):
    done = run_command("score", f"--model={model_folder}", "photos", "--output=s.csv",
                       "--maps=photos/maps", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(
        "--maps=photos/maps and the input folder photos overlap")
    assert not (photos / "maps").exists() and not (tmp_path / "s.csv").exists()


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
    monkeypatch.setattr(score, "_write", write_until_full)
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

def test_export_refuses_an_out_inside_an_input(low_level_export, tmp_path):
    shutil.copytree(low_level_export, tmp_path / "low")
    done = run_command("export", "--low_level=low", "--out=low/model", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(
        "export failed: --out=low/model and --low_level=low overlap")
    assert not (tmp_path / "low" / "model").exists()


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
        assert done.stderr.startswith(f"export failed: cannot write {full}/model: no "
                                      "space left on device")
        assert list(full.iterdir()) == []


def test_export_with_a_simulated_full_disk_leaves_nothing(low_level_export, tmp_path,
                                                          monkeypatch, capsys):
    """ENOSPC at the pristine statistics' write, after the encoder is written."""
    def savez_into_full_disk(file, **arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(export.np, "savez", savez_into_full_disk)
    monkeypatch.chdir(tmp_path)
    argv = ["export", f"--low_level={os.path.relpath(low_level_export)}", "--out=model"]
    assert export.main(cli.parse(export.FLAGS, argv)) == 1
    assert one_line(capsys.readouterr().err) == (
        f"export failed: cannot write {tmp_path}/model/pristine_statistics.npz: no space "
        "left on device (free some space or choose another folder, then run it again)")
    assert not (tmp_path / "model").exists()


_KILLED_EXPORT = """\
import os, sys
from grepq_jax import checkpoint, export
write = checkpoint.write_export
def write_then_die(directory, tree, metadata):
    write(directory, tree, metadata)
    os._exit(9)  # As a kill -9 after the first encoder's files.
checkpoint.write_export = write_then_die
sys.argv = ["grepq export"] + sys.argv[1:]
export.run_command()
"""


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
    assert score.create_scorer(tmp_path / "model").score(photos / "p0.png") > 0


def test_export_still_refuses_a_folder_that_is_not_its_own(low_level_export, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    done = run_command("export", f"--low_level={low_level_export}", "--out=model",
                       cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "exists and is not an empty folder" in one_line(done.stderr)
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"
