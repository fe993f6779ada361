"""Steps/s of the whole training loop (not just the step): data, dispatch,
metrics, logging, on the tiny low-level model where the loop's own cost shows.

The trainer fetches metrics from the device only when it logs or saves; this
measures what that buys. Each run trains `configs/low_level.py:tiny` on the
embedded photographs for --steps steps (log every --log_every, no checkpoint
but the last) in a fresh workdir, and reads the progress reporter's
steps_per_second from TensorBoard: the median over the logs after the first
(which holds the compile). Prints the median of the --repeats runs' medians.

  python benchmarks/bench_train_loop.py                 # CPU
  python benchmarks/bench_train_loop.py --width=64      # a heavier step
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import low_level as low_level_config  # noqa: E402
from grepq_jax.training import trainer  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log_every", type=int, default=20)
    parser.add_argument("--width", type=int, default=4, help="ResNet width")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def steps_per_second(logdir) -> list[float]:
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel

    events = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    rates = {e.step: e.value for e in events.Scalars("steps_per_second")}
    return [rates[k] for k in sorted(rates)]


def one_run(args) -> float:
    config = low_level_config.get_config("tiny")
    config.model.width = args.width
    config.num_epochs = args.steps  # 8 photographs, batch 8: a step an epoch
    config.num_devices = 1
    config.log_every_steps = args.log_every
    config.checkpoint_every_steps = 10 * args.steps
    with tempfile.TemporaryDirectory() as workdir:
        trainer.train_and_evaluate(config, workdir)
        rates = steps_per_second(os.path.join(workdir, "tensorboard"))
    return statistics.median(rates[1:])


def main():
    args = parse_args()
    medians = [one_run(args) for _ in range(args.repeats)]
    print(f"loop steps/s (tiny, width {args.width}, log every {args.log_every}): "
          f"runs {[round(m, 1) for m in medians]}, median {statistics.median(medians):.1f}")


if __name__ == "__main__":
    main()
