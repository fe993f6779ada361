"""`grepq download`: the released GRepQ model fetched and converted
(released/downloads.py). Exit 1 when a file cannot be fetched (the message
says what to fetch by hand and where), 2 when one does not convert.
"""
import sys

from absl import flags
from absl import logging

from grepq_jax.commands import cli
from grepq_jax.formats.paths import absolute
from grepq_jax.released import fetch, downloads

FLAGS = flags.FlagValues()
_CACHE = flags.DEFINE_string(
    "cache", None, "The cache folder; default: $GREPQ_HOME, else $XDG_CACHE_HOME/grepq_jax, "
    "else ~/.cache/grepq_jax.", flag_values=FLAGS)


def main(argv: list[str]) -> int:
    if cli.unexpected_arguments(argv):
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every write at INFO.
    cache = absolute(_CACHE.value) if _CACHE.value else None
    try:
        model = downloads.download_released(cache)
    except fetch.Unreachable as error:
        print(f"download failed: {error}; {downloads.by_hand(cache)}", file=sys.stderr)
        return 1
    except fetch.FetchError as error:
        print(f"download failed: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # a fetched or hand-placed file that does not convert
        print(f"download failed: {error}", file=sys.stderr)
        return 2
    print(model)
    return 0


USAGE = """\
usage: grepq download [--cache=DIR]
       (or python -m grepq_jax.commands.download ...)

Fetches the released GRepQ model (the authors' three files and OpenAI's
RN50.pt) into the cache and converts it into a model folder, whose path it
prints. With the default cache, the name grepq then stands for it:
  grepq score --model=grepq photos/"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
