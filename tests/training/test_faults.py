"""Faults: SIGKILL, SIGTERM, half-written checkpoints, non-finite losses.

The kill tests run `python -m grepq_jax.main` as a user would (through
tests/support/gated_main.py, which can hold a step until the test opens its gate) and
compare its export with an uninterrupted in-process run of the same config:
same compiled program (8 CPU devices in both), batches a pure function of
(seed, step), so equal bit for bit.
"""

import dataclasses
import functools
import re
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grepq_jax.formats import encoder_export
from grepq_jax.formats import checkpoint
from grepq_jax.training import trainer
from grepq_jax.training.pathways import PATHWAYS
from conftest import params_of
from support.interrupted_runs import (TOTAL_STEPS, assert_same_bits, committed_steps, resumed_from,
                                      run_command, tiny_config)
from support.run_main import Child, child_env

pytestmark = pytest.mark.slow  # subprocesses or the storage emulator: the full suite runs it


@pytest.fixture(scope="module")
def uninterrupted(photo_folder, tmp_path_factory):
    """(params, batch_stats) of the run that nothing stops."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state = trainer.train_and_evaluate(tiny_config(photo_folder), str(workdir))
    assert int(state.step) == TOTAL_STEPS
    return params_of(state), jax.device_get(state.batch_stats)


def test_two_sigkills_and_a_sigterm_end_bit_for_bit(
    photo_folder, tmp_path, uninterrupted
):
    """Killed after step 3, stopped by SIGTERM two saves after resuming,
    killed while saving step 10, restarted each time with the same command.

    Gates bound how far each run can get before the test acts, so no
    assertion depends on the test's polling winning a race with the run.
    """
    workdir, env, gates = tmp_path / "work", child_env(devices=8), tmp_path / "gates"
    command = functools.partial(run_command, photo_folder, workdir, gates)
    step_dir = lambda k: workdir / "checkpoints" / str(k)  # noqa: E731
    saved = lambda k: (step_dir(k) / "commit_success.txt").exists()  # noqa

    first = Child(command(held=[4]), env, tmp_path / "first.log")
    first.wait_for(lambda: saved(3))
    first.kill()  # lands in step 4, its save, or at the gate before step 5
    kept = committed_steps(workdir)[-1]
    assert kept in (3, 4)

    # A save of its own: the run is in its loop, its SIGTERM handler set.
    target = kept + 2
    second = Child(command(held=[target]), env, tmp_path / "second.log")
    second.wait_for(lambda: saved(target))
    second.signal(signal.SIGTERM)
    (gates / str(target)).touch()  # Step target + 1 runs, then it stops.
    assert second.wait() == 0, second.text()[-3000:]
    assert resumed_from(second.text()) == kept
    stopped = re.search(
        r"Stopped by SIGTERM after step (\d+) of 12", second.text()
    )
    assert stopped, second.text()[-3000:]
    kept = int(stopped.group(1))
    assert kept == target + 1 and committed_steps(workdir)[-1] == kept
    assert not (workdir / "export").exists()

    third = Child(command(held=[10]), env, tmp_path / "third.log")
    third.wait_for(lambda: step_dir(10).exists())
    third.kill()  # mostly while step 10 is being written
    assert resumed_from(third.text()) == kept
    kept = committed_steps(workdir)[-1]
    assert kept in (9, 10)  # Orbax finishes one save before it starts the next

    last = Child(command(), env, tmp_path / "last.log")
    assert last.wait() == 0, last.text()[-3000:]
    # An unfinished step 10, if the kill caught one, was not taken for good.
    assert resumed_from(last.text()) == kept
    tree, meta = encoder_export.read(str(workdir / "export"))
    assert meta["step"] == TOTAL_STEPS
    assert_same_bits(tree["params"], uninterrupted[0])
    assert_same_bits(tree["batch_stats"], uninterrupted[1])


def test_half_written_checkpoints_are_ignored(tmp_path):
    checkpoints = checkpoint.TrainCheckpoints(
        str(tmp_path), save_every_steps=1, keep=5
    )
    state = {"w": jnp.zeros(3), "step": jnp.array(0)}
    for step in (1, 2):
        state = {"w": state["w"] + 1, "step": jnp.array(step)}
        checkpoints.save(step, state)
    checkpoints.close()
    # Step 3 killed before its commit marker (Orbax's gs:// protocol, used
    # everywhere here); step 4 left as an atomic-rename temporary folder.
    shutil.copytree(tmp_path / "2", tmp_path / "3")
    (tmp_path / "3" / "commit_success.txt").unlink()
    shutil.copytree(tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp-17")

    reopened = checkpoint.TrainCheckpoints(
        str(tmp_path), save_every_steps=1, keep=5
    )
    assert reopened.latest_step == 2
    restored = reopened.restore_latest(jax.tree.map(jnp.zeros_like, state))
    np.testing.assert_array_equal(restored["w"], [2, 2, 2])
    # Step 3 can be saved again in its place.
    assert reopened.save(3, {"w": jnp.full(3, 7.0), "step": jnp.array(3)})
    reopened.close()
    again = checkpoint.TrainCheckpoints(
        str(tmp_path), save_every_steps=1, keep=5
    )
    assert again.latest_step == 3
    np.testing.assert_array_equal(again.restore_latest(state)["w"], [7, 7, 7])
    again.close()


def poison_step(pathway, poisoned: int):
    """The pathway, its batch for step `poisoned` carrying NaN soft labels."""
    dataset = pathway.dataset

    class Poisoned:
        def iterate(self, *args, **kwargs):
            for step, batch in dataset.iterate(*args, **kwargs):
                if step == poisoned:
                    batch = dict(batch, sim=np.full_like(batch["sim"], np.nan))
                yield step, batch

    return dataclasses.replace(pathway, dataset=Poisoned())


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good(
    photo_folder, tmp_path, monkeypatch
):
    build = PATHWAYS["low_level"]
    monkeypatch.setitem(
        PATHWAYS,
        "low_level",
        lambda config, workdir: poison_step(build(config, workdir), 3),
    )
    config = tiny_config(photo_folder)
    # Batch index 3 is the 4th step: it ends at step 4.
    with pytest.raises(
        FloatingPointError, match=r"at step 4 .*step 3, is kept"
    ):
        trainer.train_and_evaluate(config, str(tmp_path))
    # Nothing of the poisoned state was written, not even a partial folder.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "1",
        "2",
        "3",
    ]
    assert not (tmp_path / "export").exists()


def test_non_finite_step_between_logs_stops_at_the_next_check(
    photo_folder, tmp_path, monkeypatch
):
    """Metrics reach the host only when a log or save is due; a non-finite
    step in between is still caught there, before the state is saved."""
    build = PATHWAYS["low_level"]
    monkeypatch.setitem(
        PATHWAYS,
        "low_level",
        lambda config, workdir: poison_step(build(config, workdir), 5),
    )
    config = tiny_config(photo_folder, log_every_steps=4, checkpoint_every_steps=4)
    # Batch index 5 ends at step 6; the checks after step 4 come at step 8.
    with pytest.raises(
        FloatingPointError, match=r"at a step from 5 to 8 .*step 4, is kept"
    ):
        trainer.train_and_evaluate(config, str(tmp_path))
    # Orbax saves a run's first step, then every 4th; nothing after step 4.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "4"]
    assert not (tmp_path / "export").exists()
