"""Config fields out of range stop the run before any work, one line each.

The in-process tests replace the pathway builder with one that fails the
test: the check must come before any data is read or anything compiled.
One command-line test checks the exit code and the lines a user sees.
"""

import subprocess
import time

import pytest

from configs import high_level as high_level_config
from configs import low_level as low_level_config
from grepq_jax.formats import encoder_export
from grepq_jax import errors
from grepq_jax.training import trainer
from grepq_jax.training.pathways import PATHWAYS
from support.run_main import REPO, child_env, main_command

# (config, override, value, what the message must say)
OUT_OF_RANGE = [
    ("low_level", "batch_size", 0, "config.batch_size=0: must be an integer >= 1"),
    ("low_level", "batch_size", -2, "config.batch_size=-2: must be an integer >= 1"),
    ("low_level", "num_epochs", 0, "config.num_epochs=0: must be an integer >= 1 "
     "(to export an untrained encoder: --untrained)"),
    ("low_level", "optim.learning_rate", 0.0,
     "config.optim.learning_rate=0.0: must be a finite number > 0"),
    ("low_level", "optim.learning_rate", -1e-4,
     "config.optim.learning_rate=-0.0001: must be a finite number > 0"),
    ("low_level", "optim.learning_rate", float("nan"),
     "config.optim.learning_rate=nan: must be a finite number > 0"),
    ("low_level", "loss.tau", 0.0, "config.loss.tau=0.0: must be a finite number > 0"),
    ("low_level", "loss.tau", -0.5, "config.loss.tau=-0.5: must be a finite number > 0"),
    ("low_level", "log_every_steps", 0,
     "config.log_every_steps=0: must be an integer >= 1"),
    ("low_level", "checkpoint_every_steps", 0,
     "config.checkpoint_every_steps=0: must be an integer >= 1"),
    ("low_level", "data.workers", -2, "config.data.workers=-2: must be an integer >= -1"),
    ("low_level", "data.max_side", -1, "config.data.max_side=-1: must be an integer >= 0"),
    ("low_level", "data.fragment_size", 0,
     "config.data.fragment_size=0: must be an integer >= 1"),
    ("high_level", "loss.temperature", 0.0,
     "config.loss.temperature=0.0: must be a finite number > 0"),
    ("high_level", "optim.warmup_epochs", -1.0,
     "config.optim.warmup_epochs=-1.0: must be a finite number >= 0"),
    ("high_level", "data.crop_size", -224,
     "config.data.crop_size=-224: must be an integer >= 0"),
    ("high_level", "batch_size", 0, "config.batch_size=0: must be an integer >= 1"),
]
CONFIGS = {"low_level": low_level_config, "high_level": high_level_config}


@pytest.fixture
def no_training(monkeypatch):
    """Every pathway builder fails the test: nothing may be read or built."""
    def started(config, workdir):
        raise AssertionError("training started")
    for name in list(PATHWAYS):
        monkeypatch.setitem(PATHWAYS, name, started)


@pytest.mark.parametrize("pathway,field,value,message", OUT_OF_RANGE)
def test_out_of_range_stops_before_any_work(no_training, tmp_path, monkeypatch,
                                             pathway, field, value, message):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS[pathway].get_config("tiny")
    config.update_from_flattened_dict({field: value})
    started = time.perf_counter()
    with pytest.raises(errors.UsageError) as raised:
        trainer.train_and_evaluate(config, "runs/x")
    assert str(raised.value) == message
    assert time.perf_counter() - started < 1.0
    assert not (tmp_path / "runs").exists()  # nothing written either


@pytest.mark.parametrize("variant", ["default", "paper", "tiny"])
@pytest.mark.parametrize("pathway", ["low_level", "high_level"])
def test_every_shipped_variant_is_in_range(pathway, variant):
    from grepq_jax.training import config_ranges  # pylint: disable=import-outside-toplevel
    if pathway == "high_level" and variant == "tiny":
        variants = ["tiny", "tiny_rn50"]
    else:
        variants = [variant]
    for name in variants:
        assert config_ranges.range_errors(CONFIGS[pathway].get_config(name)) == []


@pytest.mark.slow
def test_the_command_prints_each_field_in_one_line_and_exits_2(tmp_path):
    child = subprocess.run(
        main_command("configs/low_level.py:tiny", "runs/x",
                     "--config.batch_size=0", "--config.optim.learning_rate=nan",
                     "--config.checkpoint_every_steps=0"),
        cwd=REPO, env=child_env(devices=1), capture_output=True, text=True,
        timeout=120, check=False)
    assert child.returncode == 2, child.stderr[-2000:]
    assert child.stderr.splitlines() == [
        "python -m grepq_jax.main: config.batch_size=0: must be an integer >= 1",
        "python -m grepq_jax.main: config.checkpoint_every_steps=0: must be an "
        "integer >= 1",
        "python -m grepq_jax.main: config.optim.learning_rate=nan: must be a "
        "finite number > 0",
        "Run with --help for the usage.",
    ]
    assert not (REPO / "runs" / "x").exists()


@pytest.mark.slow
def test_an_untrained_export_has_its_own_flag(tmp_path):
    """What `num_epochs=0` was used for (benchmarks/bench_quality.py's
    baseline row): the initial encoder exported, nothing trained or saved."""
    child = subprocess.run(
        main_command(f"{REPO / 'configs' / 'low_level.py'}:tiny", "untrained", "--untrained",
                     "--config.num_devices=1"),
        cwd=tmp_path, env=dict(child_env(devices=1), PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=180, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "Exported the untrained encoder" in child.stderr
    _, metadata = encoder_export.read(str(tmp_path / "untrained" / "export"))
    assert metadata["step"] == 0
    assert not (tmp_path / "untrained" / "checkpoints").exists()
