"""The `grepq` dispatcher and the flag plumbing every command shares.

Each command but training defines its flags on its own `flags.FlagValues`,
not on the global `flags.FLAGS`: they share names (--model, --out), and
importing one as a library must not add flags to the caller's program.
Run as commands, they set USE_TORCH=0 (unless set) before transformers is
imported: only its Flax CLIP layers are used, and it would otherwise import
PyTorch, where installed, for nothing (about 4 s and 0.7 GB).
"""
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from absl import app
from absl import flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")

# `grepq NAME` runs the module's `run_command()`.
COMMANDS = {
    "train": "grepq_jax.commands.train",
    "export": "grepq_jax.commands.export",
    "score": "grepq_jax.commands.score",
    "evaluate": "grepq_jax.commands.evaluate",
    "convert": "grepq_jax.commands.convert",
    "download": "grepq_jax.commands.download",
}


def parse(flag_values: flags.FlagValues, argv: Sequence[str],
          usage: str = "") -> list[str]:
    """Parses argv (argv[0] the program) into `flag_values`, from its defaults.

    Returns [argv[0], positional arguments...], as app.run's main expects.
    --help prints `usage` and the flags and exits 0; a bad flag exits 2 with
    the message.
    """
    argv = list(argv)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(f"{usage or f'usage: {argv[0]} [flags]'}\n\n{flag_values.get_help()}")
        sys.exit(0)
    flag_values.unparse_flags()
    try:
        return flag_values(argv)
    except flags.Error as error:
        print(f"{argv[0]}: {error}\nRun with --help for the flags.", file=sys.stderr)
        sys.exit(2)


def run(main: Callable[[list[str]], int], flag_values: flags.FlagValues,
        usage: str = "") -> None:
    """app.run(main) with `flag_values`; main's return value is the exit code."""
    flags.FLAGS.mark_as_parsed()  # absl logging checks the global set.
    with quiet_broken_pipe():
        app.run(main, flags_parser=lambda argv: parse(flag_values, argv, usage))


def unexpected_arguments(argv: Sequence[str]) -> bool:
    """Whether a command that takes only flags was given arguments too (said
    on stderr); the command then exits 2."""
    if len(argv) > 1:
        print(f"unexpected arguments: {list(argv[1:])}", file=sys.stderr)
    return len(argv) > 1


class quiet_broken_pipe:
    """Ends the program quietly when its reader goes away (`score ... | head`).

    Python would print a BrokenPipeError traceback, and another one when it
    flushes stdout at exit; stdout is pointed at /dev/null first.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None or not issubclass(kind, BrokenPipeError):
            return False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


def _print_commands() -> None:
    print("usage: grepq {%s} [flags] [args]\n\n"
          "  train     train and export an encoder (python -m grepq_jax.main)\n"
          "  export    package exported encoders into a scoring model folder\n"
          "  score     score images with a model folder\n"
          "  evaluate  evaluate a model folder on an IQA dataset\n"
          "  convert   turn OpenAI / open_clip / GRepQ PyTorch weights into an export\n"
          "  download  fetch and convert the released GRepQ model (--model=grepq)\n\n"
          "grepq COMMAND --help shows each command's flags." % ",".join(COMMANDS))


def main() -> None:
    """`grepq COMMAND [flags] [args]`: the console script."""
    argv = sys.argv
    if len(argv) < 2 or argv[1] in HELP_FLAGS:
        with quiet_broken_pipe():  # `grepq --help | head`
            _print_commands()
        sys.exit(0 if len(argv) >= 2 else 2)
    if argv[1] not in COMMANDS:
        print(f"grepq: unknown command {argv[1]!r}; choose one of "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("USE_TORCH", "0")
    module = importlib.import_module(COMMANDS[argv[1]])
    sys.argv = [f"grepq {argv[1]}"] + argv[2:]
    module.run_command()


if __name__ == "__main__":
    main()
