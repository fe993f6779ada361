"""Where downloaded model folders live, and the names that stand for them.

    <cache>/files/            what `grepq download` fetched
    <cache>/models/NAME/      a model folder, found by `--model=NAME`

<cache> is $GREPQ_HOME, else $XDG_CACHE_HOME/grepq_jax, else
~/.cache/grepq_jax. Both sides read this: `grepq download` writes there and
`grepq score` / `create_scorer` look names up there, so it imports nothing
of either.
"""
from __future__ import annotations

import os
import pathlib

from grepq_jax import errors

# Names a model folder can be asked for by; `grepq download` writes them.
NAMES = ("grepq",)


def cache_home() -> pathlib.Path:
    if os.environ.get("GREPQ_HOME"):
        return pathlib.Path(os.environ["GREPQ_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "grepq_jax"


def model_folder(name: str = NAMES[0], cache=None) -> pathlib.Path:
    """Where `name`'s model folder is, or would be, in the cache."""
    return pathlib.Path(cache or cache_home()) / "models" / name


def resolve(model, cache=None):
    """`model` itself when it is a path that exists or not a known name;
    for a known name (`grepq`) with no such folder here, the cached folder.

    UsageError when the name's folder has not been downloaded yet.
    """
    if not isinstance(model, (str, os.PathLike)):
        return model
    name = os.fspath(model)
    if name not in NAMES or os.path.exists(name):
        return model
    folder = model_folder(name, cache)
    if (folder / "model.json").is_file():
        return str(folder)
    raise errors.UsageError(
        f"no model folder {name!r} here, and the released model is not in the cache "
        f"yet ({folder}): run `grepq download` first")
