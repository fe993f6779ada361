"""The core install has no TensorFlow: the commands run without it, and the
TFDS builders, which need it, are the extra [tfds].

Where TensorFlow is installed, these tests make it unimportable in a child
process, as it is in a core install.
"""

import math
import re
import subprocess
import sys
import tomllib

import pytest

from conftest import read_scalars
from support.run_main import REPO, TIMEOUT_S, child_env

# `import tensorflow` (or tensorflow_datasets) raises ImportError, and
# find_spec finds neither, as where they are not installed.
BLOCK_TENSORFLOW = (
    "import sys; sys.modules.update(tensorflow=None, tensorflow_datasets=None); ")


def requirement_names(lines) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", line.strip()).group().lower()
            for line in lines if line.strip() and not line.startswith("#")}


def test_the_core_requirements_leave_tensorflow_to_the_tfds_extra():
    core = requirement_names((REPO / "requirements.txt").read_text().splitlines())
    assert not {n for n in core if n.startswith("tensorflow")}, core
    assert "etils" in core and not {n for n in core if n.startswith("tensorboard")}, core
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert requirement_names(project["optional-dependencies"]["tfds"]) == {
        "tensorflow-datasets", "tensorflow-cpu"}


@pytest.mark.slow  # a child process
def test_the_tfds_builders_without_the_extra_say_how_to_add_it():
    done = subprocess.run(
        [sys.executable, "-c",
         BLOCK_TENSORFLOW + "import grepq_jax.evaluation.tfds_iqa"],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: grepq_jax.evaluation.tfds_iqa needs TensorFlow Datasets "
        "(no module tensorflow_datasets), an extra: pip install -e '.[tfds]'")


@pytest.mark.slow  # a child process
def test_training_runs_and_logs_without_tensorflow(tmp_path):
    """The quick start's training command, TensorFlow, tensorboard and
    tensorboardX unimportable (the event files need none of them); the
    workdir relative, as a user types it."""
    block_tensorboard = "sys.modules.update(tensorboard=None, tensorboardX=None); "
    train = (BLOCK_TENSORFLOW + block_tensorboard + "import runpy; sys.argv[0] = 'grepq_jax.main'; "
             "runpy.run_module('grepq_jax.main', run_name='__main__')")
    done = subprocess.run(
        [sys.executable, "-c", train, f"--config={REPO}/configs/low_level.py:tiny",
         "--workdir=run", "--config.num_devices=1", "--config.num_epochs=2",
         "--config.log_every_steps=1"],
        cwd=tmp_path, env=dict(child_env(devices=1), PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tensorflow" not in done.stderr.lower(), done.stderr[-3000:]
    losses = read_scalars(tmp_path / "run/tensorboard", "loss")
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    assert (tmp_path / "run/export").is_dir()
