"""The tiny low-level run that the fault tests interrupt, and what they read back."""
import re

import jax
import numpy as np

from configs import low_level as low_level_config
from support import gated_main

TOTAL_STEPS = 12  # 8 photos, 2 a step, 3 epochs


def overrides(folder) -> dict:
    return {
        "data.path": str(folder),
        "batch_size": 2,
        "num_devices": 2,
        "num_epochs": 3,
        "checkpoint_every_steps": 1,
        "keep_checkpoints": 3,
    }


def tiny_config(folder, **more):
    config = low_level_config.get_config("tiny")
    config.update_from_flattened_dict(dict(overrides(folder), **more))
    return config


def run_command(folder, workdir, gates, held=()) -> list[str]:
    """The training command; the batches of steps `held` (0-based: batch s
    ends at step s + 1) wait until the test creates `gates`/s."""
    flags = [f"--config.{k}={v}" for k, v in overrides(folder).items()]
    return gated_main.command(gates, held, "configs/low_level.py:tiny", workdir, *flags)


def committed_steps(workdir) -> list[int]:
    """Steps whose save finished: Orbax writes commit_success.txt last."""
    folder = workdir / "checkpoints"
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.name.isdigit() and (p / "commit_success.txt").exists()
    )


def resumed_from(log: str) -> int:
    return int(re.search(r"Resuming from step (\d+) of", log).group(1))


def assert_same_bits(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)
