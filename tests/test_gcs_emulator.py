"""gs:// workdirs for real, against a Cloud Storage emulator on 127.0.0.1.

tests/gcs_emulator.py runs gcp-storage-emulator and points every client at
it: tensorstore (Orbax's arrays), etils.epath (TensorBoard events, Orbax's
metadata, the FSIM label cache and the export's description; through
TensorFlow's file layer where TensorFlow is installed, else gcsfs) and
google-cloud-storage (Orbax asks it about the bucket). What the runs leave in the bucket is read back through the
emulator's own JSON API, not through the clients under test.

The training run is the one of training/test_faults.py (12 steps, a checkpoint each
step, 3 kept), killed after its third save (held before step 5 by
tests/support/gated_main.py) and run again: it must end with the parameters of an
uninterrupted local run, bit for bit.
"""

import time

import jax
import numpy as np
import pytest

from grepq_jax.commands import cli, export, score
from grepq_jax.formats import encoder_export
from grepq_jax.scoring import api
from grepq_jax.scoring import packing
from grepq_jax.training import trainer
from grepq_jax.formats import corpus
from conftest import params_of, read_scalars
from support import gcs_emulator
from support.run_main import Child, child_env
from support.interrupted_runs import TOTAL_STEPS, resumed_from, run_command, tiny_config

pytestmark = pytest.mark.slow  # subprocesses or the storage emulator: the full suite runs it

WORKDIR = "gs://bucket/run"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator, and this process's gs:// clients pointed at it."""
    with gcs_emulator.running(tmp_path_factory.mktemp("gcs")) as emulator:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in emulator.env.items():
                patch.setenv(name, value)
            yield emulator


def committed_steps(gcs) -> list[int]:
    """Steps whose save finished: Orbax writes commit_success.txt last."""
    return sorted(
        int(name.split("/")[2])
        for name in gcs.names("run/checkpoints/")
        if name.endswith("/commit_success.txt") and name.count("/") == 3
    )


@pytest.fixture(scope="module")
def uninterrupted(photo_folder, tmp_path_factory):
    """(workdir, state) of the same run on local disk, never stopped."""
    workdir = tmp_path_factory.mktemp("local_run")
    state = trainer.train_and_evaluate(tiny_config(photo_folder), str(workdir))
    assert int(state.step) == TOTAL_STEPS
    return workdir, state


@pytest.fixture(scope="module")
def killed_and_resumed(gcs, photo_folder, tmp_path_factory):
    """The gs:// run: SIGKILLed after its third save, then run again.

    Returns (last committed step before the restart, the restart's log)."""
    logs = tmp_path_factory.mktemp("gs_run_logs")
    env = dict(child_env(devices=8), **gcs.env)
    gates = logs / "gates"  # tests/support/gated_main.py holds the first run there

    def saved(step):
        time.sleep(0.2)  # the emulator serves one request at a time
        return f"run/checkpoints/{step}/commit_success.txt" in gcs.names(
            f"run/checkpoints/{step}/"
        )

    first = Child(run_command(photo_folder, WORKDIR, gates, held=[4]), env,
                  logs / "first.log")
    first.wait_for(lambda: saved(3))
    first.kill()  # lands in step 4, its save, or at the gate before step 5
    kept = committed_steps(gcs)[-1]
    assert kept in (3, 4)

    second = Child(run_command(photo_folder, WORKDIR, gates), env,
                   logs / "second.log")
    assert second.wait() == 0, second.text()[-3000:]
    return kept, second.text()


def test_each_client_writes_and_reads_through_the_emulator(gcs, tmp_path):
    import tensorstore as ts
    from etils import epath

    epath.Path("gs://bucket/clients/epath.txt").write_text("by etils.epath")
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "gcs", "bucket": "bucket", "path": "clients/a/"},
    }
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    store = ts.open(spec, create=True, dtype=ts.float32, shape=[3, 4]).result()
    store.write(array).result()

    assert gcs.read("clients/epath.txt") == b"by etils.epath"
    assert "clients/a/.zarray" in gcs.names("clients/a/")
    with epath.Path("gs://bucket/clients/epath.txt").open("rb") as file:
        file.seek(3)  # a ranged read
        assert file.read(5) == b"etils"
    np.testing.assert_array_equal(ts.open(spec).result().read().result(), array)


def test_tensorflow_file_layer_writes_and_reads_through_the_emulator(gcs):
    """etils.epath's gs:// backend where TensorFlow is installed."""
    tf = pytest.importorskip(
        "tensorflow", reason="TensorFlow comes only with the extra [tfds]")
    with tf.io.gfile.GFile("gs://bucket/clients/tf.txt", "w") as file:
        file.write("written by tf.io.gfile")
    assert gcs.read("clients/tf.txt") == b"written by tf.io.gfile"
    with tf.io.gfile.GFile("gs://bucket/clients/tf.txt", "rb") as file:
        file.seek(11)  # a ranged read
        assert file.read(4) == b"tf.i"


def test_a_killed_gs_run_resumes_and_ends_bit_for_bit(
    gcs, killed_and_resumed, uninterrupted
):
    kept, log = killed_and_resumed
    assert resumed_from(log) == kept
    tree, meta = encoder_export.read(f"{WORKDIR}/export")
    assert meta["step"] == TOTAL_STEPS
    _, state = uninterrupted
    jax.tree.map(np.testing.assert_array_equal, tree["params"], params_of(state))
    jax.tree.map(
        np.testing.assert_array_equal,
        tree["batch_stats"],
        jax.device_get(state.batch_stats),
    )


def test_checkpoints_rotate_in_the_bucket(gcs, killed_and_resumed):
    # keep_checkpoints=3: the older steps' objects were deleted, and no
    # unfinished temporary folder is left behind.
    assert committed_steps(gcs) == [10, 11, 12]
    folders = {name.split("/")[2] for name in gcs.names("run/checkpoints/")}
    # "": the folder's own marker, which TensorFlow's file layer leaves.
    assert folders - {""} == {"10", "11", "12"}


def test_fsim_cache_and_tensorboard_events_are_in_the_bucket(
    gcs, killed_and_resumed, uninterrupted
):
    kept, log = killed_and_resumed
    (cache,) = [
        name for name in gcs.names("run/fsim_cache/") if name.endswith(".npz")
    ]
    assert f"Read 8 FSIM matrices from gs://bucket/{cache}" in log
    events = [n for n in gcs.names("run/tensorboard/") if "tfevents" in n]
    assert len(events) == 2  # one a run
    # The restart logged every step after `kept`; the killed run's last
    # events may be lost with it (they are uploaded when flushed).
    logged = read_scalars(f"{WORKDIR}/tensorboard", "loss")
    local = read_scalars(uninterrupted[0] / "tensorboard", "loss")
    assert TOTAL_STEPS - kept <= len(logged) <= TOTAL_STEPS
    assert logged == local[-len(logged) :]


def test_a_model_packaged_from_the_gs_export_scores_like_the_local_one(
    gcs, killed_and_resumed, uninterrupted, tmp_path
):
    # Same process, same programs: the scores must be equal, exactly.
    packing.export_model(tmp_path / "model", low_level=f"{WORKDIR}/export")
    local_workdir, _ = uninterrupted
    packing.export_model(tmp_path / "local_model",
                        low_level=str(local_workdir / "export"))
    photograph = corpus.load_embedded_photograph("skimage:astronaut")
    images = [photograph[:160, :200], photograph[100:260, 200:400]]
    from_gs = api.create_scorer(tmp_path / "model")
    from_local = api.create_scorer(tmp_path / "local_model")
    assert [from_gs.score(p) for p in images] == [
        from_local.score(p) for p in images
    ]


def test_a_model_folder_on_gs(gcs, killed_and_resumed, tmp_path, monkeypatch, capsys):
    """What train's closing message suggests: --out and --model on gs://, as
    commands and through the API, scoring as a local folder does."""
    monkeypatch.chdir(tmp_path)
    argv = ["export", f"--low_level={WORKDIR}/export", "--out=gs://bucket/model"]
    assert export.main(cli.parse(export.FLAGS, argv)) == 0
    assert "model/model.json" in gcs.names("model/")
    packing.export_model("local_model", low_level=f"{WORKDIR}/export")
    image = corpus.load_embedded_photograph(next(iter(corpus.EMBEDDED_PHOTOGRAPHS)))[:192, :192]
    remote, local = api.create_scorer("gs://bucket/model"), api.create_scorer("local_model")
    assert remote.score_range == (0.0, 0.5)
    assert remote.score(image) == local.score(image)
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.fromarray((image * 255).round().astype(np.uint8)).save("image.png")
    capsys.readouterr()
    argv = ["score", "--model=gs://bucket/model", "--output=scores.csv", "image.png"]
    assert score.main(cli.parse(score.FLAGS, argv)) == 0
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,low_level,high_level,combined,error"
    path, low_level, _, _, error = rows[1].split(",")
    assert (path, float(low_level), error) == ("image.png", remote.score(
        np.asarray(Image.open("image.png"), np.float32) / 255), "")
