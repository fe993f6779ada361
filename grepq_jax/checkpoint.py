"""The only module that talks to Orbax.

Training checkpoints live under `<workdir>/checkpoints/<step>`; an export is a
folder holding one parameter tree and a JSON description of it. Paths may be
local or gs:// (Orbax and etils.epath handle both). With several processes,
every call here is collective: each process makes it, with the same arguments.

A step folder counts only once Orbax has written `commit_success.txt` into it,
last; one that a kill interrupted is ignored (the previous step is restored)
and deleted when the run starts again.
"""

import json
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

_EXPORT_TREE = "params"
_EXPORT_META = "model.json"


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
        self._manager = ocp.CheckpointManager(
            epath.Path(directory), options=options
        )

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
        return self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract)
        )

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves if `step` is due (or `force`); returns whether it saved."""
        return self._manager.save(
            step, args=ocp.args.StandardSave(state), force=force
        )

    def reached_preemption(self, step: int) -> bool:
        """Whether every process has agreed to stop and save at `step`.

        With several processes JAX's preemption service relays a SIGTERM
        received by any of them; alone this is always False (see
        `distributed.StopSignal`).
        """
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def write_export(directory: str, tree: Any, metadata: dict[str, Any]) -> None:
    """Writes `tree` (arrays) and `metadata` (JSON-able) as one folder."""
    directory = epath.Path(directory)
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
    checkpointer.save(directory / _EXPORT_TREE, tree, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        (directory / _EXPORT_META).write_text(json.dumps(metadata, indent=2))


def read_export(directory: str) -> tuple[Any, dict[str, Any]]:
    """The tree and metadata written by `write_export`.

    The arrays land on this process's first device, whatever the number of
    devices and processes that trained and saved them (a pod slice's export
    is read on a laptop).
    """
    directory = epath.Path(directory)
    meta_path = directory / _EXPORT_META
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{directory} is not an export: no {_EXPORT_META}"
        )
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(directory / _EXPORT_TREE).item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        stored,
    )
    tree = checkpointer.restore(directory / _EXPORT_TREE, target)
    return tree, json.loads(meta_path.read_text())
