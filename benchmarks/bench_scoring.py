"""Zero-shot scoring on the CPU: throughput of each path, and peak memory.

1. Throughput, images/s at 512x384 (each image whole, own resolution), after
   a warm-up, the median of several runs over a batch of images:
   - low-level path: ResNet-18 at full width (random weights: the cost does
     not depend on them) on the 7 x 9 = 63 patches of 96x96 at stride 48,
     through `Scorer(mode="zero_shot_low")`, chunks of 64;
   - high-level path: a small CLIP image tower (SMALL_CLIP below; --clip=b32
     for ViT-B/32's shape) through `Scorer(mode="zero_shot_high")`.
   Each beside the original's way in PyTorch, in the same process, taking
   turns: the low-level peer is torch_peer.LLModel (the paper's network) on
   all of an image's patches in one batch, the high-level peer HF
   transformers' CLIPVisionModelWithProjection (interpolated position
   embeddings), both with the same weights as ours, so the scores must agree
   (printed). Ratio > 1: we are faster.
2. Peak memory (peak RSS, VmHWM, of a fresh `python -m grepq_jax.score`
   process, zero_shot mode, both paths) over folders of 100 and
   500 generated images (--memory_size, default 256x192, half of them
   portrait): flat memory means the two peaks are close.

3. Peak memory on huge images (--huge_counts, e.g. 1,2,8): folders of 1, 2
   and 8 copies of one --huge_size JPEG (default 8000x6000, an upscaled
   photograph with noise), scored by `python -m grepq_jax.score` with a
   low-level-only model folder and with a zero-shot one (both encoders):
   memory must not grow with the number of files. The zero-shot folder's
   CLIP is HUGE_CLIP (64 px patches, one head): a ViT attends over all of an
   image's patches at once, so its memory grows with the square of the
   pixel count (ViT-B/32 on 8000x6000: 46,750 tokens, 12 x 46,750^2 x 4 B =
   105 GB of attention weights per layer), which no CPU run can hold.
   --huge_low_width sets the ResNet-18's width (64: the paper's; smaller
   runs faster, its patch chunks are small next to the images either way).
   Measured (2 shared CPU cores, width 16; 1 / 2 / 8 files): low-level only
   824 / 990 / 993 MiB, zero_shot 2785 / 2900 / 3009 MiB (before the
   bounded reading: 1786 / 2791 and 3189 / 6846 MiB for 1 / 2 files). The
   last 4% of creep is glibc's sliding mmap threshold, not held images:
   with MALLOC_MMAP_THRESHOLD_=1048576 the zero_shot peak after 1 / 2 / 8
   files of one run is 2780 / 2804 / 2805 MiB.

  JAX_PLATFORMS=cpu python benchmarks/bench_scoring.py            # ~10 min on 2 cores
  JAX_PLATFORMS=cpu python benchmarks/bench_scoring.py --runs=0 --memory_counts= \
      --huge_counts=1,2,8 --huge_low_width=16                   # huge images only
  JAX_PLATFORMS=cpu python benchmarks/bench_scoring.py --quick    # smoke run
Needs torch and torchvision for the peers (benchmark-only dependencies);
without them the peers are skipped.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from grepq_jax.formats import encoder_export
from grepq_jax.scoring import api
from grepq_jax.scoring import packing
from grepq_jax.scoring import zero_shot  # noqa: E402
from grepq_jax.models import clip  # noqa: E402
from grepq_jax.training.pathways import low_level as low_level_pathway  # noqa: E402

HEIGHT, WIDTH = 384, 512
LOW_LEVEL_MODEL = {
    "encoder": "resnet18",
    "width": 64,
    "head_dim": 128,
    "dtype": "float32",
}
SMALL_CLIP = clip.ClipVisionArch(
    image_size=224,
    patch_size=32,
    width=384,
    layers=6,
    heads=6,
    mlp_dim=1536,
    embed_dim=512,
)
# For the huge images only: few tokens (64 px patches) and one head, so a
# 48-megapixel image's attention fits in memory (11,625 tokens: 0.5 GB).
HUGE_CLIP = clip.ClipVisionArch(
    image_size=224,
    patch_size=64,
    width=64,
    layers=2,
    heads=1,
    mlp_dim=128,
    embed_dim=64,
)
B32_CLIP = clip.ClipVisionArch(
    image_size=224,
    patch_size=32,
    width=768,
    layers=12,
    heads=12,
    mlp_dim=3072,
    embed_dim=512,
)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: few images"
    )
    parser.add_argument("--clip", choices=["small", "b32"], default="small")
    parser.add_argument(
        "--images", type=int, default=8, help="images per timed run"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--memory_size", default="256x192", help="WxH of the folder images"
    )
    parser.add_argument("--memory_counts", default="100,500",
                        help="folder sizes for the memory runs; empty: none")
    parser.add_argument("--huge_counts", default="",
                        help="copies of one huge JPEG per run, e.g. 1,2,8; empty: none")
    parser.add_argument("--huge_size", default="8000x6000", help="WxH of the huge JPEG")
    parser.add_argument("--huge_low_width", type=int, default=64,
                        help="ResNet-18 width of the huge-image model folders")
    return parser.parse_args()


# Models ------------------------------------------------------------------------


def torch_low_level():
    import torch  # pylint: disable=import-outside-toplevel
    from benchmarks import torch_peer  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    model = torch_peer.LLModel().eval()
    with (
        torch.no_grad()
    ):  # Non-trivial BatchNorm statistics, as after training.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def write_low_level_export(directory, torch_model=None, model_config=None):
    if torch_model is not None:
        from grepq_jax.formats.pytorch import resnet_weights  # pylint: disable=import-outside-toplevel

        tree = resnet_weights.convert_grepq_low_level(
            {k: v.numpy() for k, v in torch_model.state_dict().items()}
        )
    else:
        model_config = model_config or LOW_LEVEL_MODEL
        model = low_level_pathway.make_model(
            ml_collections.ConfigDict(model_config)
        )
        tree = jax.jit(model.init, static_argnames="train")(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    encoder_export.write(
        str(directory),
        dict(tree),
        {"pathway": "low_level", "model": model_config or LOW_LEVEL_MODEL, "step": 0},
    )


def write_high_level_export(directory, arch):
    encoder = clip.ClipImageEncoder(arch)
    params = jax.jit(encoder.init)(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3))
    )["params"]
    prompts = np.random.default_rng(0).standard_normal((1, 2, arch.embed_dim))
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    encoder_export.write(
        str(directory),
        {"encoder": params, "prompt_embeddings": prompts.astype(np.float32)},
        {
            "pathway": "high_level",
            "arch": dataclasses.asdict(arch),
            "mean": list(clip.OPENAI_MEAN),
            "std": list(clip.OPENAI_STD),
            "prompts": [["a good photo.", "a bad photo."]],
            "dtype": "float32",
            "step": 0,
        },
    )


def torch_high_level(arch, model_folder):
    """HF's PyTorch vision tower + projection, with our exported weights."""
    from transformers import (
        CLIPVisionModelWithProjection,
    )  # pylint: disable=import-outside-toplevel
    from transformers.modeling_flax_pytorch_utils import (  # pylint: disable=import-outside-toplevel
        load_flax_weights_in_pytorch_model,
    )

    tree, _ = encoder_export.read(str(model_folder / "high_level"))
    model = CLIPVisionModelWithProjection(arch.hf_config()).eval()
    return load_flax_weights_in_pytorch_model(model, tree["encoder"])


# Throughput --------------------------------------------------------------------


def photographs(count, height, width):
    """(count, H, W, 3) float32 in [0, 1]: crops of real photographs, all different."""
    from grepq_jax.formats import corpus  # pylint: disable=import-outside-toplevel

    names = list(corpus.EMBEDDED_PHOTOGRAPHS)
    out = []
    for i in range(count):
        image = corpus.load_embedded_photograph(names[i % len(names)])
        image = (
            np.asarray(
                Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(
                    (width + 8 * i, height + 6 * i)
                ),
                np.float32,
            )
            / 255
        )
        out.append(image[3 * i : 3 * i + height, 4 * i : 4 * i + width])
    return np.stack(out)


def timed(fn, runs):
    fn()  # warm-up: compiles
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def low_level_peer(torch_model, stats):
    import torch  # pylint: disable=import-outside-toplevel

    def features(
        patches,
    ):  # All of an image's patches at once, as the original.
        with torch.no_grad():
            return torch_model(
                torch.from_numpy(patches).permute(0, 3, 1, 2)
            ).numpy()

    return lambda image: zero_shot.image_low_level_score(
        image, features, stats, chunk=10**6
    )


def high_level_peer(torch_model, prompts, mean, std):
    import torch  # pylint: disable=import-outside-toplevel

    def scores(images):
        pixels = torch.from_numpy((images - mean) / std).permute(0, 3, 1, 2)
        with torch.no_grad():
            emb = torch_model(
                pixels.float(), interpolate_pos_encoding=True
            ).image_embeds
        return zero_shot.high_level_score(emb.numpy(), prompts)

    return scores


def throughput(args, model_folder, torch_models):
    images = photographs(args.images, HEIGHT, WIDTH)
    print(
        f"throughput: {len(images)} images of {WIDTH}x{HEIGHT}, median of {args.runs} "
        f"runs after a warm-up; jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    low = api.create_scorer(model_folder, "zero_shot_low")
    high = api.create_scorer(model_folder, "zero_shot_high")
    ours = {
        "low": lambda: [r.score for r in low.score_many(images)],
        "high": lambda: [r.score for r in high.score_many(images)],
    }
    peers = {}
    if torch_models:
        low_peer = low_level_peer(torch_models["low"], low.model.pristine_stats)
        meta = high.model.high_level.metadata
        high_peer = high_level_peer(
            torch_models["high"],
            high.model.high_level.prompt_embeddings,
            np.float32(meta["mean"]),
            np.float32(meta["std"]),
        )
        peers = {
            "low": lambda: [low_peer(image) for image in images],
            "high": lambda: list(high_peer(images)),
        }
    for path, what in (
        ("low", "low-level (ResNet-18, 63 patches)"),
        ("high", f"high-level ({args.clip} CLIP)"),
    ):
        seconds = timed(ours[path], args.runs)
        line = f"  {what}: {len(images) / seconds:.2f} images/s"
        if path in peers:
            peer_seconds = timed(peers[path], args.runs)
            diff = np.max(
                np.abs(np.array(ours[path]()) - np.array(peers[path]()))
            )
            line += (
                f"; PyTorch peer {len(images) / peer_seconds:.2f} images/s; ratio "
                f"{peer_seconds / seconds:.2f}; max |score difference| {diff:.1e}"
            )
        print(line, flush=True)


# Peak memory -------------------------------------------------------------------


def write_folder(folder, count, width, height):
    rng = np.random.default_rng(0)
    base = np.round(photographs(1, height, width)[0] * 255).astype(np.uint8)
    for i in range(count):
        pixels = np.clip(
            base.astype(np.int16) + rng.integers(-20, 21, base.shape), 0, 255
        )
        image = Image.fromarray(pixels.astype(np.uint8))
        (image.transpose(Image.Transpose.ROTATE_90) if i % 2 else image).save(
            folder / f"{i:04d}.jpg", quality=90
        )


# Runs the command in a fresh interpreter, exactly as `python -m grepq_jax.score`
# does, then prints its exit code and peak resident memory (VmHWM, which starts
# afresh at exec; getrusage's ru_maxrss would not do: Linux carries it across
# fork and exec, so the child would report at least this process's size).
_CHILD = """
import json, re, runpy, sys, time
start = time.perf_counter()
try:
    runpy.run_module("grepq_jax.score", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
status = open("/proc/self/status").read()
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_mib": int(re.search(r"VmHWM:\\s+(\\d+)", status)[1]) / 1024}))
"""


def peak_memory(args, model_folder, scratch):
    width, height = map(int, args.memory_size.split("x"))
    print(
        f"peak memory (peak RSS of `python -m grepq_jax.score`, zero_shot, batch 8) over "
        f"{width}x{height} JPEGs (half portrait), ResNet-18 + {args.clip} CLIP:"
    )
    for count in map(int, args.memory_counts.split(",")):
        folder = scratch / f"folder_{count}"
        folder.mkdir()
        write_folder(folder, count, width, height)
        result = _run_score([f"--model={model_folder}", "--output=/dev/null", str(folder)])
        print(
            f"  {count} images: peak {result['peak_mib']:.0f} MiB, "
            f"{count / result['seconds']:.2f} images/s (start, decoding and compiling "
            "included), "
            f"exit code {result['code']}",
            flush=True,
        )


def _run_score(argv):
    """Exit code, seconds and peak RSS (MiB) of a fresh `python -m grepq_jax.score`."""
    out = subprocess.run([sys.executable, "-c", _CHILD, *argv], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_huge_jpeg(path, width, height):
    """An upscaled photograph with noise (a realistic JPEG size), written once."""
    base = np.round(photographs(1, 384, 512)[0] * 255).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC))
    noise = np.random.default_rng(0).integers(-8, 9, pixels.shape, np.int16)
    pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def huge_memory(args, scratch):
    width, height = map(int, args.huge_size.split("x"))
    source = scratch / "huge.jpg"
    write_huge_jpeg(source, width, height)
    low_config = dict(LOW_LEVEL_MODEL, width=args.huge_low_width)
    write_low_level_export(scratch / "huge_low", model_config=low_config)
    write_high_level_export(scratch / "huge_high", HUGE_CLIP)
    folders = {"low-level only": scratch / "huge_model_low",
               "zero_shot (both)": scratch / "huge_model_both"}
    packing.export_model(folders["low-level only"], low_level=str(scratch / "huge_low"))
    packing.export_model(folders["zero_shot (both)"], low_level=str(scratch / "huge_low"),
                        high_level=str(scratch / "huge_high"))
    print(f"peak memory on huge images: copies of one {width}x{height} JPEG "
          f"({source.stat().st_size / 2**20:.1f} MiB), `python -m grepq_jax.score` with "
          f"its defaults; ResNet-18 width {args.huge_low_width}, HUGE_CLIP:")
    for count in map(int, args.huge_counts.split(",")):
        folder = scratch / f"huge_{count}"
        folder.mkdir()
        for i in range(count):
            os.link(source, folder / f"{i:02d}.jpg")  # Same bytes, no disk cost.
        for what, model_folder in folders.items():
            result = _run_score([f"--model={model_folder}", "--output=/dev/null",
                                 str(folder)])
            print(f"  {what}, {count} file(s): peak {result['peak_mib']:.0f} MiB, "
                  f"{result['seconds']:.0f} s, exit code {result['code']}", flush=True)


def main():
    args = parse_args()
    if args.quick:
        args.images, args.runs, args.memory_counts = 2, 2, "10,20"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        if args.runs or args.memory_counts:
            standard_runs(args, scratch)
        if args.huge_counts:
            huge_memory(args, scratch)


def standard_runs(args, scratch):
    """Throughput and peak memory on a folder, with the --clip model."""
    arch = {"small": SMALL_CLIP, "b32": B32_CLIP}[args.clip]
    print(f"{args.clip} CLIP: {arch}")
    try:
        torch_low = torch_low_level()
    except ImportError:
        torch_low = None
        print("torch not installed: no peers")
    write_low_level_export(scratch / "low", torch_low)
    write_high_level_export(scratch / "high", arch)
    model_folder = scratch / "model"
    packing.export_model(
        model_folder,
        low_level=str(scratch / "low"),
        high_level=str(scratch / "high"),
    )
    torch_models = torch_low and {
        "low": torch_low,
        "high": torch_high_level(arch, model_folder),
    }
    if args.runs:
        throughput(args, model_folder, torch_models)
    if args.memory_counts:
        peak_memory(args, model_folder, scratch)


if __name__ == "__main__":
    main()
