"""launch/tpu_vm.sh --rehearse: every step the workers would run, run here.

The launcher runs as it would against a TPU VM, with launch/rehearsal/gcloud
standing in for gcloud: it unpacks the tarball into a fresh home, provisions
Python there (launch/provision.sh: uv, a virtual environment, the package and
jax at the pin), stages the data from gs://, and trains the tiny config with
its workdir on gs:// (the emulator of tests/gcs_emulator.py). The machine's
`python3` is Python 3.10, as on the tpu-ubuntu2204-base image: too old for
the package, so only the provisioned environment can run it.

What differs from a TPU VM, and why: plain jax instead of jax[tpu] (no TPU
here); one worker; uv may not download a CPython (UV_PYTHON_DOWNLOADS=never:
its builds come from GitHub, out of reach here), so it is handed this test's
own interpreter by path where the launcher's default `--python 3.11` has it
download one. Wheels come from uv's cache (UV_CACHE_DIR, else ~/.cache/uv):
only a machine's first run downloads them from PyPI.
"""

import os
from pathlib import Path
import subprocess
import sys

import pytest

from support import gcs_emulator
from support.run_main import REPO

pytestmark = pytest.mark.slow  # subprocesses or the storage emulator: the full suite runs it

JAX_VERSION = next(
    line.split("==")[1].strip()
    for line in (REPO / "requirements.txt").read_text().splitlines()
    if line.startswith("jax==")
)


def python_310() -> Path:
    """An interpreter of Python 3.10, the TPU image's; skips without one."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(root.glob("versions/3.10*/bin/python3.10"))
    if not found:
        pytest.skip(f"no Python 3.10 under {root}/versions")
    return found[-1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with gcs_emulator.running(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def image_bin(tmp_path_factory) -> Path:
    """A folder whose python3 is Python 3.10, first on the workers' PATH."""
    folder = tmp_path_factory.mktemp("image_bin")
    (folder / "python3").symlink_to(python_310())
    return folder


def launcher_env(gcs, image_bin) -> dict[str, str]:
    """This machine's environment less Python settings, the image's python3
    first on PATH, and what the workers get (see launch/rehearsal/gcloud)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(gcs.env)
    env["PATH"] = f"{image_bin}:/usr/local/bin:/usr/bin:/bin"
    env["UV_CACHE_DIR"] = os.environ.get(
        "UV_CACHE_DIR", str(Path.home() / ".cache" / "uv")
    )
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_SYSTEM_CERTS"] = "true"  # the machine's authorities, as pip's
    env["JAX_PLATFORMS"] = "cpu"
    passed = [*gcs.env, "UV_CACHE_DIR", "UV_PYTHON_DOWNLOADS",
              "UV_SYSTEM_CERTS", "SSL_CERT_FILE", "JAX_PLATFORMS"]
    env["GREPQ_REHEARSAL_ENV"] = ",".join(passed)
    return env


@pytest.fixture(scope="module")
def rehearsal(gcs, image_bin, photo_folder, tmp_path_factory):
    """The launcher's run: (worker home, its output, its environment)."""
    gcs.upload(photo_folder, "photos")
    home = tmp_path_factory.mktemp("worker_home")
    env = launcher_env(gcs, image_bin)
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "tpu_vm.sh"), "--rehearse", str(home),
         "--name", "rehearsal", "--zone", "us-central2-b",
         "--python", os.path.realpath(sys.executable),
         "--data", "gs://bucket/photos",
         "configs/low_level.py:tiny", "gs://bucket/rehearsal", "--",
         "--config.batch_size=2", "--config.checkpoint_every_steps=2"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return home, result.stderr, env


def in_worker(home: Path, env: dict, command: str) -> subprocess.CompletedProcess:
    """`command` in the worker's shell: its home, the image's PATH."""
    worker = {"HOME": str(home), "PATH": env["PATH"], "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", command], cwd=home, env=worker,
                          capture_output=True, text=True, timeout=120)


def test_the_workers_train_with_the_provisioned_python(rehearsal):
    home, log, env = rehearsal
    assert "no TPU VM created" in log
    image = in_worker(home, env, "python3 --version")
    assert image.stdout.startswith("Python 3.10."), image
    venv = in_worker(
        home, env,
        # From / : in the home, grepq_jax would be the checkout's folder.
        "cd / && ~/grepq_venv/bin/python -c 'import sys, jax, grepq_jax; "
        'print("%d.%d" % sys.version_info[:2], jax.__version__, '
        "grepq_jax.__file__)'",
    )
    assert venv.returncode == 0, venv.stderr[-2000:]
    assert venv.stdout.split() == [
        "%d.%d" % sys.version_info[:2], JAX_VERSION,
        str(home / "grepq_jax" / "grepq_jax" / "__init__.py"),
    ]
    assert "Done: 4 steps." in log


def test_the_images_python_would_have_refused_the_install(rehearsal):
    """The old launcher's step: pip of the image's python3, straight in."""
    home, _, env = rehearsal
    refused = in_worker(
        home, env,
        f"python3 -m pip install --dry-run -e ~/grepq_jax 'jax=={JAX_VERSION}'",
    )
    assert refused.returncode != 0
    # pip names the pins that need Python >= 3.11 (jax's, or the package's).
    assert "different python" in refused.stderr.lower()
    assert ">=3.11" in refused.stderr


def test_data_staged_and_every_writer_reached_the_bucket(
    rehearsal, gcs, photo_folder
):
    home, _, _ = rehearsal
    staged = sorted((home / "grepq_data").iterdir())
    assert [p.name for p in staged] == sorted(
        p.name for p in photo_folder.iterdir()
    )
    assert all(p.read_bytes() == (photo_folder / p.name).read_bytes()
               for p in staged)
    names = gcs.names("rehearsal/")
    # Orbax (tensorstore and etils.epath): every 2 of 4 steps, and the first
    # (Orbax saves when there is no checkpoint yet).
    committed = [n.split("/")[2] for n in names
                 if n.endswith("/commit_success.txt") and n.count("/") == 3
                 and "/checkpoints/" in n]
    assert committed == ["1", "2", "4"]
    assert "rehearsal/export/encoder.json" in names
    # TensorBoard, the FSIM label cache, JAX's compilation cache.
    for folder in ("tensorboard/events.out.tfevents.", "fsim_cache/fsim_labels_",
                   "compile_cache/jit_train_step"):
        assert any(n.startswith(f"rehearsal/{folder}") for n in names), folder
