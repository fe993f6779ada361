"""TensorBoard event files written without TensorFlow, read back by TensorBoard.

`tensorflow` is made unimportable in these tests (also where it is installed),
so a writer that needs it fails them.
"""

import sys

from etils.epath import gpath
import numpy as np
import pytest

from grepq_jax import errors
from grepq_jax.training import progress
from conftest import read_scalars
from support import gcs_emulator


@pytest.fixture
def without_tensorflow(monkeypatch):
    """`import tensorflow` raises ImportError, as in a core install.

    Only for the writer: TensorBoard's reader (read_scalars) picks its file
    layer once a process, so it picks it here, before TensorFlow is hidden.
    """
    # Not at import: pytest's collection would load it (TensorFlow, where
    # installed) before torch, which then crashes importing triton.
    from tensorboard.compat import tf as tensorboard_tf
    tensorboard_tf.io  # pylint: disable=pointless-statement
    # etils.epath remembers whether TensorFlow is installed: forget it both
    # ways, so that later tests see the real installation.
    tf_installed = gpath._is_tf_installed  # pylint: disable=protected-access
    tf_installed.cache_clear()
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    yield
    tf_installed.cache_clear()


def test_scalars_read_back_at_their_steps(without_tensorflow, tmp_path,
                                          monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative workdir a user types
    reporter = progress.ProgressReporter(
        "run/tensorboard", total_steps=3, start_step=0, images_per_step=8)
    for step, loss in [(1, 0.75), (2, 0.5), (3, 0.1)]:
        logged = reporter.step_done(step, {"loss": loss, "learning_rate": 1e-3})
    reporter.close()
    # Scalars are float32 in the file.
    np.testing.assert_array_equal(read_scalars("run/tensorboard", "loss"),
                                  np.float32([0.75, 0.5, 0.1]))
    assert read_scalars("run/tensorboard", "learning_rate") == [np.float32(1e-3)] * 3
    # Throughput exists from the second logged step on.
    rates = read_scalars("run/tensorboard", "images_per_second")
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert rates[-1] == np.float32(logged["images_per_second"])
    (event_file,) = (tmp_path / "run/tensorboard").iterdir()
    assert event_file.name.startswith("events.out.tfevents.")


def test_a_restarted_run_adds_a_file_and_tensorboard_keeps_the_new_steps(
        without_tensorflow, tmp_path):
    logdir = tmp_path / "tensorboard"
    first = progress.EventFile(str(logdir))
    first.add_scalars(1, {"loss": 4.0})
    first.add_scalars(2, {"loss": 3.0})
    first.close()
    second = progress.EventFile(str(logdir))  # resumed from step 1
    second.add_scalars(2, {"loss": 2.5})
    second.close()
    assert len(list(logdir.iterdir())) == 2
    assert read_scalars(logdir, "loss") == [4.0, 2.5]


def test_a_local_file_has_each_step_before_close(without_tensorflow, tmp_path):
    """What a run killed at this point leaves."""
    events = progress.EventFile(str(tmp_path))
    events.add_scalars(1, {"loss": 1.0})
    events.add_scalars(2, {"loss": 0.5})
    assert read_scalars(tmp_path, "loss") == [1.0, 0.5]
    events.close()


def test_an_unwritable_logdir_is_one_line_naming_it(without_tensorflow,
                                                    tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").write_text("a file where the workdir should be")
    with pytest.raises(errors.RunFailure) as failure:
        progress.EventFile("run/tensorboard")
    assert str(failure.value) == (
        "cannot write TensorBoard events in run/tensorboard: Not a directory")


@pytest.mark.slow  # the storage emulator
def test_events_on_gs_are_in_the_bucket_and_read_back(tmp_path, monkeypatch):
    """Through etils.epath (gcsfs, or TensorFlow's file layer where it is
    installed), against the Cloud Storage emulator."""
    with gcs_emulator.running(tmp_path) as gcs:
        for name, value in gcs.env.items():
            monkeypatch.setenv(name, value)

        def event_files():  # not TensorFlow's folder marker
            return [n for n in gcs.names("run/tensorboard/") if "tfevents" in n]

        events = progress.EventFile("gs://bucket/run/tensorboard")
        (name,) = event_files()  # a run killed now leaves it
        header = gcs.read(name)
        events.add_scalars(1, {"loss": 0.5})
        events.add_scalars(2, {"loss": 0.25})
        assert gcs.read(name) == header  # not uploaded again at each step
        events.close()
        assert name.startswith("run/tensorboard/events.out.tfevents.")
        assert event_files() == [name]  # rewritten whole, not added to
        # Read through the emulator's own API, not the clients under test.
        copy = tmp_path / "copy" / name.rsplit("/", 1)[1]
        copy.parent.mkdir()
        copy.write_bytes(gcs.read(name))
    assert read_scalars(copy.parent, "loss") == [0.5, 0.25]
