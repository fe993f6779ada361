"""FSIMc similarity matrix of 9 versions of a 512x512 photo: ours vs piq.

The quality-aware loss needs, per group of versions, the FSIM of every pair.
The paper's code calls `piq.fsim` pair by pair; `fsim_matrix` computes each
image's features once. Both run on the CPU in the same process, values are
compared, and the ratio of the medians is printed.

  JAX_PLATFORMS=cpu python benchmarks/bench_fsim.py

glibc returns large freed blocks to the OS, so every call pays fresh page
faults for its temporaries; to see each side at its best, also run
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000 \
    JAX_PLATFORMS=cpu python benchmarks/bench_fsim.py
Needs torch and piq (benchmark-only dependencies).
"""

import io
import itertools
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import piq  # noqa: E402
import scipy.ndimage  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from grepq_jax.training.labels.fsim import fsim_matrix  # noqa: E402

JAX_RUNS, PIQ_RUNS = 7, 3


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def nine_versions() -> np.ndarray:
    """(9, 512, 512, 3) uint8: astronaut and 4 distortions at 2 levels each."""
    image = skimage.data.astronaut()
    rng = np.random.default_rng(0)
    as_bytes = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8)
    versions = [image]
    for sigma in (1.0, 3.0):
        versions.append(
            as_bytes(
                scipy.ndimage.gaussian_filter(
                    image.astype(float), (sigma, sigma, 0)
                )
            )
        )
    for sigma in (8.0, 25.0):
        versions.append(as_bytes(image + rng.normal(0, sigma, image.shape)))
    versions += [jpeg(image, quality) for quality in (30, 10)]
    for contrast in (0.7, 0.4):
        versions.append(as_bytes((image - 127.5) * contrast + 127.5))
    return np.stack(versions)


def seconds(run, repeats: int):
    """(median, min) wall-clock seconds of `repeats` calls of `run`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def piq_matrix(versions: np.ndarray) -> np.ndarray:
    """The paper's way: one piq.fsim call per pair of versions."""
    images = torch.from_numpy(versions).permute(0, 3, 1, 2).float() / 255
    count = len(versions)
    matrix = np.eye(count)
    with torch.no_grad():
        for i, j in itertools.combinations(range(count), 2):
            value = piq.fsim(
                images[i : i + 1],
                images[j : j + 1],
                data_range=1.0,
                chromatic=True,
                reduction="none",
            ).item()
            matrix[i, j] = matrix[j, i] = value
    return matrix


def main():
    versions = nine_versions()
    ours_input = jax.device_put(versions[None].astype(np.float32) / 255)
    compiled = jax.jit(fsim_matrix)
    ours = np.asarray(compiled(ours_input))[0]  # warm-up: compiles
    ours_s = seconds(lambda: compiled(ours_input).block_until_ready(), JAX_RUNS)

    # piq at its best: torch's default thread count collapses when the cores
    # are shared with other work, so one thread is timed as well.
    default_threads = torch.get_num_threads()
    piq_s = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        reference = piq_matrix(versions)  # warm-up
        piq_s[threads] = seconds(lambda: piq_matrix(versions), PIQ_RUNS)
    torch.set_num_threads(default_threads)
    best_threads = min(piq_s, key=lambda t: piq_s[t][0])

    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs visible, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}"
    )
    print(
        "36-pair FSIMc matrix of 9 versions of a 512x512 RGB photo, "
        "seconds per matrix (median, min):"
    )
    print(
        f"  grepq_jax fsim_matrix, jit:  {ours_s[0]:.4f}  {ours_s[1]:.4f}"
        f"  ({JAX_RUNS} runs)"
    )
    for threads, (median, fastest) in piq_s.items():
        print(
            f"  piq.fsim pair by pair, {threads} torch thread(s): {median:.4f}"
            f"  {fastest:.4f}  ({PIQ_RUNS} runs)"
        )
    best = piq_s[best_threads]
    print(
        f"  speed-up over piq at its best: {best[0] / ours_s[0]:.1f}x "
        f"(medians), {best[1] / ours_s[1]:.1f}x (mins)"
    )
    print(
        f"  max |ours - piq| over the 36 pairs: "
        f"{np.max(np.abs(ours - reference)):.2e}"
    )


if __name__ == "__main__":
    main()
