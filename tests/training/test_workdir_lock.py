"""One run per workdir: a second `grepq train` on it is refused at once.

Real processes: a training run held at a gate before its first step (so it
holds the workdir for as long as the test needs), and a second run of the
same command, which must stop in one line naming the first one's pid.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from support import gated_main
from support.run_main import REPO, TIMEOUT_S, Child, child_env, main_command

pytestmark = pytest.mark.slow  # subprocesses: the full suite runs them

FLAGS = ("--config.num_devices=1", "--config.num_epochs=1")


def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path):
    workdir, gates = tmp_path / "work", tmp_path / "gates"
    env = child_env(devices=1)
    first = Child(gated_main.command(gates, [0], "configs/low_level.py:tiny",
                                     workdir, *FLAGS), env, tmp_path / "first.log")
    first.wait_for(lambda: any(gates.glob("0.reached.*")))

    # The same workdir as a user types it from elsewhere: a relative path.
    relative = os.path.relpath(workdir, REPO)
    started = time.monotonic()
    second = subprocess.run(main_command("configs/low_level.py:tiny", relative, *FLAGS),
                            cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False)
    seconds = time.monotonic() - started
    (gates / "0").touch()
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.splitlines()[-1] == (
        f"python -m grepq_jax.main: workdir {workdir} is in use by another run "
        f"(pid {first.process.pid} on host {socket.gethostname()}, lock "
        f"{workdir / 'run.lock'}); wait for it to end or stop it, or use another "
        "--workdir")
    assert "Traceback" not in second.stderr
    assert "FSIM labels" not in second.stderr  # refused before any work
    assert seconds < 60
    assert first.wait() == 0, first.text()[-3000:]
    assert (workdir / "export" / "encoder.json").is_file()


HOLDER = """
import sys, time
from grepq_jax.training import workdir_lock
with workdir_lock.held(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    from grepq_jax.training import workdir_lock  # pylint: disable=import-outside-toplevel
    workdir = str(tmp_path / "work")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=REPO,
                              env=child_env(devices=1), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        try:
            with workdir_lock.held(workdir):
                raise AssertionError("a second holder got the lock")
        except workdir_lock.WorkdirInUseError as error:
            assert f"pid {holder.pid} on host" in str(error)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with workdir_lock.held(workdir):  # no stale lock after kill -9
            with open(os.path.join(workdir, "run.lock"), encoding="utf-8") as file:
                assert file.read().startswith(f"pid {os.getpid()} on host")
    finally:
        holder.kill()
        holder.wait()
