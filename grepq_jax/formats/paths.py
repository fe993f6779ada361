"""Paths as every format takes them: local (relative to the current folder) or gs://."""
import os


def absolute(path: str) -> str:
    """`path` made absolute against the current folder, once, where it enters.

    Orbax refuses relative paths, and a path stored in a config or a model
    description must not change meaning when the current folder does.
    gs:// and other URLs pass unchanged.
    """
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))
