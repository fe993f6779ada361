"""A full disk is one line naming what was being written, exit 1.

Where the test may mount one (root, a kernel with tmpfs), a real size-limited
tmpfs is the workdir; a simulated ENOSPC at Orbax's write call always runs.
"""

import errno
import os
import subprocess

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from grepq_jax.formats import encoder_export
from grepq_jax.formats import checkpoint
from support.run_main import REPO, TIMEOUT_S, child_env, main_command

pytestmark = pytest.mark.slow  # subprocesses or the storage emulator: the full suite runs it


def mounted_tmpfs(folder, size: str):
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(folder)], capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system: less than a 1 MB state's checkpoint."""
    folder = mounted_tmpfs(tmp_path / "small", "256k")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def a_megabyte():
    return {"w": jnp.asarray(np.random.default_rng(0).normal(size=(512, 512)),
                             jnp.float32)}


def test_a_checkpoint_on_a_full_disk_is_one_line(small_disk, capfd):
    checkpoints = checkpoint.TrainCheckpoints(
        str(small_disk / "checkpoints"), save_every_steps=1, keep=3)
    with pytest.raises(checkpoint.CheckpointError) as raised:
        checkpoints.save(1, a_megabyte())
    message = str(raised.value)
    assert message.startswith(
        f"no space left on device to save the checkpoint of step 1 in "
        f"{small_disk / 'checkpoints'} (writing {small_disk / 'checkpoints'}/1")
    assert "its arrays need about 1.0 MB" in message and "\n" not in message
    checkpoints.close()
    assert "Event loop is closed" not in capfd.readouterr().err
    # Nothing half-written is taken for a step.
    assert checkpoint.TrainCheckpoints(
        str(small_disk / "checkpoints"), save_every_steps=1, keep=3).latest_step is None


def test_an_export_on_a_full_disk_is_one_line(small_disk, capfd):
    with pytest.raises(checkpoint.CheckpointError) as raised:
        encoder_export.write(str(small_disk / "export"), a_megabyte(), {"step": 1})
    message = str(raised.value)
    assert message.startswith(
        f"no space left on device to write the export in {small_disk / 'export'}")
    assert "its arrays need about 1.0 MB" in message and "\n" not in message
    assert "Event loop is closed" not in capfd.readouterr().err
    assert not (small_disk / "export" / encoder_export.METADATA).exists()


def test_a_simulated_enospc_at_the_write_call_is_one_line(tmp_path, monkeypatch):
    """Orbax's own write call fails as a full disk makes it fail."""
    target = tmp_path / "export" / "params" / "d" / "0123"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", full)
    with pytest.raises(checkpoint.CheckpointError) as raised:
        encoder_export.write(str(tmp_path / "export"), a_megabyte(), {"step": 1})
    free = checkpoint._megabytes(  # pylint: disable=protected-access
        __import__("shutil").disk_usage(tmp_path / "export").free)
    assert str(raised.value) == (
        f"no space left on device to write the export in {tmp_path / 'export'} "
        f"(writing {target}): its arrays need about 1.0 MB, {free} free there; "
        "free some space or write it to another folder")
    assert not (tmp_path / "export" / encoder_export.METADATA).exists()


def test_training_into_a_full_disk_exits_1_in_one_line(small_disk):
    """The whole command, its workdir a full tmpfs given as a relative path."""
    workdir = os.path.relpath(small_disk / "run", REPO)
    child = subprocess.run(
        main_command("configs/low_level.py:tiny", workdir, "--config.num_devices=1"),
        cwd=REPO, env=child_env(devices=1), capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False)
    assert child.returncode == 1, child.stderr[-3000:]
    assert "Traceback" not in child.stderr, child.stderr[-3000:]
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m grepq_jax.main: "), last
    assert "no space left on device" in last, last
    assert "free some space or use another --workdir" in last
    assert not (small_disk / "run" / "export" / encoder_export.METADATA).exists()
