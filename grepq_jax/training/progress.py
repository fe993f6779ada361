"""Training progress: a terminal progress bar and TensorBoard event files.

Only process 0 writes or draws; other processes get a writer that does nothing.
"""

import time

import jax
import tqdm

from grepq_jax import errors


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
            self._tf = _tensorflow()
            try:
                self._writer = self._tf.summary.create_file_writer(logdir)
            except Exception as error:  # TensorFlow's own error classes.
                raise errors.RunFailure(
                    f"cannot write TensorBoard events in {logdir}: "
                    f"{_reason(error)}") from None
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
            with self._writer.as_default(step=step):
                for name, value in scalars.items():
                    self._tf.summary.scalar(name, value)
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
            self._writer.flush()
            self._bar.close()


def _reason(error: Exception) -> str:
    """TensorFlow's message is a function node's name, a path and the cause."""
    text = str(error)
    if "No space left on device" in text:
        return "no space left on device; free some space or use another --workdir"
    return text.strip().splitlines()[0].rsplit("; ", 1)[-1] if text.strip() else (
        type(error).__name__)


def _tensorflow():
    """TensorFlow for its summary writer only (imported late: it is slow)."""
    import tensorflow as tf

    # Keep TF off the accelerators: on a GPU it would reserve their memory.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was started earlier; its choice stands.
        pass
    return tf
