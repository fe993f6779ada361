"""Training progress: a terminal progress bar and TensorBoard event files.

Only process 0 writes or draws; other processes get a writer that does nothing.
"""

import errno
import io
import itertools
import os
import socket
import time

from etils import epath
import jax
import tqdm

from grepq_jax import errors
from grepq_jax.training import event_records

# How often events reach a file on Cloud Storage (tf.summary's default
# interval): each flush there uploads the whole file again.
_REMOTE_FLUSH_SECONDS = 120.0
# Tells apart the files that one process opens within a second.
_FILE_NUMBERS = itertools.count()


class ProgressReporter:
    """Logs scalars to `<logdir>` and shows steps/s and images/s."""

    def __init__(
        self,
        logdir: str,
        *,
        total_steps: int,
        start_step: int,
        images_per_step: int,
    ):
        self._active = jax.process_index() == 0
        self._images_per_step = images_per_step
        self._last_time, self._last_step = None, start_step
        if self._active:
            self._events = EventFile(logdir)
            self._bar = tqdm.tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
            )

    def step_done(
        self, step: int, scalars: dict[str, float]
    ) -> dict[str, float]:
        """Records `scalars` at `step`; returns them with the throughput added."""
        now = time.perf_counter()
        if self._last_time is not None and step > self._last_step:
            steps_per_s = (step - self._last_step) / (now - self._last_time)
            scalars = dict(
                scalars,
                steps_per_second=steps_per_s,
                images_per_second=steps_per_s * self._images_per_step,
            )
        self._last_time, self._last_step = now, step
        if self._active:
            self._events.add_scalars(step, scalars)
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(
                {
                    k: f"{v:.4g}"
                    for k, v in scalars.items()
                    if k in ("loss", "steps_per_second", "images_per_second")
                }
            )
        return scalars

    def close(self) -> None:
        if self._active:
            self._events.close()
            self._bar.close()


class EventFile:
    """A TensorBoard event file in `logdir` (local or gs://), written without
    TensorFlow: `Event` protos in TFRecord framing, as tf.summary writes them,
    scalars as `simple_value` (TensorBoard's scalar dashboard reads both).

    A local file is appended to at each step logged. Cloud Storage objects
    cannot be appended to, so there the file's bytes are kept here and written
    whole every _REMOTE_FLUSH_SECONDS and at close (as TensorFlow's own GCS
    file does). Raises errors.RunFailure naming the folder when it cannot be
    written.
    """

    def __init__(self, logdir: str):
        self._logdir = logdir
        folder = epath.Path(logdir)
        self._path = folder / (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_FILE_NUMBERS)}.v2")
        self._remote = "://" in str(folder)
        self._written = b""  # Remote only: the whole file so far.
        self._pending = io.BytesIO()  # Records not yet in the file.
        self._last_flush = 0.0
        self._pending.write(event_records.version_event(time.time()))
        self._guarded(lambda: folder.mkdir(parents=True, exist_ok=True))
        self.flush()  # The file exists from the start, as tf.summary's does.

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._pending.write(event_records.scalars_event(time.time(), step, scalars))
        if (not self._remote
                or time.monotonic() - self._last_flush >= _REMOTE_FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        pending = self._pending.getvalue()
        if self._remote:
            self._written += pending
            self._guarded(lambda: self._path.write_bytes(self._written))
        else:
            def append():
                with self._path.open("ab") as file:
                    file.write(pending)
            self._guarded(append)
        self._pending.seek(0)
        self._pending.truncate()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()

    def _guarded(self, write) -> None:
        try:
            write()
        except Exception as error:  # OSError, or a Cloud Storage client's.
            raise errors.RunFailure(
                f"cannot write TensorBoard events in {self._logdir}: "
                f"{_reason(error)}") from None


def _reason(error: Exception) -> str:
    """The cause in a line: the OS's words, or the client's first line."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device; free some space or use another --workdir"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
