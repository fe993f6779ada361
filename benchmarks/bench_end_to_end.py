"""End-to-end low-level training rate in groups/s: grepq_jax against the
original approach, data + distortions + FSIM soft labels + step together.

The original (suhas-srinath/GRepQ, dataloader_contrastive.py + train_llm.py)
reads each group's pre-distorted versions from disk in a PyTorch DataLoader,
computes the V(V-1)/2 FSIM values with `piq.fsim` pair by pair, cuts two
aligned fragment samplings and flips one, every time the group is used, i.e.
every epoch; then runs the training step (`torch_peer.PeerTrainer`). Its
loader here gets the same versions ours generates, written to disk as PNG.

grepq_jax runs its own pipeline: pristine images, seeded distortions, FSIM
matrices from `grepq_jax.training.labels.fsim` computed once per group when the dataset is
built (then reused every epoch), fragments in a prefetch thread or in
`--our_workers` processes, and the trainer's jitted `train_step`. Checkpointing and logging are left out on both
sides (the original saves a checkpoint every iteration).

Both train E epochs over the same corpus (the embedded sample photographs by
default; `--copies=N` writes N copies of each as PNG files, each copy with
its own distortions, for a corpus of several batches) with the same batch of
groups. Reported: the steady rate (epochs 2..E:
the original recomputes FSIM, ours reads its matrices), and the rate over all
E epochs including our one-time FSIM pass (compile time excluded on both
sides and reported apart).

  python benchmarks/bench_end_to_end.py --epochs=3
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000 \\
    python benchmarks/bench_end_to_end.py --epochs=3    # the peer at its best
  python benchmarks/bench_end_to_end.py --quick          # smoke run
  # One GPU and a 16-core host, as in benchmarks/README.md:
  python benchmarks/bench_end_to_end.py --epochs=2 --copies=16 --workers=15 \
    --our_workers=15 --torch_device=cuda

Needs torch, torchvision and piq (benchmark-only dependencies).
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import piq  # noqa: E402
import torch  # noqa: E402

from benchmarks import torch_peer  # noqa: E402
from configs import low_level as low_level_config  # noqa: E402
from grepq_jax.training import sharding  # noqa: E402
from grepq_jax.training import trainer  # noqa: E402
from grepq_jax.formats import corpus  # noqa: E402
from grepq_jax.formats import images  # noqa: E402
from grepq_jax.training.pathways import low_level  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--groups", type=int, default=8, help="groups a step")
    parser.add_argument(
        "--copies",
        type=int,
        default=0,
        help="train on this many copies of each embedded photograph, "
        "written as PNG files (0: the embedded corpus itself); copies get "
        "their own distortions",
    )
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument(
        "--max_side",
        type=int,
        default=0,
        help="shrink larger images first (0: as they are)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="DataLoader workers of the original",
    )
    parser.add_argument(
        "--our_workers",
        type=int,
        default=0,
        help="our batch-making processes (0: one thread, -1: a core each "
        "but one)",
    )
    parser.add_argument(
        "--peer_dtype",
        default="float32",
        choices=("float32", "float64"),
        help="the original feeds piq float64 (imread / 255.); "
        "float32 is faster: the peer at its best",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 epochs, 4x16 fragments, images <= 128 px",
    )
    parser.add_argument(
        "--only_ours", action="store_true", help="time our side alone"
    )
    parser.add_argument(
        "--torch_device",
        default="cpu",
        help="where the original's step runs (cpu or cuda); "
        "its FSIM stays in the CPU loader, as in the original",
    )
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.grid, args.patch, args.max_side = 2, 4, 16, 128
        args.groups = 4
    return args


def make_config(args, path=""):
    config = low_level_config.get_config("default")
    config.data.path = path
    config.data.fragment_grid, config.data.fragment_size = args.grid, args.patch
    config.data.max_side = args.max_side
    config.batch_size, config.num_devices = args.groups, 1
    config.data.prefetch = 2
    config.data.workers = args.our_workers
    return config


# The original approach --------------------------------------------------------


def write_pristine(copies, folder):
    """`copies` PNG files of each embedded photograph."""
    os.makedirs(folder)
    for name in corpus.EMBEDDED_PHOTOGRAPHS:
        pixels = images.to_uint8(corpus.load_embedded_photograph(name))
        for copy in range(copies):
            file_name = f"{name.replace(':', '_')}_{copy:03d}.png"
            Image.fromarray(pixels).save(os.path.join(folder, file_name))
    return folder


def write_predistorted(dataset, folder):
    """Exactly the versions ours trains on, one folder of PNGs per group."""
    for index in range(dataset.num_groups):
        group = os.path.join(folder, f"group_{index:04d}")
        os.makedirs(group)
        for v, version in enumerate(dataset.versions(index)):
            Image.fromarray(version).save(os.path.join(group, f"{v:02d}.png"))
    return sorted(os.path.join(folder, g) for g in os.listdir(folder))


def spatial_fragments(video, grid, patch, generator):
    """FAST-VQA's aligned fragments as the original cuts them: (C, T, H, W)."""
    size = grid * patch
    _, _, height, width = video.shape
    ratio = min(height / size, width / size)
    if ratio < 1:
        video = torch.nn.functional.interpolate(
            video, scale_factor=1 / ratio, mode="bilinear"
        )
        height, width = video.shape[-2:]
    cell_h, cell_w = height // grid, width // grid
    out = torch.zeros(video.shape[:2] + (size, size), dtype=video.dtype)
    for i in range(grid):
        for j in range(grid):
            top = min(cell_h * i, height - patch)
            left = min(cell_w * j, width - patch)
            if cell_h > patch:
                top += int(
                    torch.randint(cell_h - patch, (1,), generator=generator)
                )
            if cell_w > patch:
                left += int(
                    torch.randint(cell_w - patch, (1,), generator=generator)
                )
            out[
                :, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch
            ] = video[:, :, top : top + patch, left : left + patch]
    return out


class OriginalGroups(torch.utils.data.Dataset):
    """__getitem__ as dataloader_contrastive.FrameLoaderLLModel does it."""

    def __init__(self, folders, grid, patch, dtype):
        self.folders, self.grid, self.patch = folders, grid, patch
        self.dtype = getattr(torch, dtype)

    def __len__(self):
        return len(self.folders)

    def __getitem__(self, index):
        folder = self.folders[index]
        files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
        images = [
            torch.from_numpy(np.asarray(Image.open(f)) / 255.0).to(self.dtype)
            for f in files
        ]
        chw = [image.permute(2, 0, 1)[None] for image in images]
        sim = np.zeros((len(files), len(files)))
        for i in range(len(files)):
            for j in range(i):
                sim[i, j] = float(piq.fsim(chw[i], chw[j], data_range=1.0))
        sim = sim + sim.T
        np.fill_diagonal(sim, 1.0)
        video = torch.stack(images).permute(3, 0, 1, 2)  # (C, T, H, W)
        generator = torch.Generator().manual_seed(index)
        anchor = spatial_fragments(video, self.grid, self.patch, generator)
        augment = spatial_fragments(video, self.grid, self.patch, generator)
        if torch.rand(1, generator=generator) < 0.5:
            augment = augment.flip(-1)
        if torch.rand(1, generator=generator) < 0.5:
            augment = augment.flip(-2)
        return (
            anchor.permute(1, 0, 2, 3).float(),
            augment.permute(1, 0, 2, 3).float(),
            torch.from_numpy(sim).float(),
        )


def run_original(args, folders):
    loader = torch.utils.data.DataLoader(
        OriginalGroups(folders, args.grid, args.patch, args.peer_dtype),
        batch_size=args.groups,
        shuffle=True,
        num_workers=args.workers,
        drop_last=False,
        persistent_workers=args.workers > 0,
        # JAX's threads run in this process: a forked worker could deadlock.
        multiprocessing_context="spawn" if args.workers else None,
    )
    peer = torch_peer.PeerTrainer(total_steps=1000)
    device = torch.device(args.torch_device)
    peer.model.to(device)  # in place: the optimizer keeps its parameters
    epoch_seconds, compile_seconds = [], None
    for epoch in range(args.epochs + 1):  # epoch 0 warms up, untimed
        start = time.perf_counter()
        for frames, augments, sim in loader:
            peer.step(frames.to(device), augments.to(device), sim.to(device))
        elapsed = time.perf_counter() - start
        if epoch == 0:
            compile_seconds = elapsed
        else:
            epoch_seconds.append(elapsed)
    return epoch_seconds, compile_seconds


# grepq_jax --------------------------------------------------------------------


def run_ours(args, workdir, path):
    config = make_config(args, path)
    start = time.perf_counter()
    pathway = low_level.build(config, workdir)  # scans and computes FSIM once
    setup_seconds = time.perf_counter() - start
    mesh = sharding.make_mesh(1)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    steps_per_epoch = -(-pathway.num_examples // args.groups)
    total = (args.epochs + 1) * steps_per_epoch
    optimizer, _ = trainer.make_optimizer(config.optim, steps_per_epoch, total)
    state = trainer.create_train_state(
        pathway.init_variables(jax.random.key(0)), optimizer, replicated
    )
    step_fn = trainer.make_step_fn(pathway.objective, optimizer, mesh)
    batches = pathway.dataset.iterate(
        0,
        total,
        args.groups,
        prefetch=config.data.prefetch,
        workers=config.data.workers,
    )
    epoch_seconds, compile_seconds = [], None
    for epoch in range(args.epochs + 1):  # epoch 0 compiles, untimed
        start = time.perf_counter()
        for _ in range(steps_per_epoch):
            _, batch = next(batches)
            state, metrics = step_fn(
                state, sharding.global_batch(batch, batch_sharding)
            )
            float(metrics["loss"])  # as the original's loss.item()
        elapsed = time.perf_counter() - start
        if epoch == 0:
            compile_seconds = elapsed
        else:
            epoch_seconds.append(elapsed)
    batches.close()
    return epoch_seconds, compile_seconds, setup_seconds, pathway.dataset


def main():
    args = parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), piq "
        f"{piq.__version__}; GLIBC_TUNABLES="
        f"{os.environ.get('GLIBC_TUNABLES', '(unset)')}"
    )
    print(
        f"{args.groups} groups a step, {args.grid}x{args.patch} fragments, "
        f"{args.epochs} timed epochs, original: {args.workers} loader "
        f"workers, piq in {args.peer_dtype}; ours: {args.our_workers} "
        "workers"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = (
            write_pristine(args.copies, os.path.join(tmp, "pristine"))
            if args.copies
            else ""
        )
        ours, ours_compile, setup, dataset = run_ours(args, tmp, path)
        groups = dataset.num_groups
        print(
            f"grepq_jax: FSIM pass once {setup:.1f} s, compile+first epoch "
            f"{ours_compile:.1f} s, epochs {[round(s, 1) for s in ours]} s"
        )
        if args.only_ours:
            print(f"steady groups/s: grepq_jax {steady_rate(groups, ours):.3f}")
            return
        folders = write_predistorted(dataset, os.path.join(tmp, "predistorted"))
        theirs, theirs_warmup = run_original(args, folders)
    print(
        f"original:  warm-up epoch {theirs_warmup:.1f} s, epochs "
        f"{[round(s, 1) for s in theirs]} s"
    )
    steady_ours, steady_theirs = steady_rate(groups, ours), steady_rate(
        groups, theirs
    )
    all_ours = groups * len(ours) / (sum(ours) + setup)
    all_theirs = groups * len(theirs) / sum(theirs)
    print(
        f"steady groups/s: grepq_jax {steady_ours:.3f}, original "
        f"{steady_theirs:.3f}, ratio {steady_ours / steady_theirs:.2f}x"
    )
    print(
        f"over {len(ours)} epochs incl. our FSIM pass: grepq_jax "
        f"{all_ours:.3f}, original {all_theirs:.3f}, ratio "
        f"{all_ours / all_theirs:.2f}x"
    )


def steady_rate(groups, epoch_seconds):
    """Groups/s after the first timed epoch (the only one if there is one)."""
    timed = epoch_seconds[1:] or epoch_seconds
    return groups * len(timed) / sum(timed)


if __name__ == "__main__":
    main()
