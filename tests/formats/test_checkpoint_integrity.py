"""A damaged checkpoint step is found when restored, named, and set aside.

The damage is made as a disk or a user makes it: bytes overwritten in the
middle of the step's largest data file, a data file truncated, the pytree's
_METADATA deleted. Orbax restores the first without an error (wrong numbers)
and fails on the others with garbled text; the run must instead resume from
the newest intact step, saying which file was damaged.
"""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grepq_jax.formats import checkpoint
from grepq_jax.training import trainer
from support import interrupted_runs


def weights(step):
    """Step `step`'s array: random, so that it does not compress away and
    bytes overwritten anywhere in its data change its values."""
    return np.random.default_rng(step).normal(size=(64, 64)).astype(np.float32)


def saved_steps(directory, steps=(1, 2, 3)):
    """Saves steps whose array `w` is `weights(step)`; returns the state."""
    checkpoints = checkpoint.TrainCheckpoints(
        str(directory), save_every_steps=1, keep=5)
    for step in steps:
        state = {"w": jnp.asarray(weights(step)), "step": jnp.array(step)}
        checkpoints.save(step, state)
    checkpoints.close()
    return state


def largest_data_file(step_folder):
    data = step_folder / "default" / "ocdbt.process_0" / "d"
    return max(data.iterdir(), key=lambda p: p.stat().st_size)


def overwrite_middle(path, count=64):
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size // 2 - count // 2)
        file.write(os.urandom(count))


def truncate(path, size=100):
    os.truncate(path, size)


def delete_pytree_metadata(step_folder):
    (step_folder / "default" / "_METADATA").unlink()


DAMAGES = {
    "64 bytes overwritten": lambda folder: overwrite_middle(largest_data_file(folder)),
    "truncated to 100 bytes": lambda folder: truncate(largest_data_file(folder)),
    "_METADATA deleted": delete_pytree_metadata,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_latest_step_is_set_aside_and_the_previous_restored(
        tmp_path, damage, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = saved_steps("checkpoints")  # relative, as a user's --workdir
    folder = tmp_path / "checkpoints"
    DAMAGES[damage](folder / "3")

    reopened = checkpoint.TrainCheckpoints(
        "checkpoints", save_every_steps=1, keep=5)
    with caplog.at_level(logging.WARNING):
        restored = reopened.restore_latest(jax.tree.map(jnp.zeros_like, state))
    np.testing.assert_array_equal(restored["w"], weights(2))
    assert int(restored["step"]) == 2
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "Checkpoint step 3 in" in warning and "is damaged" in warning
    assert (folder / "3.damaged").is_dir() and not (folder / "3").exists()
    # The damaged step's place is free again: step 3 is saved anew.
    assert reopened.latest_step == 2
    assert reopened.save(3, dict(state, w=jnp.full((64, 64), 7.0)))
    reopened.close()
    again = checkpoint.TrainCheckpoints("checkpoints", save_every_steps=1, keep=5)
    assert again.latest_verified_step() == 3
    np.testing.assert_array_equal(again.restore_latest(state)["w"],
                                  np.full((64, 64), 7.0))
    again.close()


def test_the_damaged_file_is_named(tmp_path, caplog):
    saved_steps(tmp_path)
    damaged = largest_data_file(tmp_path / "3")
    overwrite_middle(damaged)
    checkpoints = checkpoint.TrainCheckpoints(str(tmp_path), save_every_steps=1, keep=5)
    relative = damaged.relative_to(tmp_path / "3").as_posix()
    assert checkpoints.damage(3) == f"{relative} differs from its digest (bytes overwritten)"
    assert checkpoints.damage(2) is None
    assert checkpoints.latest_verified_step() == 2
    checkpoints.close()


def test_every_step_damaged_starts_afresh(tmp_path):
    state = saved_steps(tmp_path, steps=(1,))
    truncate(largest_data_file(tmp_path / "1"))
    checkpoints = checkpoint.TrainCheckpoints(str(tmp_path), save_every_steps=1, keep=5)
    fresh = jax.tree.map(jnp.zeros_like, state)
    restored = checkpoints.restore_latest(fresh)
    np.testing.assert_array_equal(restored["w"], fresh["w"])
    assert checkpoints.latest_step is None
    checkpoints.close()


@pytest.mark.slow
def test_a_run_resumes_from_the_newest_intact_step(photo_folder, tmp_path, caplog):
    """The whole trainer: its latest step damaged, a rerun resumes from the
    step before and finishes (not from wrong numbers)."""
    config = interrupted_runs.tiny_config(photo_folder, num_epochs=1)  # 4 steps
    jax.block_until_ready(trainer.train_and_evaluate(config, str(tmp_path)))
    assert interrupted_runs.committed_steps(tmp_path)[-1] == 4
    overwrite_middle(largest_data_file(tmp_path / "checkpoints" / "4"))
    (tmp_path / "export" / "encoder.json").unlink()
    with caplog.at_level(logging.INFO):
        state = trainer.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 4
    log = " ".join(r.getMessage() for r in caplog.records)
    assert "Checkpoint step 4 in" in log and "is damaged" in log
    assert interrupted_runs.resumed_from(log) == 3


def test_the_non_finite_message_names_only_a_verified_step(tmp_path):
    """Item 3 of the issue: "the last good checkpoint, step 4, is kept" when
    step 4 was the damaged one. The message names the newest intact step."""
    saved_steps(tmp_path)
    overwrite_middle(largest_data_file(tmp_path / "3"))
    checkpoints = checkpoint.TrainCheckpoints(str(tmp_path), save_every_steps=1, keep=5)
    with pytest.raises(trainer.NonFiniteError) as raised:
        trainer._checked_scalars(  # pylint: disable=protected-access
            {"loss": jnp.array(np.nan)}, jnp.array(False), 4, 4, checkpoints)
    assert f"the last good checkpoint, step 2, is kept in {tmp_path}" in str(raised.value)
    checkpoints.close()
