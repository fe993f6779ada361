"""Training throughput of the high-level step on the CPU, and its FLOPs.

The step is the trainer's own `trainer.train_step` around the high-level
pathway's `group_contrastive_objective`: a CLIP image tower on a batch of
224x224 crops, in-batch pseudo-labels against two prompt embeddings, the
group-contrastive loss on the best and worst groups, Adam. The tower is a
small CLIP (`bench_scoring.SMALL_CLIP`: width 384, 6 layers, patch 32) or the
ViT-B/32 shape (`--clip=b32`), randomly initialised: speed does not depend on
the weights. Printed: median s/step and images/s after warm-up, and the
compiled step's FLOPs from XLA's cost analysis, so utilisation can be worked
out on an accelerator (FLOPs per step x steps/s / peak FLOP/s).

  python benchmarks/bench_high_level_step.py [--clip=b32] [--batch=32]
"""

import argparse
import functools
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench_scoring import B32_CLIP, SMALL_CLIP  # noqa: E402
from configs import high_level as high_level_config  # noqa: E402
from grepq_jax.training import sharding  # noqa: E402
from grepq_jax.training import trainer  # noqa: E402
from grepq_jax.models import clip, heads  # noqa: E402
from grepq_jax.training.pathways import high_level  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", choices=["small", "b32"], default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    arch = {"small": SMALL_CLIP, "b32": B32_CLIP}[args.clip]
    config = high_level_config.get_config("paper")
    encoder = clip.ClipImageEncoder(arch)
    head = heads.ProjectionHead(features=config.model.head_dim)
    size = arch.image_size
    rng = jax.random.key(0)
    params = {
        "encoder": jax.jit(encoder.init)(rng, jnp.zeros((1, size, size, 3)))[
            "params"
        ],
        "head": jax.jit(head.init)(rng, jnp.zeros((1, arch.embed_dim)))[
            "params"
        ],
    }
    prompts = jax.random.normal(rng, (1, 2, arch.embed_dim))
    prompts /= jnp.linalg.norm(prompts, axis=-1, keepdims=True)
    objective = functools.partial(
        high_level.group_contrastive_objective,
        encoder=encoder,
        head=head,
        prompt_embeddings=prompts,
        group_size=args.group_size,
        label_temperature=config.loss.label_temperature,
        temperature=config.loss.temperature,
        train_head=config.model.train_head,
    )
    mesh = sharding.make_mesh(1)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    optimizer, _ = trainer.make_optimizer(config.optim, 100, 1000)
    state = trainer.create_train_state({"params": params}, optimizer, replicated)
    step = trainer.make_step_fn(objective, optimizer, mesh)
    images = np.random.default_rng(0).normal(
        size=(args.batch, size, size, 3)).astype(np.float32)
    batch = sharding.global_batch({"image": images}, sharded)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    state, metrics = step(state, batch)  # warm-up
    float(metrics["loss"])
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        float(metrics["loss"])
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; "
          f"{args.clip} CLIP ({arch}), batch {args.batch} at {size}px, "
          f"groups of {args.group_size}")
    print(f"compile {compile_seconds:.1f} s; step median {median:.3f} s "
          f"({[round(s, 3) for s in seconds]}); "
          f"{args.batch / median:.2f} images/s")
    print(f"XLA cost analysis: {flops / 1e9:.1f} GFLOP per step, "
          f"{flops / args.batch / 1e9:.2f} GFLOP per image; achieved "
          f"{flops / median / 1e9:.1f} GFLOP/s here")


if __name__ == "__main__":
    main()
