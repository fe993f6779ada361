"""The FSIM label pass on a corpus of photographs of distinct sizes: groups/s
and programs compiled, ours against the original's way.

Corpus: N JPEG photographs (crops of the embedded sample photographs, resized
so that height and width are each drawn uniformly from [--min_side,
--max_side] px, every size distinct), written to a temporary folder.

- **ours**: `low_level.create_low_level_dataset` on that folder, end to end in
  a fresh process: every file decoded, 9 versions built (the livefb set),
  FSIMc matrices through `fsim_bucketed` (compile time included), the cache
  written. Reported: groups/s over the whole pass and the programs compiled.
- **piq** (the original's way: GRepQ's loader calls `piq.fsim` on the 36
  pairs of a group): the same versions (ours, built untimed), 36 pairs as
  torch batches of --pairs_per_call on the CPU, FSIMc. Timed on the first
  --peer_groups groups (it is far slower); groups/s = 1 / median time a group.
  Its matrices are checked against ours (1e-4).
- **per-shape jit** (what the pass did before: `fsim.fsim_matrix` jitted for
  each group's shape, compile included) on the same groups, for the record.

`--profile=N` instead times each stage of the pass for N groups of the same
corpus, one stage at a time in this process (no overlap): decoding, each
distortion, rounding to 8 bits, the host maps (pooling, YIQ, gradient), the
log-Gabor bank of the size, the host FFT filtering, the device program (at
the pass's call size, a call of copies of the group, per group; compiling
reported apart, as a first run's excess over a second) and the cache
writes; and prints each stage's share.

Run with a Python that has torch and piq (benchmark-only), the peer at its best:
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000 \\
    python benchmarks/bench_label_pass.py --images=200
  ... --quick       # smoke run: 12 images, 2 peer groups
  ... --profile=8   # stage shares over 8 groups (no torch needed)
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from grepq_jax.training.labels import distortions  # noqa: E402
from grepq_jax.training.labels import fsim  # noqa: E402
from grepq_jax.training.labels import fsim_bucketed  # noqa: E402
from grepq_jax.formats import corpus  # noqa: E402
from grepq_jax.training.labels import fsim_labels  # noqa: E402
from grepq_jax.formats import images  # noqa: E402
from grepq_jax.training.data import low_level_pipeline as low_level  # noqa: E402


def write_corpus(folder: str, count: int, low: int, high: int, seed: int = 0):
    """`count` JPEGs of distinct sizes; returns their (height, width)."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(corpus.EMBEDDED_PHOTOGRAPHS[name]()) for name in
              sorted(corpus.EMBEDDED_PHOTOGRAPHS)]
    sizes = set()
    while len(sizes) < count:
        sizes.add((int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))))
    sizes = sorted(sizes, key=lambda _: rng.random())
    for index, (height, width) in enumerate(sizes):
        photo = photos[index % len(photos)]
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=-1)
        top = int(rng.integers(0, photo.shape[0] // 4))
        left = int(rng.integers(0, photo.shape[1] // 4))
        crop = Image.fromarray(photo[top:, left:])
        crop.resize((width, height), Image.BICUBIC).save(
            os.path.join(folder, f"photo{index:04d}.jpg"), quality=95)
    return sizes


def data_config(path: str, workers: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        path=path, layout="pristine", distortions="livefb", fragment_grid=7,
        fragment_size=32, min_side=32, max_side=0, fsim_chromatic=True,
        prefetch=2, workers=workers))


def peer_seconds(versions: np.ndarray, pairs_per_call: int, device: str = "cpu"):
    """piq.fsim of the 36 pairs, as the original computes a group's labels
    (versions placed on `device` untimed; the scores read back, timed)."""
    import piq
    import torch

    rows, cols = np.triu_indices(len(versions), k=1)
    tensor = torch.from_numpy(versions.copy()).to(device).permute(0, 3, 1, 2).float() / 255
    started = time.perf_counter()
    scores = []
    with torch.no_grad():
        for first in range(0, len(rows), pairs_per_call):
            chosen = slice(first, first + pairs_per_call)
            scores.append(piq.fsim(tensor[rows[chosen]], tensor[cols[chosen]],
                                   data_range=1.0, reduction="none"))
        scores = torch.cat(scores).cpu().numpy()
    seconds = time.perf_counter() - started
    matrix = np.eye(len(versions), dtype=np.float32)
    matrix[rows, cols] = matrix[cols, rows] = scores
    return seconds, matrix


def stage_seconds(photos: str, count: int, cache_dir: str,
                  set_name: str = "livefb") -> tuple[dict[str, float], int]:
    """Seconds spent in each stage of the pass over the first `count` photos
    (stage names as printed by `profile_stages`), and the groups timed."""
    seconds = collections.defaultdict(float)

    def timed(stage, function, *args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        seconds[stage] += time.perf_counter() - started
        return result

    cache = fsim_labels.LabelCache(cache_dir, "profile", writer=True)
    names = sorted(os.listdir(photos))[:count]
    for index, name in enumerate(names):
        image = timed("decode", images.load_image, os.path.join(photos, name),
                      min_side=32, max_side=0)
        versions = timed("versions: make_versions_uint8", distortions.make_versions_uint8,
                         image, set_name, np.random.default_rng([0, 0, index]))
        rng = np.random.default_rng([0, 0, index])  # the same draws, stage by stage
        for distortion, level in distortions.distortion_set(set_name):
            timed(f"  of which {distortion}", distortions.DISTORTIONS[distortion],
                  image, level, rng)
        timed("check_images", fsim.check_images, versions, data_range=255)
        maps = timed("host maps (pool, YIQ, gradient)", fsim_bucketed.host_maps,
                     versions, data_range=255, chromatic=True)
        count_v, h, w = maps.luma.shape
        timed("log-Gabor bank of the size", fsim.log_gabor_bank, h, w)
        bucket = fsim_bucketed.bucket_size(h * w)
        size = fsim_bucketed.groups_per_call(bucket, count_v)
        call = fsim_bucketed._Call(bucket, size, count_v, True)
        timed("host FFT filtering", call.put, name, maps)
        for row in range(1, size):  # copies: the call's size, as in the pass
            call.responses[row], call.gradient[row] = call.responses[0], call.gradient[0]
            call.chroma[row], call.noise_scale[row] = call.chroma[0], call.noise_scale[0]
            call.pixels[row] = call.pixels[0]
        programs = fsim_bucketed.compiled_programs()
        started = time.perf_counter()
        matrices = np.asarray(call.run())
        elapsed = time.perf_counter() - started
        if fsim_bucketed.compiled_programs() > programs:  # run it again, compiled
            started, first = time.perf_counter(), elapsed
            matrices = np.asarray(call.run())
            elapsed = time.perf_counter() - started
            seconds["(compiling, once a bucket)"] += first - elapsed
        seconds["device program (per group)"] += elapsed / size
        timed("cache write", cache.put, name, matrices[0])
    timed("cache write", cache.save)
    return dict(seconds), len(names)


def work_seconds(seconds: dict[str, float]) -> float:
    """The stages' total: sub-stages ("  of which") and compiling left out."""
    return sum(value for stage, value in seconds.items()
               if not stage.startswith(("  ", "(")))


def profile_stages(photos: str, count: int, cache_dir: str, set_name: str = "livefb"):
    """Prints the seconds a group and the share of each stage of the pass."""
    seconds, groups = stage_seconds(photos, count, cache_dir, set_name)
    work = work_seconds(seconds)
    print(f"{groups} groups, {work / groups:.3f} s a group without compiling:")
    for stage, value in seconds.items():
        share = "" if stage.startswith("(") else f"{100 * value / work:5.1f}%"
        print(f"  {stage:36s} {value / groups:7.3f} s {share}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--min_side", type=int, default=300)
    parser.add_argument("--max_side", type=int, default=1600)
    parser.add_argument("--workers", type=int, default=0,
                        help="our data.workers (0: versions built by a thread of "
                             "the pass's process)")
    parser.add_argument("--profile", type=int, default=0,
                        help="time each stage over this many groups instead")
    parser.add_argument("--peer_groups", type=int, default=6)
    parser.add_argument("--pairs_per_call", type=int, default=12)
    parser.add_argument("--torch_threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.images, args.peer_groups = 12, 2
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()}")

    with tempfile.TemporaryDirectory() as folder:
        photos = os.path.join(folder, "photos")
        os.mkdir(photos)
        sizes = write_corpus(photos, args.images, args.min_side, args.max_side)
        print(f"corpus: {len(sizes)} photographs, {len(set(sizes))} distinct sizes, "
              f"sides {args.min_side}..{args.max_side} px")
        if args.profile:
            profile_stages(photos, args.profile, os.path.join(folder, "cache"))
            return

        before = fsim_bucketed.compiled_programs()
        started = time.perf_counter()
        dataset = low_level.create_low_level_dataset(
            data_config(photos, args.workers), seed=0,
            cache_dir=os.path.join(folder, "cache"))
        ours_seconds = time.perf_counter() - started
        programs = fsim_bucketed.compiled_programs() - before
        ours_rate = dataset.num_groups / ours_seconds
        print(f"ours: {dataset.num_groups} groups in {ours_seconds:.1f} s = "
              f"{ours_rate:.3f} groups/s end to end (versions, FSIM, cache), "
              f"{programs} programs compiled, {len(dataset.skipped)} skipped")

        import torch
        torch.set_num_threads(args.torch_threads)
        peer, before_times, worst = [], [], 0.0
        for group in range(min(args.peer_groups, dataset.num_groups)):
            versions = dataset.versions(group)
            seconds, matrix = peer_seconds(versions, args.pairs_per_call)
            peer.append(seconds)
            worst = max(worst, float(np.abs(matrix - dataset._similarities[group]).max()))
            per_shape = jax.jit(fsim.fsim_matrix)  # a fresh cache: compile included
            started = time.perf_counter()
            np.asarray(per_shape(versions[None].astype(np.float32) / 255))
            before_times.append(time.perf_counter() - started)
            print(f"  group {group} {versions.shape[1]}x{versions.shape[2]}: "
                  f"piq {seconds:.2f} s, per-shape jit {before_times[-1]:.2f} s")
        if worst > 1e-4:
            raise SystemExit(f"ours and piq differ by {worst:.2e} > 1e-4")
        peer_rate = 1 / statistics.median(peer)
        before_rate = 1 / statistics.median(before_times)
        print(f"piq ({args.pairs_per_call} pairs a call, {args.torch_threads} "
              f"threads): {peer_rate:.4f} groups/s (median of {len(peer)}), "
              f"largest difference to ours {worst:.1e}")
        print(f"per-shape jit (before): {before_rate:.4f} groups/s (median of "
              f"{len(before_times)}, compile included)")
        print(f"ours / piq = {ours_rate / peer_rate:.1f}x; ours / per-shape jit = "
              f"{ours_rate / before_rate:.1f}x; {programs} programs for "
              f"{len(set(sizes))} sizes; load average now {os.getloadavg()}")


if __name__ == "__main__":
    main()
