"""The only module that talks to Orbax.

Training checkpoints live under `<workdir>/checkpoints/<step>`; an export is a
folder holding one parameter tree and a JSON description of it. Paths may be
local or gs:// (Orbax and etils.epath handle both).
"""

import json
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

_EXPORT_TREE = "params"
_EXPORT_META = "model.json"


class TrainCheckpoints:
    """Periodic, rotating checkpoints of a train state, resumable by step."""

    def __init__(self, directory: str, *, save_every_steps: int, keep: int):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every_steps, max_to_keep=keep, create=True
        )
        self._manager = ocp.CheckpointManager(
            epath.Path(directory), options=options
        )

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

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def write_export(directory: str, tree: Any, metadata: dict[str, Any]) -> None:
    """Writes `tree` (arrays) and `metadata` (JSON-able) as one folder."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / _EXPORT_TREE, tree, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        (directory / _EXPORT_META).write_text(json.dumps(metadata, indent=2))


def read_export(directory: str) -> tuple[Any, dict[str, Any]]:
    """The tree and metadata written by `write_export`, as host arrays."""
    directory = epath.Path(directory)
    meta_path = directory / _EXPORT_META
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{directory} is not an export: no {_EXPORT_META}"
        )
    tree = ocp.StandardCheckpointer().restore(directory / _EXPORT_TREE)
    return tree, json.loads(meta_path.read_text())
