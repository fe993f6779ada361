"""The accepted range of each numeric field of a training config.

Checked before any work (no data read, nothing compiled), so that a zero
batch size or a negative learning rate costs the user a line, not a traceback
or a run trained with its sign flipped. Fields absent from a config are not
checked: the two pathways' configs hold different ones.
"""

import math
from typing import Any, Callable

import ml_collections

from grepq_jax import errors


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _positive_number() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_number(v) and math.isfinite(v) and v > 0,
            "a finite number > 0")


def _non_negative_number() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_number(v) and math.isfinite(v) and v >= 0,
            "a finite number >= 0")


def _scales() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(
        _is_number(s) and 0 < s <= 1 for s in v),
            "a non-empty tuple of numbers in (0, 1]")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# field -> (accepts(value), the accepted range in words). A field's meaning
# (what 0 or -1 stands for) is in the config files' comments.
RANGES = {
    "batch_size": _at_least(1),
    # An untrained encoder's export is `grepq train --untrained`, not 0 epochs.
    "num_epochs": (_at_least(1)[0],
                   "an integer >= 1 (to export an untrained encoder: --untrained)"),
    "num_devices": _at_least(0),  # 0: every visible device
    "log_every_steps": _at_least(1),
    "checkpoint_every_steps": _at_least(1),
    "keep_checkpoints": _at_least(1),
    "optim.learning_rate": _positive_number(),
    "optim.end_learning_rate": _non_negative_number(),
    "optim.weight_decay": _non_negative_number(),
    "optim.warmup_epochs": _non_negative_number(),
    "loss.tau": _positive_number(),
    "loss.temperature": _positive_number(),
    "loss.label_temperature": _positive_number(),
    "loss.group_size": _at_least(1),
    "data.workers": _at_least(-1),  # -1: a process per core but one
    "data.prefetch": _at_least(0),
    "data.min_side": _at_least(1),
    "data.max_side": _at_least(0),  # 0: no limit
    "data.crop_size": _at_least(0),  # 0: the tower's native size
    "data.fragment_grid": _at_least(1),
    "data.fragment_size": _at_least(1),
    "data.scales": _scales(),
    "model.width": _at_least(1),
    "model.head_dim": _at_least(1),
}


def _lookup(config: ml_collections.ConfigDict, field: str):
    """(True, value) of a dotted `field`, or (False, None) if absent."""
    node = config
    for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def range_errors(config: ml_collections.ConfigDict) -> list[str]:
    """One line per field of `config` outside its accepted range."""
    problems = []
    for field, (accepts, accepted) in RANGES.items():
        present, value = _lookup(config, field)
        if present and not accepts(value):
            problems.append(f"config.{field}={value!r}: must be {accepted}")
    return problems


def check_ranges(config: ml_collections.ConfigDict) -> None:
    """UsageError naming every field out of range, one line each."""
    problems = range_errors(config)
    if problems:
        raise errors.UsageError("\n".join(problems))
