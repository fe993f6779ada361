"""Trains a GRepQ encoder.

    python -m grepq_jax.main --config=configs/low_level.py --workdir=runs/low_level

Any config field can be overridden, e.g. `--config.batch_size=16`; a field
that does not exist stops the run at once, naming it.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from grepq_jax import train

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, logs and the export go (local or "
    "gs://). Running again with the same workdir resumes.",
    required=True,
)
config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file, e.g. configs/low_level.py:paper.",
    lock_config=True,
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
