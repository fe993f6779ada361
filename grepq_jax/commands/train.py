"""`grepq train` (`python -m grepq_jax.main`): its flags, joining a
multi-process job, and exit codes: 0 done (or stopped by SIGTERM and saved),
2 a usage error (flags, a config field or its range, the data folder, a
workdir in use), 1 a failure (a full disk, a checkpoint, a non-finite loss).
The trainer itself is grepq_jax/training/trainer.py.
"""

from grepq_jax.commands import quiet_logs  # Before TensorFlow, JAX and transformers load.

import logging as std_logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from grepq_jax.formats import checkpoint  # noqa: E402
from grepq_jax.commands import cli  # noqa: E402
from grepq_jax.formats.paths import absolute
from grepq_jax.commands import config_errors  # noqa: E402
from grepq_jax.training import config_ranges  # noqa: E402
from grepq_jax.training import distributed  # noqa: E402
from grepq_jax import errors  # noqa: E402
from grepq_jax.training import trainer  # noqa: E402

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, logs and the export go (local or "
    "gs://). Running again with the same workdir resumes.",
)
config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file, e.g. configs/low_level.py:paper.",
    lock_config=True,
)
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config",
    False,
    "Print the config's fields and values (after any --config.X overrides) "
    "and exit.",
)
_UNTRAINED = flags.DEFINE_bool(
    "untrained",
    False,
    "Export the initial (untrained) encoder to WORKDIR/export without "
    "training it: a baseline to compare trained encoders with.",
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

USAGE = """\
usage: grepq train --config=FILE[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...]
       (or python -m grepq_jax.main ...)

Trains a GRepQ encoder; the same command again resumes from the latest
checkpoint. At the end the encoder is exported to WORKDIR/export.

configs (in the repository's configs/ folder):
  configs/low_level.py         ResNet-18, quality-aware contrastive loss, on 8
                               embedded photographs: a demonstration (minutes)
  configs/low_level.py:paper   the paper's settings; add --config.data.path=DIR
                               (a folder of pristine images)
  configs/high_level.py        CLIP ViT-B/32, group-contrastive loss; needs the
                               checkpoint (--config.model.clip=HUB_NAME_OR_DIR)
  configs/high_level.py:paper  the paper's: CLIP RN50, read from an export that
                               grepq convert --clip=RN50.pt writes once
  configs/high_level.py:tiny, :tiny_rn50
                               offline smoke runs with a tiny random CLIP

examples:
  grepq train --config=configs/low_level.py --workdir=runs/low_level
  grepq train --config=configs/low_level.py:paper --workdir=runs/paper \\
      --config.data.path=/data/pristine --config.batch_size=16
  grepq train --config=configs/low_level.py:paper --show_config   # the fields
  grepq train --config=configs/low_level.py --workdir=runs/untrained --untrained

One run per workdir: a second one is refused while the first runs."""

_PACKAGE_DIR = os.path.dirname(os.path.abspath(trainer.__file__)) + os.sep
_ORBAX = os.sep + os.path.join("orbax", "checkpoint") + os.sep


class _OurInfoOnly(std_logging.Filter):
    """Passes warnings from anywhere, but INFO only from this package.

    Orbax alone logs dozens of INFO lines per checkpoint, drowning the
    progress bar.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.ERROR and _ORBAX in record.pathname:
            # A failed save or restore, logged with a traceback by each
            # Orbax thread that saw it, then raised to us:
            # checkpoint.CheckpointError says it in one line.
            return False
        return record.levelno >= std_logging.WARNING or (
            record.pathname.startswith(_PACKAGE_DIR)
        )


def keep_compiled_programs(workdir: str):
    """Persists compiled programs in WORKDIR/compile_cache, so that a restart
    (preemption, a crash) skips compiling the step and FSIM again; unless a
    cache is configured already (JAX_COMPILATION_CACHE_DIR)."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", f"{workdir}/compile_cache")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with one-line messages (exit 2) for a user's mistakes:
    an unknown flag or config field, a config file that cannot be loaded, a
    missing --config or --workdir, a workdir that is a file."""
    if any(arg in cli.HELP_FLAGS for arg in argv[1:]):
        print(f"{USAGE}\n\nflags:\n{flags.FLAGS.module_help(sys.modules[__name__])}")
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
        config = config_errors.loaded_config(flags.FLAGS["config"])
    except (flags.Error, AttributeError, config_errors.ConfigFileError) as error:
        _usage_error(config_errors.describe(error, argv))
    if len(rest) > 1:
        _usage_error(f"unexpected arguments: {' '.join(rest[1:])}")
    if config is None:
        _usage_error("--config is required, e.g. --config=configs/low_level.py")
    if _SHOW_CONFIG.value:
        print(config)
        sys.exit(0)
    problems = config_ranges.range_errors(config)
    if problems:
        _usage_error("\n".join(problems))
    if not _WORKDIR.value:
        _usage_error("--workdir is required, e.g. --workdir=runs/low_level")
    problem = checkpoint.workdir_problem(absolute(_WORKDIR.value))
    if problem:
        _usage_error(problem)
    return rest


def _program() -> str:
    """How the user called us: `grepq train` or `python -m grepq_jax.main`."""
    return "python -m grepq_jax.main" if sys.argv[0].endswith(".py") else sys.argv[0]


def _usage_error(message: str):
    for line in message.splitlines():
        print(f"{_program()}: {line}", file=sys.stderr)
    print("Run with --help for the usage.", file=sys.stderr)
    sys.exit(2)


def main(argv):
    del argv  # Checked by parse_flags.
    logging.get_absl_handler().addFilter(_OurInfoOnly())
    logging.set_verbosity(logging.INFO)
    distributed.initialize(
        coordinator_address=_COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)  # process 0 speaks for all
    workdir = absolute(_WORKDIR.value)
    config = flags.FLAGS.config
    if config.data.path:
        config.data.path = absolute(config.data.path)
    keep_compiled_programs(workdir)
    try:
        trainer.train_and_evaluate(config, workdir, untrained=_UNTRAINED.value)
    except errors.UsageError as error:
        print(f"{_program()}: {error}", file=sys.stderr)
        return 2
    except errors.RunFailure as error:
        print(f"{_program()}: {error}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: after a failed save Orbax's threads wait minutes for
        # signals that never come, and the exit would wait for them.
        os._exit(1)  # pylint: disable=protected-access
    return 0


def run_command() -> None:
    with cli.quiet_broken_pipe():  # `grepq train --help | head`
        app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run_command()
