"""The two kinds of error a command reports in one line, by exit code.

Shared by both sides (training and scoring) and by the models, so it imports
nothing.
"""


class UsageError(ValueError):
    """The user's input cannot be used: a config field, a data folder, a
    workdir. The command exits 2."""


class RunFailure(RuntimeError):
    """The run failed for a reason outside the user's input: a checkpoint
    that cannot be written or loaded, a non-finite loss. Exit 1."""
