"""`python -m grepq_jax.score` is `grepq score`: grepq_jax/commands/score.py."""
import os

if __name__ == "__main__":
    os.environ.setdefault("USE_TORCH", "0")  # Before transformers: see commands/cli.py.
    from grepq_jax.commands.score import run_command  # pylint: disable=import-outside-toplevel
    run_command()
