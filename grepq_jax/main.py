"""Trains a GRepQ encoder.

    python -m grepq_jax.main --config=configs/low_level.py --workdir=runs/low_level

Any config field can be overridden, e.g. `--config.batch_size=16`; a field
that does not exist stops the run at once, naming it. Running the same command
again resumes from the latest checkpoint, also after a SIGTERM or a crash.

Several processes (TPU pod slices, GPU clusters) join one job when the
environment says so (SLURM, Open MPI, Cloud TPU: detected by JAX) or when
given `--coordinator_address`, `--num_processes` and `--process_id`; see
launch/ and docs/scaling.md.
"""

import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from grepq_jax import distributed
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
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for a multi-process job the environment does "
    "not describe (default: detected from SLURM, Open MPI or Cloud TPU).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    None,
    "Processes in the job (default: detected; one process connects nowhere).",
    lower_bound=1,
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "This process's index, 0 .. num_processes - 1 (default: detected).",
    lower_bound=0,
)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(train.__file__)) + os.sep


class _OurInfoOnly(std_logging.Filter):
    """Passes warnings from anywhere, but INFO only from this package.

    Orbax alone logs dozens of INFO lines per checkpoint, drowning the
    progress bar.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or (
            record.pathname.startswith(_PACKAGE_DIR)
        )


def keep_compiled_programs(workdir: str):
    """Persists compiled programs in WORKDIR/compile_cache, so that a restart
    (preemption, a crash) skips compiling the step and FSIM again; unless a
    cache is configured already (JAX_COMPILATION_CACHE_DIR)."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", f"{workdir}/compile_cache")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_OurInfoOnly())
    logging.set_verbosity(logging.INFO)
    distributed.initialize(
        coordinator_address=_COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)  # process 0 speaks for all
    keep_compiled_programs(_WORKDIR.value)
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


def run_command() -> None:
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    run_command()
