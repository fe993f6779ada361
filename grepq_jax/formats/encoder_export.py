"""An encoder export: the folder that a training run (or `grepq convert`) writes for one encoder.

    DIR/params/       the parameter tree (Orbax)
    DIR/encoder.json  the metadata: {"pathway": "low_level" | "high_level", ...},
                      written last and removed first, so a folder without it
                      is no export

`read_checked` and the checks below are what every reader uses: layout,
metadata keys, and each array's path, shape, dtype and finiteness, each
failure one errors.InputError naming the file and key.
"""
import contextlib
import json
import logging
import math
import os
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from grepq_jax import errors
from grepq_jax.formats import checkpoint
from grepq_jax.formats.paths import absolute

TREE = "params"
METADATA = "encoder.json"


def write(directory: str, tree: Any, metadata: dict[str, Any]) -> None:
    """Writes `tree` (arrays) and `metadata` (JSON-able) as one folder."""
    directory = epath.Path(absolute(directory))
    directory.mkdir(parents=True, exist_ok=True)
    if jax.process_count() > 1:
        # Orbax refuses arrays that live on one process's devices (constants
        # each process computed, like prompt embeddings); as host arrays,
        # process 0 writes them.
        tree = jax.tree.map(
            lambda a: (
                np.asarray(a)
                if isinstance(a, jax.Array) and a.is_fully_addressable
                else a
            ),
            tree,
        )
    checkpoint.drop_closed_loop_noise()
    # The metadata marks the export complete: gone while the tree is written.
    if jax.process_index() == 0:
        (directory / METADATA).unlink(missing_ok=True)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(directory / TREE, tree, force=True)
        checkpointer.wait_until_finished()
        if jax.process_index() == 0:
            temporary = directory / f".{METADATA}.tmp"
            temporary.write_text(json.dumps(metadata, indent=2))
            temporary.rename(directory / METADATA)
    except Exception as error:  # Orbax and tensorstore raise many kinds.
        raise checkpoint.CheckpointError(
            checkpoint.write_failure("write the export", directory, tree, error,
                     elsewhere="write it to another folder")) from error


def read(directory: str) -> tuple[Any, dict[str, Any]]:
    """The tree and metadata written by `write`.

    The arrays land on this process's first device, whatever the number of
    devices and processes that trained and saved them (a pod slice's export
    is read on a laptop).
    """
    directory = epath.Path(absolute(directory))
    meta_path = directory / METADATA
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{directory} is not an export: no {METADATA}"
        )
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(directory / TREE).item_metadata
    if stored is None:  # Orbax says nothing of a folder it did not finish.
        raise checkpoint.CheckpointError(
            f"{directory / TREE}: no Orbax metadata; the export is "
            "damaged or incomplete")
    stored = stored.tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        stored,
    )
    tree = checkpointer.restore(directory / TREE, target)
    return tree, json.loads(meta_path.read_text())


def require(mapping: Any, key: str, kind, source: str, *, positive: bool = False):
    """mapping[key], checked to be of `kind` (and > 0); errors.InputError otherwise.

    source names the file; bool is never taken for int.
    """
    if not isinstance(mapping, dict):
        raise errors.InputError(f"{source}: expected a JSON object, got "
                                f"{type(mapping).__name__}")
    if key not in mapping:
        raise errors.InputError(f"{source}: no key {key!r}")
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    wrong_kind = not isinstance(value, kinds) or (isinstance(value, bool)
                                                  and bool not in kinds)
    if wrong_kind or (positive and not (math.isfinite(value) and value > 0)):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise errors.InputError(f"{source}: {key} must be a {'positive ' * positive}"
                                f"{wanted}, got {value!r}")
    return value


def _flat(tree) -> dict[str, Any]:
    """{"a/b/c": leaf} of a nested tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in leaves}


def check_tree(stored, expected, source: str, built_from: str) -> None:
    """Every array of `stored` is in `expected` (abstract) with its shape and
    dtype, none is missing, and all values are finite; errors.InputError naming
    the first array that is not."""
    have, want = _flat(stored), _flat(expected)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise errors.InputError(f"{source}: no array {missing[0]} ({len(missing)} missing), "
                                f"which {built_from} needs")
    if extra:
        raise errors.InputError(f"{source}: unexpected array {extra[0]} ({len(extra)} in "
                               f"all) for {built_from}")
    for name, spec in want.items():
        array = have[name]
        if tuple(array.shape) != tuple(spec.shape) or array.dtype != spec.dtype:
            raise errors.InputError(
                f"{source}: {name} is {array.dtype}{list(array.shape)}, but "
                f"{built_from} needs {spec.dtype}{list(spec.shape)}")
        if not np.isfinite(np.asarray(array)).all():
            raise errors.InputError(f"{source}: {name} holds NaN or infinite values")


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax logs warnings and errors before it fails; its failure is reported
    instead, in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_checked(directory, pathway: str) -> tuple[dict, dict, str]:
    """(tree, metadata, source) of an export, or one errors.InputError.

    Checks the layout and the metadata's pathway before reading the tree;
    any failure of the reader (truncated or corrupted data) is reported in
    one line naming the folder.
    """
    # Orbax wants absolute paths; epath reads gs:// too.
    directory = epath.Path(absolute(os.fspath(directory)))
    meta_path, tree_path = directory / METADATA, directory / TREE
    if not meta_path.is_file():
        raise errors.InputError(f"{meta_path} is missing")
    metadata = read_json(meta_path)
    if require(metadata, "pathway", str, str(meta_path)) != pathway:
        raise errors.InputError(f"{meta_path}: expected a {pathway} export, got pathway "
                                f"{metadata['pathway']!r}")
    if not tree_path.is_dir() or not any(tree_path.iterdir()):
        raise errors.InputError(f"{tree_path} is missing or empty")
    try:
        with _orbax_quiet():
            tree, _ = read(str(directory))
    except Exception as error:  # Orbax and TensorStore raise many types.
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise errors.InputError(f"{tree_path}: cannot read the parameters, damaged or "
                                f"incomplete ({type(error).__name__}: {first_line})"
                               ) from None
    if not isinstance(tree, dict):
        raise errors.InputError(f"{tree_path}: expected a tree of arrays")
    return tree, metadata, str(directory)


def read_json(path):
    """A JSON file's value; errors.InputError naming it if unreadable."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise errors.InputError(f"{path}: not readable JSON ({error})") from None


def build(source: str, what: str, build):
    try:
        return build()
    except Exception as error:  # A config that the model code rejects.
        raise errors.InputError(f"{source}: cannot build the {what} it describes "
                                f"({type(error).__name__}: {error})") from None
