"""Is the data-parallel low-level step compute-bound, and what does it predict
for TPU pod slices?

By default on 8 simulated CPU devices (XLA's host platform split 8 ways; they
share this machine's cores, so times are CPU times, not accelerator ones):

1. the compiled step alone: the trainer's own `trainer.train_step`, jitted as
   `trainer.train_and_evaluate` jits it, on the paper's shapes (ResNet-18,
   groups of 9 versions x 2 views of 7x7 fragments of 32 px = 224 px), the
   global batch sharded, one group per device: s/step, groups/s, images/s;
2. the input pipeline alone, the real `LowLevelDataset` on the embedded
   corpus with the paper's fragments, in one process: groups/s cold (first
   epoch: every group's distorted versions are built, as on any corpus
   larger than its 256 MB cache) and warm (versions cached: fragments only);
3. the step fed by that pipeline through the trainer's prefetch thread:
   s/step, the same as (1) when the pipeline keeps up;
4. from the compiled step: FLOPs (XLA cost analysis) and the gradient bytes
   all-reduced per step; from those and the stated TPU figures, the expected
   images/s per chip and weak-scaling efficiency at 8, 64 and 256 chips.

  python benchmarks/bench_scaling.py              # paper shapes
  python benchmarks/bench_scaling.py --quick      # 4x4 fragments (128 px)
  python benchmarks/bench_scaling.py --accelerator --groups_per_device 8 \\
      --dtype bfloat16 --peak_tflops 989          # e.g. on one H100

--accelerator measures the visible GPUs or TPUs instead and prints the
fraction of --peak_tflops the step reaches (the MFU the estimate assumes).
Medians of --repeats timed rounds. docs/scaling.md explains the estimate.
"""

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from configs import low_level as low_level_config  # noqa: E402
from grepq_jax.training import sharding  # noqa: E402
from grepq_jax.training import trainer  # noqa: E402
from grepq_jax.training.data import low_level_pipeline as low_level_data  # noqa: E402
from grepq_jax.training.pathways import low_level  # noqa: E402

VERSIONS = 9  # the paper's groups: a pristine image and 8 distorted versions
SIMULATED_DEVICES = 8
# Public per-chip figures (cloud.google.com/tpu/docs/v4 and /v5e); the
# all-reduce bandwidth is the pod's "all-reduce bandwidth" over its chips.
TPUS = {
    "v4": dict(
        peak_tflops=275.0, allreduce_gb_s=1.1e6 / 4096, chips_per_host=4
    ),
    "v5e": dict(
        peak_tflops=197.0, allreduce_gb_s=51.2e3 / 256, chips_per_host=4
    ),
}
# Fraction of peak the step reaches, by groups a chip: measured on one H100
# (bf16, --accelerator, 178.6 GFLOP a group: 3.6% at 1 group, 10.7% at 8)
# and assumed alike on TPUs, whose matrix units ResNet-18's 64-channel
# layers and BatchNorm leave as idle.
MFU = {1: 0.036, 8: 0.107}
ALLREDUCE_EFFICIENCY = 0.5  # of that bandwidth, for ~46 MB in one go
COLLECTIVE_LATENCY_S = 10e-6  # a small all-reduce, per tree level
CHIPS = (8, 64, 256)
GROUPS_PER_CHIP = tuple(MFU)  # the paper's batch of 8 on 8 chips, or on each


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=int, default=7, help="fragments a side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="per repeat")
    parser.add_argument("--quick", action="store_true", help="--grid 4")
    parser.add_argument(
        "--accelerator",
        action="store_true",
        help="the visible GPUs/TPUs, not 8 CPU devices",
    )
    parser.add_argument("--groups_per_device", type=int, default=1)
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16")
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="the accelerator's peak, for the MFU printed",
    )
    args = parser.parse_args()
    if args.quick:
        args.grid = 4
    return args


def use_simulated_cpu_devices():
    """8 CPU devices; read when the backend starts, at the first jax call."""
    jax.config.update("jax_platforms", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count="
            f"{SIMULATED_DEVICES}"
        ).strip()


def paper_config(args, devices: int):
    config = low_level_config.get_config("paper")
    config.data.fragment_grid = args.grid
    config.model.dtype = args.dtype
    config.batch_size = devices * args.groups_per_device
    return config


def make_step(config, mesh):
    """The trainer's jitted step, its initial state and the batch sharding."""
    model = low_level.make_model(config.model)
    objective = functools.partial(
        low_level.quality_aware_objective, model=model, tau=config.loss.tau
    )
    optimizer, _ = trainer.make_optimizer(config.optim, 1000, 1000)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    side = config.data.fragment_grid * config.data.fragment_size
    variables = jax.jit(model.init, static_argnames="train")(
        jax.random.key(0), np.zeros((1, side, side, 3), np.float32), train=False
    )
    state = trainer.create_train_state(variables, optimizer, replicated)
    step_fn = trainer.make_step_fn(objective, optimizer, mesh, xla_defaults=True)
    return step_fn, state, batch_sharding


def compile_step(step_fn, state, batch):
    """The compiled step and the FLOPs of the whole (global) step.

    Counted on the program before XLA optimizes and partitions it: after,
    GPU convolutions are cuDNN calls that the cost analysis does not count,
    and each device's program holds only its share.
    """
    lowered = step_fn.lower(state, batch)
    compiled = lowered.compile()
    cost = lowered.cost_analysis()  # None on some backends (jax 0.11 GPU)
    if cost is None:
        print("no cost analysis before compiling here; FLOPs as compiled")
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return compiled, float(cost["flops"]) * jax.device_count()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, float(cost["flops"])


def timed_median(run, repeats: int, count: int) -> float:
    """Median over `repeats` rounds of the seconds per call of `run`."""
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(count):
            run()
        rounds.append((time.perf_counter() - start) / count)
    return statistics.median(rounds)


def pipeline_rates(dataset, batch_size: int) -> dict[str, float]:
    """Groups/s of `dataset.batch`: first epoch (cold), then again (warm)."""
    steps = max(dataset.num_groups // batch_size, 1)
    rates = {}
    for name in ("cold", "warm"):
        start = time.perf_counter()
        for step in range(steps):
            dataset.batch(step, batch_size)
        rates[name] = steps * batch_size / (time.perf_counter() - start)
    return rates


def measure_pipeline(config) -> tuple:
    """The dataset on the embedded corpus and its groups/s, cold and warm."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        dataset = low_level_data.create_low_level_dataset(
            config.data, seed=0, cache_dir=cache
        )
    labels_s = time.perf_counter() - start
    rates = pipeline_rates(dataset, config.batch_size)
    print(
        f"pipeline ({dataset.num_groups} embedded photographs, full size): "
        f"FSIM labels once {labels_s:.1f} s; batches cold "
        f"{rates['cold']:.2f} groups/s, warm {rates['warm']:.1f} groups/s "
        f"(one process, one thread)"
    )
    return dataset, rates


def fed_seconds_per_step(step_fn, state, dataset, batch_sharding, batch_size, steps):
    """s/step of the step fed by the trainer's prefetching iterator (warm)."""
    batches = dataset.iterate(0, steps + 1, batch_size, prefetch=2)
    _, first = next(batches)
    state, _ = step_fn(state, sharding.global_batch(first, batch_sharding))
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _, batch in batches:
        state, _ = step_fn(state, sharding.global_batch(batch, batch_sharding))
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps, state


def measure_step(config, dataset, rates, args) -> dict:
    """Times the compiled step alone and fed; returns its cost figures."""
    mesh = sharding.make_mesh(0)
    step_fn, state, batch_sharding = make_step(config, mesh)
    groups = config.batch_size
    batch = sharding.global_batch(dataset.batch(0, groups), batch_sharding)
    start = time.perf_counter()
    compiled, step_flops = compile_step(step_fn, state, batch)
    device_flops = step_flops / jax.device_count()
    print(f"compile {time.perf_counter() - start:.0f} s")

    def one_step():
        nonlocal state
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)

    one_step()
    step_s = timed_median(one_step, args.repeats, args.steps)
    fed_s, state = fed_seconds_per_step(
        compiled, state, dataset, batch_sharding, groups, args.repeats * args.steps
    )
    images = groups * VERSIONS * 2
    print(
        f"step alone {step_s * 1e3:.1f} ms = {groups / step_s:.2f} groups/s, "
        f"{images / step_s:.1f} images/s; fed by the pipeline "
        f"{fed_s * 1e3:.1f} ms/step ({fed_s / step_s - 1:+.0%}); pipeline / "
        f"step throughput: cold {rates['cold'] * step_s / groups:.2g}x, "
        f"warm {rates['warm'] * step_s / groups:.2g}x"
    )
    params = sum(x.size for x in jax.tree.leaves(state.params))
    figures = dict(
        group_flops=step_flops / groups,
        grad_bytes=params * 4,
        bn_layers=len(jax.tree.leaves(state.batch_stats)) // 2,
    )
    achieved = device_flops / step_s / 1e12
    mfu = (
        f", {achieved / args.peak_tflops:.1%} of peak"
        if args.peak_tflops
        else ""
    )
    print(
        f"compiled step, per device: {device_flops / 1e9:.1f} GFLOP, "
        f"{achieved:.3g} TFLOP/s achieved{mfu}; {params / 1e6:.2f} M "
        f"parameters = {figures['grad_bytes'] / 1e6:.1f} MB of float32 "
        f"gradients all-reduced a step; {figures['bn_layers']} BatchNorm "
        f"layers, each all-reducing its batch statistics"
    )
    return figures


def estimate(group_flops, grad_bytes, bn_layers):
    """Rows (tpu, chips, groups a chip, images/s/chip, efficiency, step ms,
    exchange ms) for weak scaling at a fixed number of groups a chip."""
    rows = []
    for name, tpu in TPUS.items():
        bandwidth = tpu["allreduce_gb_s"] * 1e9 * ALLREDUCE_EFFICIENCY
        for groups in GROUPS_PER_CHIP:
            compute = (
                groups * group_flops / (tpu["peak_tflops"] * 1e12 * MFU[groups])
            )
            for chips in CHIPS:
                ring = 2 * (chips - 1) / chips * grad_bytes / bandwidth
                # Two views, forward and backward: 4 small all-reduces a BN
                # layer, one after the other.
                latency = 4 * bn_layers * COLLECTIVE_LATENCY_S * np.log2(chips)
                step = compute + ring + latency  # no overlap: a lower bound
                rows.append(
                    (
                        name,
                        chips,
                        groups,
                        groups * VERSIONS * 2 / step,
                        compute / step,
                        step * 1e3,
                        (ring + latency) * 1e3,
                    )
                )
    return rows


def report_estimate(figures, side, rates):
    """Weak scaling at the paper's 224 px; what a host must feed."""
    group_flops = figures["group_flops"] * (224 / side) ** 2
    print(
        f"\nestimate at 224 px ({group_flops / 1e9:.0f} GFLOP a group of "
        f"{VERSIONS * 2} images), MFU {MFU}, all-reduce at "
        f"{ALLREDUCE_EFFICIENCY:.0%} of the pod's per-chip figure, "
        f"{COLLECTIVE_LATENCY_S * 1e6:.0f} us per tree level of a small "
        f"all-reduce, no overlap"
    )
    print(
        "  tpu  chips  groups/chip  images/s/chip  efficiency  step ms  "
        "exchange ms"
    )
    rows = estimate(group_flops, figures["grad_bytes"], figures["bn_layers"])
    for name, chips, groups, rate, efficiency, step, exchange in rows:
        print(
            f"  {name:4s} {chips:5d}  {groups:11d}  {rate:13.0f}  "
            f"{efficiency:10.0%}  {step:7.2f}  {exchange:11.2f}"
        )
    for name, chips, groups, rate, *_ in rows:
        if chips != CHIPS[0]:
            continue
        per_host = TPUS[name]["chips_per_host"]
        needed = per_host * rate / (VERSIONS * 2)
        print(
            f"{name}, {groups} group(s) a chip: a host ({per_host} chips) "
            f"must supply {needed:.0f} groups/s; this pipeline gives "
            f"{rates['cold']:.1f} cold, {rates['warm']:.0f} warm "
            f"({needed / rates['cold']:.0f}x and "
            f"{needed / rates['warm']:.1f}x short)"
        )


def main():
    args = parse_args()
    if not args.accelerator:
        use_simulated_cpu_devices()
    devices = jax.device_count()
    config = paper_config(args, devices)
    side = args.grid * config.data.fragment_size
    print(
        f"jax {jax.__version__}, {devices} {jax.devices()[0].device_kind} "
        f"device(s), {len(os.sched_getaffinity(0))} host cores; step: "
        f"{config.batch_size} groups x {VERSIONS} versions x 2 views at "
        f"{side}x{side} = {config.batch_size * VERSIONS * 2} images, "
        f"ResNet-18 width {config.model.width}, {args.dtype}"
    )
    dataset, rates = measure_pipeline(config)
    figures = measure_step(config, dataset, rates, args)
    report_estimate(figures, side, rates)


if __name__ == "__main__":
    main()
