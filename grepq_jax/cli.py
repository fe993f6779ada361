"""Command-line plumbing shared by the entry points export, score and evaluate.

Each entry point defines its flags on its own `flags.FlagValues`, not on the
global `flags.FLAGS`: they share names (--model, --out), and importing one as
a library (`grepq_jax.create_scorer`) must not add flags to the caller's
program. `run` is `app.run` for such a flag set; `parse` lets tests call an
entry point's `main` in-process.

Run as commands, the entry points set USE_TORCH=0 (unless it is set) before
anything imports transformers: they use only its Flax CLIP layers, and
transformers would otherwise import PyTorch, where installed, for nothing
(about 4 s and 0.7 GB of memory). Imported as libraries, they leave it be.
"""
import sys
from collections.abc import Callable, Sequence

from absl import app
from absl import flags

_HELP = ("-h", "--help", "-help", "--helpfull")


def parse(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """Parses argv (argv[0] the program) into `flag_values`, from its defaults.

    Returns [argv[0], positional arguments...], as app.run's main expects.
    --help prints the flags and exits 0; a bad flag exits 2 with the message.
    """
    argv = list(argv)
    if any(arg in _HELP for arg in argv[1:]):
        print(f"usage: {argv[0]} [flags]\n\n{flag_values.get_help()}")
        sys.exit(0)
    flag_values.unparse_flags()
    try:
        return flag_values(argv)
    except flags.Error as error:
        print(f"{argv[0]}: {error}\nRun with --help for the flags.", file=sys.stderr)
        sys.exit(2)


def run(main: Callable[[list[str]], int], flag_values: flags.FlagValues) -> None:
    """app.run(main) with `flag_values`; main's return value is the exit code."""
    flags.FLAGS.mark_as_parsed()  # absl logging checks the global set.
    app.run(main, flags_parser=lambda argv: parse(flag_values, argv))
