"""`python -m grepq_jax.main`, except that chosen steps wait at gates.

    python tests/support/gated_main.py GATES HELD [grepq train flags ...]

HELD is a comma-separated list of batch indices (maybe empty). Before the
trainer gets batch s, the one that ends at step s + 1, for s in HELD, this
process creates GATES/s.reached.PID and waits until the test creates the file
GATES/s. A fault test can then kill or signal the run at a known point
instead of racing it: the run cannot get past a closed gate, however fast or
slow the machine. Everything else is the unchanged command; `command` writes
the line.
"""

import os
import pathlib
import runpy
import sys
import time

from grepq_jax.training.data import stream


def command(gates, held, config: str, workdir, *flags: str) -> list[str]:
    """The command line of a training run whose batches `held` wait at gates."""
    return [sys.executable, __file__, str(gates), ",".join(map(str, held)),
            f"--config={config}", f"--workdir={workdir}", *flags]


def gated(make_batches, gates: pathlib.Path, held: set[int]):
    """`make_batches`, its batches for the steps in `held` held at gates."""

    def make_gated_batches(*args, **kwargs):
        batches = make_batches(*args, **kwargs)
        try:
            for step, batch in batches:
                if step in held:
                    (gates / f"{step}.reached.{os.getpid()}").touch()
                    while not (gates / str(step)).exists():
                        time.sleep(0.01)
                yield step, batch
        finally:
            batches.close()

    return make_gated_batches


def main():
    gates, held = pathlib.Path(sys.argv[1]), sys.argv[2]
    gates.mkdir(parents=True, exist_ok=True)
    held_steps = {int(step) for step in held.split(",") if step}
    stream.make_batches = gated(stream.make_batches, gates, held_steps)
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    runpy.run_module("grepq_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
