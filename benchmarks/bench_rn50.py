"""CLIP RN50 image tower, inference on the CPU: ours (Flax) beside OpenAI's PyTorch ModifiedResNet.

    python benchmarks/bench_rn50.py              # ~3 min on 2 cores
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000 \\
        python benchmarks/bench_rn50.py          # the peer at its best
    python benchmarks/bench_rn50.py --quick      # smoke run

Needs torch and the `clip` package (clip-anytorch) for the peer: any Python
with those and this project's requirements. Measures images/s of the image
tower alone in inference mode (BatchNorm's stored statistics), batch
--batch (8), at 224x224 (the positional embedding as stored) and at 512x384
(W x H; the positional embedding left out, as GRepQ scores; the peer then
adds zeros, what commenting out OpenAI's line amounts to). Both sides run
the same seeded random weights (BatchNorm statistics included), so their
outputs must agree: the script stops if they differ by more than 1e-3.

Per size: --warmup untimed calls per side (JAX's compile time is printed),
then --runs rounds in which the sides take turns, the order rotating, so
that load from other processes falls on both; printed: the median seconds
per batch, images/s, the ratio ours / PyTorch of the medians (> 1: we are
faster), the single runs, and the load average (other processes on a shared
machine make single figures unreliable; the ratio is what to read). PyTorch
runs under torch.inference_mode in --torch_format memory layout
(channels_last by default: its faster one here, 1.7x at 224 in one run).

One run (2 shared cores, load average 8-10 from other sessions: noisy), with
GLIBC_TUNABLES: 224x224 7.4 against 2.7 images/s (2.75x); 512x384 1.7
against 1.5 images/s (1.13x; 0.85x in an earlier run).
"""
import argparse
import importlib.util
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from clip import model as openai_model  # noqa: E402

from grepq_jax.models import clip_rn50  # noqa: E402
from grepq_jax.formats.pytorch.clip_rn50_keys import convert_modified_resnet  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "make_rn50_reference", ROOT / "tests" / "fixtures" / "make_rn50_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

RN50 = dict(layers=(3, 4, 6, 3), width=64, heads=32, embed_dim=1024, image_size=224)
SIZES = {"224x224": ((224, 224), "resize"), "512x384": ((384, 512), "none")}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--torch_format", choices=["contiguous", "channels_last"],
                        default="channels_last")  # the peer at its best here
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.runs, args.warmup = 2, 2, 1
    return args


def random_weights() -> dict:
    shapes = reference.modified_resnet_shapes(RN50["layers"], RN50["width"], RN50["embed_dim"],
                                              RN50["image_size"])
    return reference.random_state_dict(shapes, seed=1)


def jax_side(state, images, position_embedding):
    """A callable running our tower on `images` (placed once), and its compile seconds."""
    arch, variables = convert_modified_resnet(state, source="random",
                                              position_embedding=position_embedding)
    model = clip_rn50.ModifiedResNet(arch)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    variables, images = jax.device_put(variables), jax.device_put(images.transpose(0, 2, 3, 1))
    start = time.perf_counter()
    apply = apply.lower(variables, images).compile()
    compile_seconds = time.perf_counter() - start
    return (lambda: np.asarray(apply(variables, images))), compile_seconds


def torch_side(state, images, position_embedding, channels_last):
    visual = openai_model.ModifiedResNet(RN50["layers"], RN50["embed_dim"], RN50["heads"],
                                         RN50["image_size"], RN50["width"])
    visual.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    if position_embedding == "none":
        grid = clip_rn50.feature_grid(*images.shape[2:])
        visual.attnpool.positional_embedding = torch.nn.Parameter(
            torch.zeros(1 + grid[0] * grid[1], 32 * RN50["width"]))
    visual.eval()
    pixels = torch.from_numpy(images)
    if channels_last:
        visual, pixels = (visual.to(memory_format=torch.channels_last),
                          pixels.contiguous(memory_format=torch.channels_last))

    def run():
        with torch.inference_mode():
            return visual(pixels).numpy()
    return run


def timed_rounds(sides: dict, runs: int) -> dict:
    """Seconds per call of each side over `runs` rounds, taking turns, order rotating."""
    seconds = {name: [] for name in sides}
    names = list(sides)
    for round_index in range(runs):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            start = time.perf_counter()
            sides[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def compare(label, size, position_embedding, state, args):
    images = np.random.RandomState(2).normal(size=(args.batch, 3, *size)).astype(np.float32)
    ours, compile_seconds = jax_side(state, images, position_embedding)
    peer = torch_side(state, images, position_embedding, args.torch_format == "channels_last")
    error = np.abs(ours() - peer()).max()
    if error > 1e-3:
        sys.exit(f"{label}: the outputs differ by {error:.2e}; not comparing speeds")
    sides = {"ours": ours, "pytorch": peer}
    for _ in range(args.warmup - 1):
        for run in sides.values():
            run()
    seconds = timed_rounds(sides, args.runs)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"{label} ({position_embedding} positions), batch {args.batch}: outputs agree to "
          f"{error:.1e}; jax compile {compile_seconds:.1f} s; load {os.getloadavg()[0]:.1f}")
    for name, s in seconds.items():
        print(f"  {name:8s} {median[name]:.3f} s/batch, {args.batch / median[name]:6.1f} images/s"
              f"  (runs: {', '.join(f'{x:.3f}' for x in s)})")
    print(f"  ratio ours/pytorch (images/s): {median['pytorch'] / median['ours']:.2f}x")


def main():
    args = parse_args()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, {args.torch_format}); usable cores "
          f"{len(os.sched_getaffinity(0))}; GLIBC_TUNABLES="
          f"{os.environ.get('GLIBC_TUNABLES', '(unset)')}; XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '(unset)')}")
    state = random_weights()
    for label, (size, position_embedding) in SIZES.items():
        compare(label, size, position_embedding, state, args)


if __name__ == "__main__":
    main()
