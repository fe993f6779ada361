"""The two kinds of error a command reports in one line, by exit code.

Shared by both sides (training and scoring) and by the models, so it imports
nothing.
"""


class UsageError(ValueError):
    """The user's input cannot be used: a config field, a data folder, a
    workdir. The command exits 2."""


class InputError(UsageError):
    """A file or folder given as input (an encoder export, a model folder, a
    weights file, an image, a dataset's table) that is missing, incomplete,
    damaged or of another kind; the message names it and the key. Exit 2."""


class RunFailure(RuntimeError):
    """The run failed for a reason outside the user's input: a checkpoint
    that cannot be written or loaded, a non-finite loss. Exit 1."""


# errno values of a write refused for lack of space: ENOSPC, and EDQUOT (a
# user's quota), by number so this module keeps importing nothing.
_NO_SPACE_ERRNOS = (28, 122)


def disk_full(error: BaseException, path) -> "RunFailure | None":
    """A RunFailure naming `path` if `error` is a write refused for lack of
    space (an OSError with ENOSPC or EDQUOT), else None. Raise it `from error`.
    """
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return RunFailure(f"cannot write {path}: {error.strerror.lower()} (free some "
                          "space or choose another folder, then run it again)")
    return None
