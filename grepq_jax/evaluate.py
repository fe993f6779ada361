"""`python -m grepq_jax.evaluate` is `grepq evaluate`: grepq_jax/commands/evaluate.py."""
import os

if __name__ == "__main__":
    os.environ.setdefault("USE_TORCH", "0")  # Before transformers: see commands/cli.py.
    from grepq_jax.commands.evaluate import run_command  # pylint: disable=import-outside-toplevel
    run_command()
