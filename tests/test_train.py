"""The low-level trainer end to end, on tiny models and tiny images."""

import functools

import jax
import numpy as np
import pytest

from configs import low_level as low_level_config
from grepq_jax import checkpoint
from grepq_jax import train
from conftest import params_of, read_scalars


def tiny_config(folder, **overrides):
    config = low_level_config.get_config("tiny")
    config.data.path = str(folder)
    config.update_from_flattened_dict(overrides)
    return config


def assert_trees_close(a, b, **tolerance):
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, **tolerance), a, b
    )


def test_training_lowers_the_loss_and_exports(photo_folder, tmp_path):
    config = tiny_config(
        photo_folder,
        num_epochs=12,
        batch_size=4,
        num_devices=1,
        **{"optim.learning_rate": 3e-3},
    )
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 12 * 2  # 8 groups / batch of 4 = 2 steps an epoch
    loss = read_scalars(tmp_path / "tensorboard", "loss")
    assert len(loss) == 24 and np.all(np.isfinite(loss))
    assert np.mean(loss[-4:]) < np.mean(loss[:4]) - 0.05, loss
    assert read_scalars(tmp_path / "tensorboard", "learning_rate")[-1] < 3e-3
    tree, meta = checkpoint.read_export(str(tmp_path / "export"))
    assert meta["pathway"] == "low_level" and meta["step"] == 24
    assert_trees_close(tree["params"], params_of(state), rtol=0, atol=0)


def test_resume_matches_uninterrupted_run(photo_folder, tmp_path):
    config = tiny_config(
        photo_folder,
        num_epochs=2,
        checkpoint_every_steps=2,
        keep_checkpoints=5,
        num_devices=1,
    )
    # 8 groups, batch 8: one step an epoch, two in all.
    uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))
    interrupted = tmp_path / "b"
    first = train.train_and_evaluate(
        tiny_config(
            photo_folder,
            num_epochs=2,
            checkpoint_every_steps=1,
            keep_checkpoints=5,
            num_devices=1,
        ),
        str(interrupted),
    )
    del first
    # Forget the final checkpoint, as if the run had died after step 1.
    import shutil

    shutil.rmtree(interrupted / "checkpoints" / "2")
    resumed = train.train_and_evaluate(config, str(interrupted))
    assert int(resumed.step) == 2
    assert_trees_close(
        params_of(resumed), params_of(uninterrupted), rtol=0, atol=0
    )


def test_eight_devices_match_one(photo_folder, tmp_path):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"
    results = {}
    for devices in (1, 8):
        config = tiny_config(photo_folder, num_devices=devices, num_epochs=2)
        state = train.train_and_evaluate(config, str(tmp_path / str(devices)))
        results[devices] = (
            params_of(state),
            jax.tree.map(np.asarray, state.batch_stats),
        )
    # Same global computation; only the order of float reductions differs.
    assert_trees_close(results[8][0], results[1][0], rtol=1e-4, atol=1e-6)
    assert_trees_close(results[8][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_batch_must_divide_over_devices(photo_folder, tmp_path):
    config = tiny_config(photo_folder, batch_size=6, num_devices=8)
    with pytest.raises(ValueError, match="multiple of the 8 devices"):
        train.train_and_evaluate(config, str(tmp_path))


def test_missing_folder_fails_before_compiling(tmp_path):
    config = tiny_config(tmp_path / "nowhere")
    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
        train.train_and_evaluate(config, str(tmp_path / "work"))


def test_main_keeps_compiled_programs_in_the_workdir(tmp_path):
    from grepq_jax import main

    configured = jax.config.jax_compilation_cache_dir  # the suite's, conftest.py
    try:
        main.keep_compiled_programs(str(tmp_path))
        assert jax.config.jax_compilation_cache_dir == configured  # it wins
        jax.config.update("jax_compilation_cache_dir", None)
        main.keep_compiled_programs(str(tmp_path))
        assert jax.config.jax_compilation_cache_dir == f"{tmp_path}/compile_cache"
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)
