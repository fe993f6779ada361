"""Training throughput of the paper's low-level step: grepq_jax against PyTorch.

One step is what the paper trains with: 8 groups x 9 versions x 2 views at
224x224 (144 images), ResNet-18 + MLP head, the quality-aware contrastive loss
(tau 0.5), AdamW, float32. Our side is the trainer's own `trainer.train_step`,
jitted the way `trainer.train_and_evaluate` jits it, compiled twice: as XLA
compiles it by default, and with XLA's own convolutions in place of YNNPACK's
(a compiler option, same arithmetic). The peer is `torch_peer.PeerTrainer`,
the original PyTorch iteration, in channels-last memory format (its faster
one here). All start from the same weights (the peer's, converted) and see the
same random batch, so their first losses must agree. They run in this one
process, taking turns each repeat, so that load from other processes falls on
all of them; the medians give s/step, images/s and the ratio JAX/PyTorch
(> 1: we are faster).

  python benchmarks/bench_train_step.py            # the paper's step
  python benchmarks/bench_train_step.py --quick    # smoke run

PyTorch's CPU training is markedly faster when glibc keeps freed memory
instead of returning it to the OS; run it this way too, and report both:
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000 \\
    python benchmarks/bench_train_step.py
Needs torch and torchvision (benchmark-only dependencies).
"""

import argparse
import functools
import os
import platform
import re
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from configs import low_level as low_level_config  # noqa: E402
from grepq_jax.training import sharding  # noqa: E402
from grepq_jax.training import trainer  # noqa: E402
from grepq_jax.formats.pytorch import resnet_weights  # noqa: E402
from grepq_jax.training.pathways import low_level  # noqa: E402

VERSIONS = 9  # the paper's group: a pristine image and 8 distorted versions
VIEWS = 2  # anchor and augmented view of every version
# The schedules' length only sets the learning rate, not the cost of a step.
SCHEDULE_STEPS = 1000
# XLA:CPU hands convolutions, dots and reductions to YNNPACK by default. Its
# filter-gradient convolutions (windows as large as the image) are 2-3x slower
# than XLA's Eigen ones here; this keeps dots and reductions on YNNPACK and
# takes the convolutions back: the XLA_FLAGS form is
# --xla_cpu_experimental_ynn_fusion_type=-individual_convolution.
EIGEN_CONVOLUTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=1, help="timed steps per side a repeat"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed steps per side first, >= 1 (the first one's losses "
        "are compared)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed rounds; the figures are their medians",
    )
    parser.add_argument("--groups", type=int, default=8, help="groups per step")
    parser.add_argument(
        "--size", type=int, default=224, help="image side in pixels"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 groups at 128x128"
    )
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch.set_num_threads; 0: one per usable core",
    )
    parser.add_argument(
        "--torch_format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="the peer's memory format (contiguous is NCHW, as the original)",
    )
    args = parser.parse_args()
    if args.quick:
        # Not 64: below 96 px ResNet-18's last stage is 2x2, where XLA:CPU
        # has a pathologically slow 3x3 convolution (see README.md).
        args.groups, args.size = 2, 128
    if min(args.steps, args.repeats, args.warmup) < 1:
        parser.error("--steps, --repeats and --warmup must be >= 1")
    return args


def random_batch(
    groups: int, size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Views (G, V, H, W, 3) uint8, as the pipeline makes them, and a valid
    FSIM-like matrix (G, V, V): symmetric, in [0.3, 1], ones on the diagonal."""
    rng = np.random.default_rng(seed)
    views = rng.integers(0, 256, (2, groups, VERSIONS, size, size, 3), np.uint8)
    sim = rng.uniform(0.3, 1.0, (groups, VERSIONS, VERSIONS))
    sim = (sim + sim.transpose(0, 2, 1)) / 2
    sim[:, np.arange(VERSIONS), np.arange(VERSIONS)] = 1.0
    return {
        "anchor": views[0],
        "augment": views[1],
        "sim": sim.astype(np.float32),
    }


def converted_weights(torch_state_dict) -> dict:
    """The peer's weights as our low-level model's variables."""
    return resnet_weights.convert_grepq_low_level(
        {k: v.numpy() for k, v in torch_state_dict.items()}
    )


class JaxSide:
    """The trainer's jitted `train_step` on a low-level config (the paper's
    by default), one step a call.

    `variables` ({"params", "batch_stats"}) start the state. With
    `xla_defaults` the step is compiled with `compiler_options` alone (None:
    XLA's defaults); without, with the trainer's own options.
    """

    def __init__(self, batch, variables, compiler_options=None, *,
                 config=None, xla_defaults=True):
        config = config or low_level_config.get_config("paper")
        model = low_level.make_model(config.model)
        objective = functools.partial(
            low_level.quality_aware_objective, model=model, tau=config.loss.tau
        )
        optimizer, _ = trainer.make_optimizer(
            config.optim, SCHEDULE_STEPS, SCHEDULE_STEPS
        )
        mesh = sharding.make_mesh(1)
        replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.state = trainer.create_train_state(variables, optimizer, replicated)
        self.batch = sharding.global_batch(batch, self.batch_sharding)
        step_fn = trainer.make_step_fn(
            objective, optimizer, mesh, xla_defaults=xla_defaults
        )
        start = time.perf_counter()
        self.compiled = step_fn.lower(self.state, self.batch).compile(
            compiler_options
        )
        self.compile_seconds = time.perf_counter() - start

    def step(self) -> float:
        self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready(self.state)
        return float(jax.device_get(metrics["loss"]))

    def repeat_seconds(self, count: int) -> float:
        """Seconds a step over `count` steps on the placed batch, dispatched
        back to back and waited for once, at the end."""
        started = time.perf_counter()
        for _ in range(count):
            self.state, metrics = self.compiled(self.state, self.batch)
        float(jax.device_get(metrics["loss"]))
        return (time.perf_counter() - started) / count

    def run(self, batches) -> float:
        """Steps on each batch of `batches` (host arrays, placed here) as the
        trainer's loop does, without waiting for the device between steps;
        returns the last loss, read back once at the end."""
        metrics = None
        for batch in batches:
            self.state, metrics = self.compiled(
                self.state, sharding.global_batch(batch, self.batch_sharding)
            )
        return float(jax.device_get(metrics["loss"]))

    def convolution_kernels(self) -> str:
        """Which kernels run the step's convolutions, as one line."""
        hlo = self.compiled.as_text()
        bodies = dict(
            re.findall(
                r"^(?:ENTRY )?%(\S+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S
            )
        )
        in_ynn = re.findall(r"calls=%([\w.\-]+), [^\n]*__ynn_fusion", hlo)
        ynn = sum(bodies[name].count(" convolution(") for name in in_ynn)
        eigen = hlo.count(" convolution(") - ynn
        return f"{eigen} convolutions by XLA/Eigen, {ynn} by YNNPACK"


class TorchSide:
    """The PyTorch peer's step on the same batch (NCHW float in [0, 1], as
    the original's loader gives it)."""

    def __init__(self, batch: dict[str, np.ndarray], channels_last: bool,
                 device: str = "cpu"):
        import torch  # pylint: disable=import-outside-toplevel
        from benchmarks import torch_peer  # pylint: disable=import-outside-toplevel

        self.trainer = torch_peer.PeerTrainer(SCHEDULE_STEPS, channels_last)
        self.trainer.model.to(device)  # in place: the optimizer keeps its parameters
        as_nchw = (
            lambda x: torch.from_numpy(x / np.float32(255))
            .permute(0, 1, 4, 2, 3)
            .contiguous()
            .to(device)
        )
        self.frames = as_nchw(batch["anchor"])
        self.augmentations = as_nchw(batch["augment"])
        self.annotators = torch.from_numpy(batch["sim"]).to(device)

    def step(self) -> float:
        return self.trainer.step(
            self.frames, self.augmentations, self.annotators
        )


def timed(step, count: int) -> tuple[float, float]:
    """Seconds per step, and CPU seconds per wall second (cores kept busy)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / count, cpu / wall


def cores_used_by_matmul() -> dict[str, float]:
    """CPU seconds per wall second of a large float32 matmul on each side: how
    many cores each framework's thread pool really keeps busy."""
    import torch  # pylint: disable=import-outside-toplevel

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    jax_a, torch_a = jax.device_put(a), torch.from_numpy(a)
    matmul = jax.jit(lambda x: x @ x)
    runs = {
        "jax": lambda: matmul(jax_a).block_until_ready(),
        "pytorch": lambda: torch_a @ torch_a,
    }
    for run in runs.values():
        run()
    return {name: timed(run, 10)[1] for name, run in runs.items()}


def describe_environment(args, images: int):
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel

    print(
        f"jax {jax.__version__} ({jax.device_count()} {jax.default_backend()} "
        f"device), torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, python {platform.python_version()}"
    )
    busy = cores_used_by_matmul()
    print(
        f"usable cores {len(os.sched_getaffinity(0))}; torch threads "
        f"{torch.get_num_threads()}; cores kept busy by a 2048^2 matmul: jax "
        f"{busy['jax']:.2f}, pytorch {busy['pytorch']:.2f}"
    )
    for name in ("GLIBC_TUNABLES", "XLA_FLAGS"):
        print(f"  {name}={os.environ.get(name, '(unset)')}")
    print(
        f"step: {args.groups} groups x {VERSIONS} versions x {VIEWS} views at "
        f"{args.size}x{args.size} = {images} images; pytorch "
        f"{args.torch_format}; warm-up {args.warmup}, {args.repeats} repeats "
        f"of {args.steps} step(s) per side"
    )


def build_sides(args) -> dict:
    import torch  # pylint: disable=import-outside-toplevel

    batch = random_batch(args.groups, args.size)
    torch.manual_seed(0)
    peer = TorchSide(batch, args.torch_format == "channels_last")
    weights = converted_weights(peer.trainer.model.state_dict())
    sides = {
        "jax": JaxSide(batch, weights),
        "jax+eigen": JaxSide(batch, weights, EIGEN_CONVOLUTIONS),
    }
    for name, side in sides.items():
        print(
            f"{name}: compiled in {side.compile_seconds:.1f} s; "
            f"{side.convolution_kernels()}"
        )
    return sides | {"pytorch": peer}


def warm_up(sides: dict, steps: int):
    """Runs the first steps, which start from the same weights and batch:
    their losses must agree."""
    first_loss = {}
    for name, side in sides.items():
        first_loss[name] = side.step()
        for _ in range(steps - 1):
            side.step()
    print(
        "first-step loss: "
        + ", ".join(f"{name} {loss:.6f}" for name, loss in first_loss.items())
    )
    if not np.allclose(
        list(first_loss.values()), first_loss["pytorch"], rtol=1e-3
    ):
        raise AssertionError("the steps disagree: not the same computation")


def measure(sides: dict, repeats: int, steps: int) -> tuple[dict, dict]:
    """Seconds per step and cores busy, per side and repeat. The sides take
    turns, the order rotating each repeat so none always follows another."""
    seconds = {name: [] for name in sides}
    busy = {name: [] for name in sides}
    names = list(sides)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            per_step, cores_busy = timed(sides[name].step, steps)
            seconds[name].append(per_step)
            busy[name].append(cores_busy)
    return seconds, busy


def main():
    import torch  # pylint: disable=import-outside-toplevel

    args = parse_args()
    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    images = args.groups * VERSIONS * VIEWS
    describe_environment(args, images)
    sides = build_sides(args)
    warm_up(sides, args.warmup)
    seconds, busy = measure(sides, args.repeats, args.steps)

    print(f"median of {args.repeats} repeats:")
    median = {name: statistics.median(runs) for name, runs in seconds.items()}
    for name, runs in seconds.items():
        print(
            f"  {name:10s} {median[name]:8.3f} s/step "
            f"{images / median[name]:8.2f} images/s  cores busy "
            f"{statistics.median(busy[name]):.2f}  (runs: "
            + ", ".join(f"{s:.3f}" for s in runs)
            + ")"
        )
    for name in ("jax", "jax+eigen"):
        print(
            f"  throughput ratio {name}/pytorch: "
            f"{median['pytorch'] / median[name]:.2f}x (target >= 1.2x)"
        )


if __name__ == "__main__":
    main()
