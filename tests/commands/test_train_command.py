"""The training command as a user types it: relative paths from any folder,
resuming, one-line usage errors with exit 2, the closing message's commands,
the `grepq` dispatcher, and the README's quick start as CI extracts it."""

import os
import re
from pathlib import Path
import shutil
import subprocess
import sys
from unittest import mock

from absl import flags
from absl.testing import flagsaver
import numpy as np
from PIL import Image
import pytest
import skimage.data

from configs import low_level as low_level_config
from grepq_jax.formats import checkpoint
from grepq_jax import errors
from grepq_jax.commands import train as main_module
from grepq_jax.training import trainer
from grepq_jax.models import clip
from support import run_main

REPO = run_main.REPO


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=run_main.child_env(1),
        capture_output=True, text=True, timeout=run_main.TIMEOUT_S)


@pytest.fixture(scope="module")
def relative_run(photo_folder, tmp_path_factory):
    """The tiny config trained from a folder that is not the repository, with
    relative config, data and workdir paths; then the same command again."""
    cwd = tmp_path_factory.mktemp("user")
    shutil.copytree(photo_folder, cwd / "photos")
    config = os.path.relpath(REPO / "configs" / "low_level.py", cwd) + ":tiny"
    command = ["-m", "grepq_jax.main", f"--config={config}",
               "--workdir=runs/tiny", "--config.data.path=photos"]
    first = _run(command, cwd)
    second = _run(command, cwd)
    return cwd, first, second


@pytest.mark.slow
def test_relative_paths_train_export_and_resume(relative_run):
    cwd, first, second = relative_run
    assert first.returncode == 0, first.stderr[-3000:]
    workdir = cwd / "runs" / "tiny"
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps and steps[-1] == 1  # 8 groups, batch 8, one epoch
    assert (workdir / "export" / "encoder.json").is_file()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from step 1 of 1." in second.stderr


@pytest.mark.slow
def test_the_closing_message_gives_commands_that_work(relative_run):
    """The export and score commands printed at the end run as printed
    (through the `grepq` dispatcher) and score a photograph."""
    cwd, first, _ = relative_run
    lines = [line.strip() for line in first.stderr.splitlines()]
    export, score = (line for line in lines if line.startswith("grepq "))
    assert export.startswith("grepq export --low_level=") and str(cwd) in export
    assert score.startswith("grepq score --model=")
    photo = cwd / "astronaut.png"  # Larger than one 96x96 scoring patch.
    Image.fromarray(skimage.data.astronaut()).resize((160, 160)).save(photo)
    score = score.replace("IMAGE_OR_FOLDER ...", photo.name)
    exported = _run(["-m", "grepq_jax.commands.cli", *export.split()[1:]], cwd)
    assert exported.returncode == 0, exported.stderr[-3000:]
    scored = _run(["-m", "grepq_jax.commands.cli", *score.split()[1:]], cwd)
    assert scored.returncode == 0, scored.stderr[-3000:]
    header, row = scored.stdout.splitlines()
    assert header.startswith("path,low_level")
    low_level = float(row.split(",")[1])
    assert 0.0 < low_level <= 0.5


def test_logs_are_quiet(relative_run):
    """No TensorFlow start-up notices, no transformers on a low-level run."""
    _, first, _ = relative_run
    for noise in ("oneDNN", "absl::InitializeLog", "transformers", "Traceback"):
        assert noise not in first.stderr


def _parse(argv: list[str], capsys) -> tuple[int, str]:
    argv = ["grepq train", *argv]
    # ml_collections reads --config.X overrides from sys.argv itself.
    with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv), \
            pytest.raises(SystemExit) as exit_info:
        main_module.parse_flags(argv)
    flags.FLAGS.unparse_flags()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err + captured.out


CONFIG = str(REPO / "configs" / "low_level.py")


@pytest.mark.parametrize("argv, message", [
    ([f"--config={CONFIG}", "--workdir=w", "--config.batch_szie=3"],
     "unknown config field batch_szie; did you mean batch_size?"),
    ([f"--config={CONFIG}", "--workdir=w", "--config.data.pth=x"],
     "unknown config field data.pth; did you mean data.path?"),
    (["--config=configs/no_such_config.py", "--workdir=w"],
     "config file configs/no_such_config.py does not exist"),
    ([f"--config={CONFIG}:papr", "--workdir=w"],
     "unknown low_level config 'papr'"),
    ([f"--config={CONFIG}", "--workdir=w", "--config.batch_size=abc"],
     "--config.batch_size=abc"),
    (["--confg=x"], "Unknown command line flag 'confg'"),
    (["--workdir=w"], "--config is required"),
    ([f"--config={CONFIG}"], "--workdir is required"),
    ([f"--config={CONFIG}", "--workdir=w", "extra"], "unexpected arguments: extra"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys):
    code, output = _parse(argv, capsys)
    assert code == 2
    first_line = output.splitlines()[0]
    assert message in first_line
    assert "Traceback" not in output


def test_a_workdir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("taken").write_text("")
    code, output = _parse([f"--config={CONFIG}", "--workdir=taken/run"], capsys)
    assert code == 2
    assert f"{tmp_path}/taken is a file, not a folder" in output


def test_help_shows_usage_variants_and_how_to_list_fields(capsys):
    code, output = _parse(["--help"], capsys)
    assert code == 0
    assert output.startswith("usage: grepq train --config=FILE[:VARIANT]")
    assert "configs/low_level.py:paper" in output and "--show_config" in output
    code, output = _parse([f"--config={CONFIG}:paper", "--config.batch_size=3",
                           "--show_config"], capsys)
    assert code == 0
    assert "batch_size: 3" in output and "workers: -1" in output


def test_a_bad_data_folder_is_a_usage_error(tmp_path):
    config = train_config(path=str(tmp_path / "nowhere"))
    with pytest.raises(errors.UsageError, match="nowhere"):
        trainer.train_and_evaluate(config, str(tmp_path / "w"))


def train_config(**data):
    config = low_level_config.get_config("tiny")
    config.data.update(data)
    return config


_BREAK_THE_CHECKPOINT_FOLDER = """
import shutil, sys
from grepq_jax.formats import checkpoint
from grepq_jax.commands import train as train_command
made = checkpoint.TrainCheckpoints.__init__
def replaced_by_a_file(self, directory, **kwargs):
    made(self, directory, **kwargs)
    shutil.rmtree(directory)
    open(directory, "w").close()  # Where step 1 should go.
checkpoint.TrainCheckpoints.__init__ = replaced_by_a_file
sys.argv = ["python -m grepq_jax.main"] + sys.argv[1:]
train_command.run_command()
"""


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_saved_stops_at_once(photo_folder, tmp_path):
    """The first save is waited for: a folder that cannot take checkpoints
    stops the run there (exit 1), in one line naming it and the cause, with
    none of Orbax's background tracebacks."""
    done = _run(["-c", _BREAK_THE_CHECKPOINT_FOLDER, f"--config={CONFIG}:tiny",
                 "--workdir=run", f"--config.data.path={photo_folder}",
                 "--config.num_epochs=3", "--config.checkpoint_every_steps=1"],
                tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    # Which of the two the OS reports depends on whether Orbax's background
    # thread had begun the step's folder when the file replaced its parent.
    assert re.match("python -m grepq_jax.main: cannot save the checkpoint of step 1 in "
                    f"{re.escape(str(tmp_path))}/run/checkpoints: "
                    "(NotADirectoryError|FileNotFoundError)", last), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Done:" not in done.stderr


def test_checkpoints_of_a_relative_folder_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoints = checkpoint.TrainCheckpoints("run/checkpoints",
                                              save_every_steps=1, keep=1)
    assert checkpoints.save(1, {"w": np.arange(3.0)})
    checkpoints.close()
    again = checkpoint.TrainCheckpoints("run/checkpoints", save_every_steps=1,
                                        keep=1)
    restored = again.restore_latest({"w": np.zeros(3)})
    np.testing.assert_array_equal(restored["w"], [0.0, 1.0, 2.0])


def test_degenerate_data_warns(caplog):
    config = train_config()
    trainer.warn_if_degenerate(config, 1)
    trainer.warn_if_degenerate(config, 3)  # batch_size 8
    trainer.warn_if_degenerate(config, 8)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert warnings[0].startswith("Only one training example")
    assert warnings[1].startswith("Only 3 training examples for batch_size=8")


def test_an_unreachable_hub_fails_at_once(monkeypatch):
    """No retries: with the hub unreachable and nothing cached, loading a
    hub name is a ClipLoadError (exit 1), naming the checkpoint."""
    from huggingface_hub import constants  # pylint: disable=import-outside-toplevel

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert not clip._hub_reachable()  # pylint: disable=protected-access
    with pytest.raises(clip.ClipLoadError, match="no-such-org/no-such-clip"):
        clip.load_clip("no-such-org/no-such-clip")
    assert issubclass(clip.ClipLoadError, errors.RunFailure)


def test_ci_runs_the_readme_quick_start_as_written():
    sys.path.insert(0, str(REPO / ".ci"))
    try:
        import readme_commands  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.pop(0)
    commands = readme_commands.quick_start_commands(
        (REPO / "README.md").read_text())
    assert commands == [
        "pip install -e . && python -m grepq_jax.main "
        "--config=configs/low_level.py --workdir=runs/low_level",
        "pip install -e '.[test]' && python -m pytest",
    ]
    assert "readme_commands.py README.md" in (REPO / ".ci" / "run").read_text()


def test_grepq_dispatches_and_refuses_unknown_commands():
    listed = _run(["-m", "grepq_jax.commands.cli", "--help"], REPO)
    assert listed.returncode == 0 and "train" in listed.stdout
    unknown = _run(["-m", "grepq_jax.commands.cli", "trian"], REPO)
    assert unknown.returncode == 2
    assert "unknown command 'trian'" in unknown.stderr
