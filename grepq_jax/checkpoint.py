"""The only module that talks to Orbax.

Training checkpoints live under `<workdir>/checkpoints/<step>`; an encoder
export is a folder holding one parameter tree (`params/`) and its metadata
(`encoder.json`). Paths may be local or gs:// (Orbax and etils.epath handle
both). With several processes, every call here is collective: each process
makes it, with the same arguments.

A step folder counts only once Orbax has written `commit_success.txt` into it,
last; one that a kill interrupted is ignored (the previous step is restored)
and deleted when the run starts again.
"""

import json
import os
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from grepq_jax import cli
from grepq_jax import errors

# An encoder export (write_export): the tree folder and the metadata file.
EXPORT_TREE = "params"
EXPORT_METADATA = "encoder.json"
# The metadata's name in exports written before it was encoder.json (when a
# model folder's description was model.json too); still read where
# encoder.json is absent.
OLD_EXPORT_METADATA = "model.json"


class CheckpointError(errors.RunFailure):
    """A checkpoint could not be written or read; the message names the path
    and the cause in one line."""


def workdir_problem(workdir: str) -> str | None:
    """Why a local `workdir` cannot hold a run (a file is in the way, or its
    nearest existing folder is not writable), or None. Checked before any
    work, so a typo costs no FSIM pass. URLs are not checked here."""
    if "://" in workdir:
        return None
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"workdir {workdir}: {path} is a file, not a folder"
    if not os.access(path, os.W_OK):
        return f"workdir {workdir}: {path} is not writable"
    return None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


class TrainCheckpoints:
    """Periodic, rotating checkpoints of a train state, resumable by step."""

    def __init__(self, directory: str, *, save_every_steps: int, keep: int):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every_steps,
            max_to_keep=keep,
            create=True,
            # The commit-file protocol Orbax uses on gs:// anyway, everywhere:
            # local runs and the tests then exercise what pods depend on.
            atomicity_options=ocp.options.AtomicityOptions(
                mode=ocp.options.AtomicityMode.COMMIT_FILE
            ),
            # Deletes step folders that an interrupted save left unmarked.
            cleanup_tmp_directories=True,
        )
        try:
            self._manager = ocp.CheckpointManager(
                epath.Path(cli.absolute(directory)), options=options
            )
        except Exception as error:  # Orbax and tensorstore raise many kinds.
            raise CheckpointError(
                f"cannot keep checkpoints in {directory}: {_one_line(error)}"
            ) from error
        self._saved_once = self._failed = False

    @property
    def directory(self) -> str:
        return str(self._manager.directory)

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore_latest(self, target: Any) -> Any:
        """The latest saved state laid out like `target`, or `target` itself."""
        step = self.latest_step
        if step is None:
            return target
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return self._manager.restore(
                step, args=ocp.args.StandardRestore(abstract)
            )
        except Exception as error:  # As in save.
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory} (a "
                f"checkpoint of another config or model?): {_one_line(error)}"
            ) from error

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves if `step` is due (or `force`); returns whether it saved.

        Saves run in the background. The first one is waited for, so that a
        workdir that cannot take checkpoints stops the run at its first save;
        a later failure surfaces at the next call. Either way it is raised
        as CheckpointError, naming the folder and the cause.
        """
        try:
            self._manager.check_for_errors()
            saved = self._manager.save(
                step, args=ocp.args.StandardSave(state), force=force
            )
            if saved and not self._saved_once:
                self._manager.wait_until_finished()
                self._saved_once = True
            return saved
        except Exception as error:  # Orbax and tensorstore raise many kinds.
            self._failed = True
            raise CheckpointError(
                f"cannot save the checkpoint of step {step} in "
                f"{self.directory}: {_one_line(error)}"
            ) from error

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without `force` would save."""
        return self._manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """Whether every process has agreed to stop and save at `step`.

        With several processes JAX's preemption service relays a SIGTERM
        received by any of them; alone this is always False (see
        `distributed.StopSignal`).
        """
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for the last save; CheckpointError if it failed.

        After a failed save it returns at once: Orbax's threads would wait
        minutes for signals that the failed save never sends.
        """
        if self._failed:
            return
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as error:  # As in save.
            raise CheckpointError(
                f"cannot save the last checkpoint in {self.directory}: "
                f"{_one_line(error)}"
            ) from error
        finally:
            self._manager.close()


def write_export(directory: str, tree: Any, metadata: dict[str, Any]) -> None:
    """Writes `tree` (arrays) and `metadata` (JSON-able) as one folder."""
    directory = epath.Path(cli.absolute(directory))
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
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / EXPORT_TREE, tree, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        (directory / EXPORT_METADATA).write_text(json.dumps(metadata, indent=2))


def export_metadata(directory) -> epath.Path:
    """The metadata file of the export in `directory`: encoder.json, or an
    older export's model.json when only that is there."""
    directory = epath.Path(directory)
    path, old = directory / EXPORT_METADATA, directory / OLD_EXPORT_METADATA
    return old if not path.exists() and old.exists() else path


def read_export(directory: str) -> tuple[Any, dict[str, Any]]:
    """The tree and metadata written by `write_export`.

    The arrays land on this process's first device, whatever the number of
    devices and processes that trained and saved them (a pod slice's export
    is read on a laptop).
    """
    directory = epath.Path(cli.absolute(directory))
    meta_path = export_metadata(directory)
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{directory} is not an export: no {EXPORT_METADATA}"
        )
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(directory / EXPORT_TREE).item_metadata
    if stored is None:  # Orbax says nothing of a folder it did not finish.
        raise CheckpointError(
            f"{directory / EXPORT_TREE}: no Orbax metadata; the export is "
            "damaged or incomplete")
    stored = stored.tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        stored,
    )
    tree = checkpointer.restore(directory / EXPORT_TREE, target)
    return tree, json.loads(meta_path.read_text())

