"""One training run per workdir.

Two runs on one workdir overwrite each other's checkpoints and both die
inside Orbax, losing steps. The first run holds an advisory lock
(`fcntl.flock`) on `<workdir>/run.lock`; a second one is refused at once,
naming the holder. The operating system drops the lock when the holding
process ends in any way (kill -9 included), so it is never left stale; the
pid and host written in the file only describe the holder.

gs:// has no locks: there, nothing stops a second run and the user must not
start one (a warning says so). On NFS, flock is as reliable as the server's
lock service. With several processes, process 0 holds the lock for the job.
"""

import contextlib
import fcntl
import os
import socket

from absl import logging

from grepq_jax import errors

LOCK_FILE = "run.lock"


class WorkdirInUseError(errors.UsageError):
    """Another run holds the workdir."""


@contextlib.contextmanager
def held(workdir: str, *, holder: bool = True):
    """Holds `workdir`'s lock for the `with` block; WorkdirInUseError if
    another process holds it. `holder` False (processes other than 0 of a
    job) takes nothing."""
    if not holder:
        yield
        return
    if "://" in workdir:
        logging.warning(
            "%s: no lock on a cloud bucket; a second run on this workdir "
            "would corrupt its checkpoints: do not start one.", workdir)
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    # Opened without truncating: the holder's description stays readable
    # until the lock is ours.
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUseError(
                f"workdir {workdir} is in use by another run ({_holder(path)}, "
                f"lock {path}); wait for it to end or stop it, or use "
                "another --workdir") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()} on host "
                             f"{socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(descriptor)  # Releases the lock.


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or "pid unknown"
    except OSError:
        return "pid unknown"
