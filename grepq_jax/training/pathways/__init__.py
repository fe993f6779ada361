"""The two GRepQ encoders' pathways, picked by `config.pathway`.

`Pathway` (pathway.py) is what the trainer needs of one; `PATHWAYS` maps each
config name to the function that builds it.
"""

import ml_collections

from grepq_jax.training.pathways import low_level
from grepq_jax.training.pathways.pathway import Pathway


def _build_high_level(config: ml_collections.ConfigDict, workdir: str) -> Pathway:
    # Imported on use: transformers adds seconds to every (re)start of a
    # low-level run, and restarts after preemption should be quick.
    from grepq_jax.training.pathways import high_level  # pylint: disable=import-outside-toplevel

    return high_level.build(config, workdir)


PATHWAYS = {"low_level": low_level.build, "high_level": _build_high_level}


def build_pathway(config: ml_collections.ConfigDict, workdir: str) -> Pathway:
    """The pathway `config.pathway` names, built for `workdir`."""
    if config.pathway not in PATHWAYS:
        raise ValueError(
            f"config.pathway: unknown {config.pathway!r}, "
            f"expected one of {sorted(PATHWAYS)}"
        )
    return PATHWAYS[config.pathway](config, workdir)
