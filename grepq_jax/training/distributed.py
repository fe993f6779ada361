"""Joining a multi-process JAX job, and hearing when it is asked to stop.

A job spans several processes on TPU pod slices (one per host) and on GPU
clusters (one per GPU under SLURM). `initialize` joins them through JAX's own
multi-controller runtime; `StopSignal` catches the SIGTERM that a preempted
TPU VM or a scheduler sends, so that the loop can save and exit cleanly.
"""

import signal
import threading

from absl import logging
import jax


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` if more than one process takes part.

    Arguments given win; the others come from the environment through JAX's
    own detection (SLURM, Open MPI, Cloud TPU pod slices). A run on one
    machine connects nowhere. Must come before any computation. Returns
    whether it joined a multi-process job.
    """
    count = num_processes or _scheduled_process_count()
    if count <= 1:
        if coordinator_address is not None or process_id is not None:
            raise ValueError(
                "--coordinator_address and --process_id need "
                "--num_processes > 1 (or a cluster environment that says so)"
            )
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info(
        "Process %d of %d, holding %d of the %d devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


# Processes prepare their data at different speeds (each labels its own
# groups); XLA's collectives give up after 30 s, a barrier waits this long.
_READY_TIMEOUT_S = 3600


def wait_for_every_process(name: str) -> None:
    """Waits until every process of the job has reached `name`.

    Through JAX's coordination service, whose barrier takes a timeout,
    unlike the first collective (Orbax's first sync), which fails when the
    processes arrive more than 30 s apart. Alone it returns at once.
    """
    if jax.process_count() == 1:
        return
    # Private API, reached from this one function only.
    from jax._src import distributed as jax_distributed

    jax_distributed.global_state.client.wait_at_barrier(
        name, timeout_in_ms=_READY_TIMEOUT_S * 1000)


def _scheduled_process_count() -> int:
    """Processes the cluster environment says this job has; 1 if none."""
    # The detectors jax.distributed.initialize() itself uses. They are private
    # API, so they are reached from this one function only.
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return int(env.get_process_count())
    return 1


class StopSignal:
    """Records a SIGTERM so that a single-process run stops at a step boundary.

    With several processes, JAX's preemption service (started by
    `jax.distributed.initialize`) catches SIGTERM itself and picks one step at
    which every process stops (`TrainCheckpoints.reached_preemption`); a
    Python handler would displace it, so none is installed then.
    """

    def __init__(self):
        self._received = threading.Event()
        self._previous = None
        in_main_thread = threading.current_thread() is threading.main_thread()
        if jax.process_count() == 1 and in_main_thread:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._received.set()

    @property
    def received(self) -> bool:
        return self._received.is_set()

    def close(self) -> None:
        """Puts back the handler that was there before."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
