"""`grepq export`: its flags and exit codes (2 a usage or input error: an
unusable export, --out not new or overlapping an input; 1 a failure such as a
full disk). What it writes is scoring/packing.py's.
"""
import json
import logging as std_logging
import os
import sys

from absl import flags
from absl import logging

from grepq_jax import errors
from grepq_jax.commands import cli
from grepq_jax.formats.paths import absolute
from grepq_jax.formats import checkpoint
from grepq_jax.scoring import packing

FLAGS = flags.FlagValues()
_LOW_LEVEL = flags.DEFINE_string(
    "low_level", None, "The low-level training export (WORKDIR/export).", flag_values=FLAGS)
_HIGH_LEVEL = flags.DEFINE_string(
    "high_level", None, "The high-level training export (WORKDIR/export).", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "The model folder to write (new or empty).",
                           required=True, flag_values=FLAGS)
_PRISTINE = flags.DEFINE_string(
    "pristine", None, "A folder of pristine images (searched recursively) for the "
    "low-level statistics; default: the embedded photographs.", flag_values=FLAGS)
_PRISTINE_PATCHES = flags.DEFINE_string(
    "pristine_patches", None, "The original GRepQ's pristine patch file "
    "(pristine_patches_096_0.75_0.80.hdf5) for the low-level statistics, instead of "
    "--pristine.", flag_values=FLAGS)
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 96, "Pristine and test patch side, px.",
                                   lower_bound=32, flag_values=FLAGS)
_CHUNK = flags.DEFINE_integer("chunk", 64, "Patches through the encoder at once.",
                              lower_bound=1, flag_values=FLAGS)


def _quiet_failed_save_reports() -> None:
    """When an Orbax save fails, its threads log the error with a traceback
    (and TensorStore's writes still in flight report Orbax's closed event
    loop: checkpoint.drop_closed_loop_noise). The save's own error is what the
    command reports, in one line."""
    checkpoint.drop_closed_loop_noise()
    std_logging.getLogger("absl").addFilter(
        lambda record: not (record.levelno >= std_logging.ERROR
                            and f"{os.sep}orbax{os.sep}" in record.pathname))
    # The same errors, again, from the futures of Orbax's event loops.
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)


def main(argv: list[str]) -> int:
    if cli.unexpected_arguments(argv):
        return 2
    _quiet_failed_save_reports()
    logging.set_verbosity(logging.WARNING)  # Orbax logs every write at INFO.
    given = {name: flag.value and absolute(flag.value) for name, flag in (
        ("out", _OUT), ("low_level", _LOW_LEVEL), ("high_level", _HIGH_LEVEL),
        ("pristine_folder", _PRISTINE), ("pristine_patches", _PRISTINE_PATCHES))}
    try:  # As the user typed the paths first, for the message.
        packing.check_paths(_OUT.value, {"low_level": _LOW_LEVEL.value, "high_level": _HIGH_LEVEL.value,
                                 "pristine": _PRISTINE.value,
                                 "pristine_patches": _PRISTINE_PATCHES.value})
        description = packing.export_model(**given, patch_size=_PATCH_SIZE.value,
                                   chunk=_CHUNK.value)
    except (ImportError, errors.RunFailure) as error:  # h5py; a full disk.
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # Bad exports, folders or pristine images.
        print(f"export failed: {error}", file=sys.stderr)
        return 2
    print(f"wrote the model folder {_OUT.value}: {json.dumps(description)}",
          file=sys.stderr)
    return 0


USAGE = """\
usage: grepq export --out=DIR [--low_level=EXPORT] [--high_level=EXPORT] [flags]
       (or python -m grepq_jax.export ...)

Packages exported encoders into one self-contained scoring model folder.

example:
  grepq export --low_level=runs/low_level/export --out=models/grepq"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
