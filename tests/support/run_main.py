"""Runs `python -m grepq_jax.main` in child processes, as a user would.

Each child imports JAX and TensorFlow afresh (about 10 s); identical programs
load from the tests' persistent compilation cache.
"""

import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import jax

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180  # per child: a hung collective fails the test, not the suite


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(devices: int) -> dict[str, str]:
    """CPU only, `devices` simulated devices, the tests' compilation cache."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONUNBUFFERED="1",
    )


def main_command(config: str, workdir, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "grepq_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *flags,
    ]


class Child:
    """One child process, its stdout and stderr going to `log`."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        """The exit status; kills the child and fails if it takes too long."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.log.name} ran over {timeout} s:\n{self.text()[-3000:]}"
            )

    def wait_for(self, condition, timeout: float = TIMEOUT_S) -> None:
        """Polls `condition()` until true; fails if the child ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(
                    f"{self.log.name}: condition not met (exit status "
                    f"{self.process.poll()}):\n{self.text()[-3000:]}"
                )
            time.sleep(0.01)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: nothing runs after it, no handler, no cleanup."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
