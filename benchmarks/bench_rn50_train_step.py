"""The RN50 high-level training step on the CPU: ours beside GRepQ's PyTorch original.

    python benchmarks/bench_rn50_train_step.py          # ~10 min on 2 cores
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000 \\
        python benchmarks/bench_rn50_train_step.py      # the peer at its best
    python benchmarks/bench_rn50_train_step.py --quick  # smoke run

Needs torch and the `clip` package (clip-anytorch) for the peer. Ours is the
trainer's own step (`trainer.make_step_fn` around the high-level pathway's
`group_contrastive_objective`, as `configs/high_level.py:paper` runs it); the
peer is train_hlm.py's iteration restated (benchmarks/torch_peer_high_level.py).
Both sides: OpenAI's RN50 image tower (38.3M parameters) with the same seeded
random weights and BatchNorm statistics, in train mode; --batch (16) random
224x224 crops; pseudo-labels against the same two random prompt embeddings;
the same Linear(1024, 128) + ReLU head, not optimised; the group-contrastive
loss on the --group_size (4) best and worst; Adam at the paper's 1e-6 after a
linear warm-up. The first step (lr 0 on both sides, as the original's
LambdaLR and our warm-up start at 0) must give the same loss: the script
stops if the two differ by more than 1e-3.

Timed, after --warmup untimed steps per side: --runs rounds in which the
sides take turns, the order rotating (bench_rn50.timed_rounds), each call a
whole step with the loss read back on the host (`float`, `.item()`). Printed:
median s/step, images/s, the ratio ours / PyTorch of the medians (> 1: we
are faster), the single runs and the load average (the machine is shared:
read the ratio, not single figures). PyTorch runs in --torch_format memory
layout.
"""
import argparse
import functools
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
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs import high_level as high_level_config  # noqa: E402
from grepq_jax.training import sharding  # noqa: E402
from grepq_jax.training import trainer  # noqa: E402
from grepq_jax.models import clip, clip_rn50, heads  # noqa: E402
from grepq_jax.formats.pytorch.clip_rn50_keys import convert_modified_resnet  # noqa: E402
from grepq_jax.training.pathways import high_level  # noqa: E402

STEPS_PER_EPOCH = 4  # with the paper's 2.5 warm-up epochs: 10 warm-up steps
WARMUP_STEPS = round(2.5 * STEPS_PER_EPOCH)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--torch_format", choices=["contiguous", "channels_last"],
                        default="channels_last")
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.runs, args.warmup = 8, 2, 1
    return args


def shared_inputs(batch: int, embed_dim: int, size: int = 224) -> dict:
    """Crops (B, 3, size, size), unit prompt embeddings (2, D), head weights (128, D), (128,)."""
    rng = np.random.RandomState(3)
    prompts = rng.normal(size=(2, embed_dim)).astype(np.float32)
    return {
        "crops": rng.normal(size=(batch, 3, size, size)).astype(np.float32),
        "prompts": prompts / np.linalg.norm(prompts, axis=1, keepdims=True),
        "head_weight": rng.normal(0, embed_dim ** -0.5, (128, embed_dim)).astype(np.float32),
        "head_bias": np.zeros(128, np.float32),
    }


def jax_side(state_dict, inputs, group_size):
    """A callable running one of our steps (loss read back), and its compile seconds."""
    arch, variables = convert_modified_resnet(state_dict, source="random")
    return jax_step(arch, variables, inputs, group_size)


def jax_step(arch, variables, inputs, group_size):
    """`jax_side` for a ModifiedResNet `arch` and its {"params", "batch_stats"}
    `variables`; `inputs` as `shared_inputs` makes them (any crop size)."""
    config = high_level_config.get_config("paper")
    head = heads.ProjectionHead(features=config.model.head_dim)
    objective = functools.partial(
        high_level.group_contrastive_objective, encoder=clip_rn50.ModifiedResNet(arch),
        head=head, prompt_embeddings=inputs["prompts"][None], group_size=group_size,
        label_temperature=config.loss.label_temperature, temperature=config.loss.temperature,
        train_head=config.model.train_head)
    mesh = sharding.make_mesh(1)
    optimizer, _ = trainer.make_optimizer(config.optim, STEPS_PER_EPOCH, 100 * STEPS_PER_EPOCH)
    head_params = {"Dense_0": {"kernel": inputs["head_weight"].T, "bias": inputs["head_bias"]}}
    state = trainer.create_train_state(
        {"params": {"encoder": variables["params"], "head": head_params},
         "batch_stats": {"encoder": variables["batch_stats"]}},
        optimizer, NamedSharding(mesh, P()))
    batch = sharding.global_batch({"image": inputs["crops"].transpose(0, 2, 3, 1)},
                               NamedSharding(mesh, P("data")))
    start = time.perf_counter()
    step = trainer.make_step_fn(objective, optimizer, mesh).lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start

    def run():
        nonlocal state
        state, metrics = step(state, batch)
        return float(metrics["loss"])
    return run, compile_seconds


def torch_side(state_dict, inputs, group_size, channels_last):
    import torch  # pylint: disable=import-outside-toplevel
    from clip import model as openai_model  # pylint: disable=import-outside-toplevel

    from benchmarks.bench_rn50 import RN50  # pylint: disable=import-outside-toplevel
    from benchmarks.torch_peer_high_level import HighLevelPeer  # pylint: disable=import-outside-toplevel

    visual = openai_model.ModifiedResNet(RN50["layers"], RN50["embed_dim"], RN50["heads"],
                                         RN50["image_size"], RN50["width"])
    visual.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    peer = HighLevelPeer(visual, torch.from_numpy(inputs["prompts"]), group_size=group_size,
                         warmup_steps=WARMUP_STEPS, channels_last=channels_last)
    peer.head[0].load_state_dict({"weight": torch.from_numpy(inputs["head_weight"]),
                                  "bias": torch.from_numpy(inputs["head_bias"])})
    crops = torch.from_numpy(inputs["crops"])
    return lambda: peer.step(crops)


def main():
    import torch  # pylint: disable=import-outside-toplevel

    from benchmarks.bench_rn50 import RN50, random_weights, timed_rounds  # pylint: disable=import-outside-toplevel

    args = parse_args()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, {args.torch_format}); usable cores "
          f"{len(os.sched_getaffinity(0))}; GLIBC_TUNABLES="
          f"{os.environ.get('GLIBC_TUNABLES', '(unset)')}; XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '(unset)')}")
    state_dict = random_weights()
    inputs = shared_inputs(args.batch, RN50["embed_dim"])
    ours, compile_seconds = jax_side(state_dict, inputs, args.group_size)
    peer = torch_side(state_dict, inputs, args.group_size, args.torch_format == "channels_last")
    first = {"ours": ours(), "pytorch": peer()}
    if abs(first["ours"] - first["pytorch"]) > 1e-3:
        sys.exit(f"the first steps' losses differ: {first}; not comparing speeds")
    sides = {"ours": ours, "pytorch": peer}
    for _ in range(args.warmup - 1):
        for run in sides.values():
            run()
    seconds = timed_rounds(sides, args.runs)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"RN50 high-level step, batch {args.batch} at 224x224, groups of {args.group_size}: "
          f"first losses {first['ours']:.6f} / {first['pytorch']:.6f}; jax compile "
          f"{compile_seconds:.1f} s; load {os.getloadavg()[0]:.1f}")
    for name, s in seconds.items():
        print(f"  {name:8s} {median[name]:.3f} s/step, {args.batch / median[name]:6.2f} images/s"
              f"  (runs: {', '.join(f'{x:.3f}' for x in s)})")
    print(f"  ratio ours/pytorch (images/s): {median['pytorch'] / median['ours']:.2f}x")


if __name__ == "__main__":
    main()
