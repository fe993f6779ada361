"""Training checkpoints: `<workdir>/checkpoints/<step>` through Orbax's CheckpointManager.

Paths may be local or gs://. With several processes, every call here is
collective: each process makes it, with the same arguments. A step folder
counts only once Orbax has written `commit_success.txt` into it, last; one
that a kill interrupted is ignored and deleted when the run starts again.
Before the marker, the step's files are listed with their digests
(`checkpoint_digest`); a step whose files no longer match is set aside as
`<step>.damaged` and the newest intact step restored instead. A full disk is
reported in one line (the file, the state's size, the space free) rather
than by each of Orbax's writing tasks. Encoder exports: encoder_export.py.
"""

import collections
import errno
import os
import re
import shutil
import sys
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from grepq_jax.formats import checkpoint_digest
from grepq_jax.formats.paths import absolute
from grepq_jax import errors

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


_NO_SPACE = re.compile(r"No space left on device|os_error_code='?28\b")
_WRITING = re.compile(r'(?:writing local file|Failed writing:) "([^"]+)"')


def _no_space(error: BaseException) -> str | None:
    """The file that a full disk stopped (or "" when unnamed), None when
    `error` and its causes are not a full disk."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
                _NO_SPACE.search(str(error))):
            written = _WRITING.search(str(error))
            return written.group(1) if written else getattr(error, "filename", "") or ""
        error = error.__cause__ or error.__context__
    return None


def _megabytes(count: float) -> str:
    return f"{count / 1e6:.1f} MB"


def write_failure(what: str, directory, tree: Any, error: BaseException, *,
             elsewhere: str = "use another --workdir") -> str:
    """One line for a failed write of `tree` into `directory`; `elsewhere`
    says how to write somewhere else."""
    written = _no_space(error)
    if written is None:
        return f"cannot {what} in {directory}: {_one_line(error)}"
    size = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(tree))
    need = f"its arrays need about {_megabytes(size)}" if size else "it needs more"
    free = ""
    if "://" not in str(directory):
        try:
            free = f", {_megabytes(shutil.disk_usage(directory).free)} free there"
        except OSError:
            pass
    return (f"no space left on device to {what} in {directory}"
            + (f" (writing {written})" if written else "")
            + f": {need}{free}; free some space or {elsewhere}")


def drop_closed_loop_noise() -> None:
    """Keeps out the "Event loop is closed" tracebacks that TensorStore's
    callbacks print (as unraisable exceptions) for each write still pending
    when one of Orbax's writes fails; the failure itself is raised to the
    caller and reported in one line."""
    if getattr(sys.unraisablehook, "grepq_filter", False):
        return
    previous = sys.unraisablehook

    def unraisablehook(unraisable):
        if not _closed_loop(unraisable.exc_type, unraisable.exc_value):
            previous(unraisable)

    unraisablehook.grepq_filter = True
    sys.unraisablehook = unraisablehook


def _closed_loop(kind, value) -> bool:
    return kind is RuntimeError and str(value) == "Event loop is closed"


class TrainCheckpoints:
    """Periodic, rotating checkpoints of a train state, resumable by step."""

    def __init__(self, directory: str, *, save_every_steps: int, keep: int):
        drop_closed_loop_noise()
        # Steps whose save is under way, oldest first: Orbax finishes one
        # save before it starts the next.
        self._saving: collections.deque[int] = collections.deque()
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
            # On process 0 once every process has written its files, before
            # the commit marker.
            async_options=ocp.AsyncOptions(
                post_finalization_callback=self._write_digest),
        )
        try:
            self._manager = ocp.CheckpointManager(
                epath.Path(absolute(directory)), options=options
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

    def _step_folder(self, step: int) -> epath.Path:
        return epath.Path(self.directory) / str(step)

    def _write_digest(self) -> None:
        checkpoint_digest.write_digest(self._step_folder(self._saving.popleft()))

    def damage(self, step: int) -> str | None:
        """What is wrong with saved `step`'s files, or None if they are intact."""
        return checkpoint_digest.damage(self._step_folder(step))

    def latest_verified_step(self) -> int | None:
        """The newest step whose files match their digest (after waiting for
        the saves under way), or None."""
        try:
            self._manager.wait_until_finished()
        except Exception:  # pylint: disable=broad-except
            pass  # A failed save is not a candidate; it is reported by save.
        for step in sorted(self._manager.all_steps(), reverse=True):
            if self.damage(step) is None:
                return step
        return None

    def restore_latest(self, target: Any) -> Any:
        """The newest intact saved state laid out like `target`, or `target`.

        A damaged step (its files differ from their digest) is renamed to
        `<step>.damaged`, with a warning naming the file, and the step before
        it is tried.
        """
        for step in sorted(self._manager.all_steps(), reverse=True):
            problem = self.damage(step)
            if problem is None:
                return self._restore(step, target)
            self._set_aside(step, problem)
        return target

    def _set_aside(self, step: int, problem: str) -> None:
        folder = self._step_folder(step)
        aside = folder.with_name(f"{step}.damaged")
        count = 1
        while aside.exists():
            aside, count = folder.with_name(f"{step}.damaged-{count}"), count + 1
        logging.warning(
            "Checkpoint step %d in %s is damaged: %s. Moved it to %s; "
            "resuming from the step before it, if any.",
            step, self.directory, problem, aside)
        if jax.process_index() == 0:
            folder.rename(aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"grepq_set_aside_{step}")
        self._manager.reload()

    def _restore(self, step: int, target: Any) -> Any:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return self._manager.restore(
                step, args=ocp.args.StandardRestore(abstract)
            )
        except Exception as error:  # As in save.
            # Its files are intact (they match their digest): the checkpoint
            # is of another config or model.
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory}: it does "
                f"not fit this config and model ({_one_line(error)}); use "
                "another --workdir or the config that wrote it"
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
            due = jax.process_index() == 0 and (force or self.should_save(step))
            if due:
                self._saving.append(step)
            saved = self._manager.save(
                step, args=ocp.args.StandardSave(state), force=force
            )
            if due and not saved:
                self._saving.pop()
            if saved and not self._saved_once:
                self._manager.wait_until_finished()
                self._saved_once = True
            return saved
        except Exception as error:  # Orbax and tensorstore raise many kinds.
            self._failed = True
            raise CheckpointError(write_failure(
                f"save the checkpoint of step {step}", self.directory, state,
                error)) from error

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
            raise CheckpointError(write_failure(
                "save the last checkpoint", self.directory, None, error)
            ) from error
        finally:
            self._manager.close()
