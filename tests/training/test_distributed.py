"""Multi-process data parallelism on one machine, and when to join a job."""

import functools
import re
import signal

import jax
import numpy as np
import pytest

from configs import low_level as low_level_config
from grepq_jax.formats import encoder_export
from grepq_jax.training import distributed
from grepq_jax.training import trainer
from conftest import assert_same_training, params_of, read_scalars
from support import gated_main
from support.run_main import Child, child_env, free_port

pytestmark = pytest.mark.slow  # subprocesses or the storage emulator: the full suite runs it

STEPS = 6
# XLA's log line once JAX's preemption protocol has picked the step to stop at.
SYNC_POINT_SET = "Preemption sync counter is set"
CLUSTER_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "OMPI_MCA_orte_hnp_uri",
    "KUBERNETES_SERVICE_HOST",
    "JAX_COORDINATOR_ADDRESS",
)


def start_pair(folder, workdir, logs, gates, held=()) -> list[Child]:
    """Processes 0 and 1 of one job, 2 CPU devices each, on 127.0.0.1, logging
    to `logs`_process_{0,1}.log; the batches of steps `held` wait at gates
    (tests/support/gated_main.py)."""
    port = free_port()
    # INFO from XLA's C++: the preemption protocol's progress.
    env = dict(child_env(devices=2), TF_CPP_MIN_LOG_LEVEL="0")
    return [
        Child(
            gated_main.command(
                gates,
                held,
                "configs/low_level.py:tiny",
                workdir,
                f"--config.data.path={folder}",
                f"--config.num_epochs={STEPS}",  # 8 photos, batch 8
                "--config.checkpoint_every_steps=1",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env,
            logs.with_name(f"{logs.name}_process_{i}.log"),
        )
        for i in (0, 1)
    ]


def test_two_processes_train_as_one_process_with_their_devices(
    photo_folder, tmp_path
):
    """2 processes x 2 CPU devices (gloo collectives) against 1 x 4.

    After step 1, SIGTERM reaches process 1 only: JAX's preemption service
    stops both at the same step, after saving it; the same commands then
    resume. Both wait before step 2 until the service has picked that step
    (the latest step + 1), so the test races neither the job nor the service.
    """
    workdir, gates = tmp_path / "two", tmp_path / "gates"
    stopped = start_pair(photo_folder, workdir, tmp_path / "stopped", gates, held=[1])
    stopped[0].wait_for(lambda: len(list(gates.glob("1.reached.*"))) == 2)
    stopped[1].signal(signal.SIGTERM)
    for child in stopped:
        child.wait_for(lambda child=child: SYNC_POINT_SET in child.text())
    (gates / "1").touch()
    for child in stopped:
        assert child.wait() == 0, child.text()[-3000:]
    stops = {
        int(re.search(r"Stopped by SIGTERM after step (\d+)", c.text())[1])
        for c in stopped
    }
    assert stops == {2}
    resumed = start_pair(photo_folder, workdir, tmp_path / "resumed", gates)
    for child in resumed:
        assert child.wait() == 0, child.text()[-3000:]
    assert f"Resuming from step 2 of {STEPS}" in resumed[0].text()

    config = low_level_config.get_config("tiny")
    config.data.path = str(photo_folder)
    config.num_epochs, config.num_devices = STEPS, 4
    state = trainer.train_and_evaluate(config, str(tmp_path / "one"))
    tree, meta = encoder_export.read(str(workdir / "export"))
    assert meta["step"] == int(state.step) == STEPS
    # The same global computation; gloo's all-reduce may sum in another
    # order than the in-process one, so float32 round-off is allowed.
    assert_same_training(tree["params"], params_of(state), rtol=1e-5, atol=1e-7,
                         learning_rate=config.optim.learning_rate)
    # BatchNorm statistics follow the weights, so they inherit that rounding
    # (seen: 1.5e-7 on one of 32): the eight-device test's tolerance.
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
    jax.tree.map(close, tree["batch_stats"], jax.device_get(state.batch_stats))
    # Process 0 alone logs metrics and draws the progress bar.
    assert len(read_scalars(workdir / "tensorboard", "loss")) == STEPS
    assert f"{STEPS}/{STEPS}" in resumed[0].text()
    assert f"/{STEPS}" not in resumed[1].text() + stopped[1].text()


@pytest.fixture
def joins(monkeypatch):
    """Records jax.distributed.initialize calls instead of connecting."""
    calls = []
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs)
    )
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # What the log line after joining asks of the (not really) joined job.
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    return calls


def test_one_machine_connects_nowhere(joins):
    assert not distributed.initialize()
    assert not distributed.initialize(num_processes=1)
    assert joins == []


def test_flags_name_the_job(joins):
    assert distributed.initialize(
        coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3
    )
    assert joins == [
        dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    ]


def test_slurm_job_steps_join_by_jax_detection(joins, monkeypatch):
    slurm = dict(
        SLURM_JOB_ID="77",
        SLURM_STEP_NODELIST="node[1-2]",
        SLURM_PROCID="1",
        SLURM_LOCALID="1",
    )
    for name, value in dict(slurm, SLURM_NTASKS="1").items():
        monkeypatch.setenv(name, value)
    assert not distributed.initialize()  # a one-task allocation
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed.initialize()
    # Everything is left to JAX's own SLURM detection.
    assert joins == [
        dict(coordinator_address=None, num_processes=None, process_id=None)
    ]


def test_a_coordinator_without_other_processes_is_an_error(joins):
    with pytest.raises(ValueError, match="--num_processes > 1"):
        distributed.initialize(coordinator_address="127.0.0.1:1234")
    assert joins == []
