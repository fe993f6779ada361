"""Does the low-level representation measure quality? Orderings on unseen data.

No human-rated IQA dataset can be downloaded here, so the paper's claim (the
low-level features, trained on a few synthetic distortions, generalise to
images and distortions never seen) is tested on synthetic data:

- Held-out photographs: real photographs that ship inside installed packages
  and are in neither the embedded training corpus nor the default pristine
  set (both are grepq_jax/formats/corpus.py's EMBEDDED_PHOTOGRAPHS); HELD_OUT
  below lists them. The right view of scikit-image's stereo motorcycle is left
  out too: its left view is in the corpus. Each is shrunk (Lanczos) to at most
  --max_side px and made RGB; that is its reference.
- Distortions: UNSEEN, 8 families that the default training set ("livefb":
  Gaussian blur, white noise, JPEG, contrast) does not contain, at 5 levels;
  and, for contrast, those 4 training families at KADID's 5 levels
  (training used levels 2 and 4). Every version is rounded to 8 bits, as a
  file would be.
- Metric: for each (image, family), the Spearman correlation between the
  scores of the reference and its 5 versions (6 points, level 0 the
  reference) and the negative level: 1 is a perfect ordering, 0 none,
  negative the wrong way round. Reported: the mean over all (image, unseen
  family) pairs, per-family means, the same on the training families, and
  the spread of the scores (are they in a narrow band?). A method that gives
  equal scores to all 6 versions counts 0.
- Rows, in one run: our low-level zero-shot score (`create_scorer(folder,
  mode="zero_shot_low")`, higher is better) for an untrained encoder (the
  default config with 0 epochs: random weights, same export path), the
  trained default (the README's job: --workdir, trained here if it has no
  export), the `:paper` settings on the embedded corpus (the CPU allows
  those: with 8 photographs they are 15 steps of 8 groups at 224 px;
  --paper_workdir or trained here; --no_paper skips it), any model folder
  given with --model=LABEL=DIR, classic NIQE (basicsr 1.4.2's niqe.py and its
  published pristine model, see niqe_peer.py; lower NIQE is better, so
  -NIQE is ranked) and the full-reference FSIMc of each version against its
  reference (a ceiling: it sees the reference).
  Each model folder is written by `python -m grepq_jax.export
  --low_level=WORKDIR/export` with its default pristine statistics.

Outputs in --out: the table (printed, and table.md), scores.csv (every
score), scatter_FAMILY.png (score against level, one panel per row, a line
per image).

One command, offline, from the repository root, in a Python with this
project's requirements plus torch and opencv (cv2) for NIQE, and the basicsr
sdist in --niqe_cache:

    pip download basicsr==1.4.2 --no-deps --no-binary :all: -d ~/.cache/basicsr
    nice -n 10 python benchmarks/bench_quality.py --niqe_cache=~/.cache/basicsr

Measured on the 2-core development machine (one other job beside it), all
of it from scratch: 18.5 minutes, of which training the three models 12
(the 0-epoch export 28 s, the README job 368 s, :paper 328 s), scoring 97 s
per model row, 23 s for NIQE and 18 s for FSIMc. --quick: 2 images, 2 families.
"""

import argparse
import csv
import io
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("USE_TORCH", "0")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from grepq_jax.formats import encoder_export
from grepq_jax.training.labels import distortions  # noqa: E402

LEVELS = tuple(range(distortions.NUM_LEVELS + 1))  # 0: the reference


def _skimage(name):
    def load():
        import skimage.data  # pylint: disable=import-outside-toplevel
        return getattr(skimage.data, name)()
    return load


def _matplotlib_sample(name):
    def load():
        import matplotlib.cbook  # pylint: disable=import-outside-toplevel
        with matplotlib.cbook.get_sample_data(name) as file:
            return np.asarray(Image.open(file).convert("RGB"))
    return load


# Real photographs shipped with installed packages, none in the training
# corpus or the default pristine set. Most are grey; those are made RGB.
HELD_OUT = {
    "matplotlib:grace_hopper": _matplotlib_sample("grace_hopper.jpg"),  # portrait
    "skimage:coins": _skimage("coins"),
    "skimage:moon": _skimage("moon"),
    "skimage:brick": _skimage("brick"),
    "skimage:grass": _skimage("grass"),
    "skimage:gravel": _skimage("gravel"),
    "skimage:hubble_deep_field": _skimage("hubble_deep_field"),  # telescope photograph
    "skimage:retina": _skimage("retina"),  # fundus photograph
}


def _webp(image, level, rng):
    """WebP (lossy, libwebp through Pillow), quality 40 down to 1."""
    quality = (40, 20, 10, 4, 1)[level - 1]
    pixels = np.round(image * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="WEBP", quality=quality, method=4)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), np.float32) / 255


# Families the default training set ("livefb") has none of. All but WebP are
# KADID-10k types from grepq_jax.training.labels.distortions (their docstrings say how).
UNSEEN = {
    "jpeg2000": distortions.jpeg2000,
    "webp": _webp,
    "motion_blur": distortions.motion_blur,
    "lens_blur": distortions.lens_blur,
    "impulse_noise": distortions.impulse_noise,
    "speckle_noise": distortions.multiplicative_noise,
    "pixelate": distortions.pixelate,
    "quantization": distortions.quantization,
}
TRAINING = {name: distortions.DISTORTIONS[name] for name in
            dict.fromkeys(name for name, _ in distortions.DISTORTION_SETS["livefb"])}


def held_out_images(names, max_side: int) -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8, shrunk to at most max_side px a side."""
    out = {}
    for name in names:
        image = Image.fromarray(np.asarray(HELD_OUT[name]())).convert("RGB")
        scale = max_side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 Image.Resampling.LANCZOS)
        out[name] = np.asarray(image)
    return out


def make_versions(reference: np.ndarray, family, seed: int) -> list[np.ndarray]:
    """The reference and its 5 distorted versions, uint8, levels 0..5."""
    image = reference.astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    return [reference] + [np.round(family(image, level, rng) * 255).astype(np.uint8)
                          for level in LEVELS[1:]]


def ordering(scores) -> float:
    """Spearman of scores (levels 0..5) against -level; 0 when all are equal."""
    scores = np.asarray(scores, np.float64)
    if np.ptp(scores) == 0:
        return 0.0
    return float(stats.spearmanr(scores, -np.asarray(LEVELS)).statistic)


# The rows ------------------------------------------------------------------------

def run_package_command(command: list[str], what: str) -> float:
    """Runs a package command (this checkout's code); returns seconds taken."""
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{what} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def trained_export(workdir: pathlib.Path, config: str, overrides=()) -> pathlib.Path:
    """WORKDIR/export, training `config` into workdir first if it has none."""
    export = workdir / "export"
    if not (pathlib.Path(export) / encoder_export.METADATA).exists():
        print(f"training {config} {' '.join(overrides)} into {workdir} ...", flush=True)
        seconds = run_package_command([sys.executable, "-m", "grepq_jax.main", f"--config={config}",
                        f"--workdir={workdir}", *overrides], f"training {config}")
        print(f"  {seconds:.0f} s", flush=True)
    return export


def model_folder(export: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The model folder of a training export (default pristine statistics)."""
    if not (out / "model.json").is_file():
        run_package_command([sys.executable, "-m", "grepq_jax.export", f"--low_level={export}",
              f"--out={out}"], f"exporting {export}")
    return out


def grepq_method(folder):
    import grepq_jax  # pylint: disable=import-outside-toplevel
    scorer = grepq_jax.create_scorer(str(folder), mode="zero_shot_low")
    return lambda version, reference: scorer.score(version.astype(np.float32) / 255)


def niqe_method(cache):
    import niqe_peer  # pylint: disable=import-outside-toplevel
    niqe = niqe_peer.load_niqe(pathlib.Path(cache).expanduser())
    return lambda version, reference: -niqe(version)


def fsim_method():
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from grepq_jax.training.labels import fsim  # pylint: disable=import-outside-toplevel

    compiled = jax.jit(fsim.fsim)  # once per image shape; eager FSIM is slow

    def score(version, reference):
        pair = [jnp.asarray(x[None], jnp.float32) / 255 for x in (version, reference)]
        return float(compiled(*pair)[0])
    return score


# Report ----------------------------------------------------------------------------

def table(rows: dict, families: dict, scores: dict) -> str:
    """Markdown: per row, mean ordering on unseen and training families, each
    unseen family's mean, and the spread of its scores."""
    unseen = [f for f in families if f in UNSEEN]
    training = [f for f in families if f in TRAINING]
    head = (["method", "unseen", "training"] + unseen
            + ["score range (min..max)", "IQR / range"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        rho = {f: [ordering(s) for s in scores[row][f].values()] for f in families}
        mean = lambda fs: np.mean([r for f in fs for r in rho[f]]) if fs else np.nan
        every = np.concatenate([np.ravel(list(s.values()))
                                for s in scores[row].values()])
        low, high = every.min(), every.max()
        q1, q3 = np.percentile(every, [25, 75])
        cells = ([row, f"{mean(unseen):.3f}", f"{mean(training):.3f}"]
                 + [f"{np.mean(rho[f]):.2f}" for f in unseen]
                 + [f"{low:.4g}..{high:.4g}", f"{(q3 - q1) / (high - low or 1):.2f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter_plots(rows, families, scores, out: pathlib.Path) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    for family in families:
        figure, axes = pyplot.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.0),
                                       squeeze=False)
        for axis, row in zip(axes[0], rows):
            for image, values in scores[row][family].items():
                axis.plot(LEVELS, values, "o-", markersize=3, linewidth=0.8,
                          label=image.split(":")[-1])
            axis.set_title(row, fontsize=9)
            axis.set_xlabel("level (0: reference)")
        axes[0][0].set_ylabel("score (higher: better)")
        axes[0][-1].legend(fontsize=6)
        figure.suptitle(f"{family}: score against level")
        figure.tight_layout()
        figure.savefig(out / f"scatter_{family}.png", dpi=90)
        pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench_quality_out",
                        help="Folder for runs, model folders, table and plots.")
    parser.add_argument("--workdir", default="runs/low_level",
                        help="The README job's workdir (trained there if it has no export).")
    parser.add_argument("--paper_workdir", default=None,
                        help="A :paper run's workdir (default: OUT/runs/paper, trained).")
    parser.add_argument("--no_paper", action="store_true", help="Leave out the :paper row.")
    parser.add_argument("--no_peers", action="store_true",
                        help="Leave out the NIQE and FSIMc rows (they do not change "
                             "with training: compare with an earlier run's table).")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=DIR",
                        help="Another model folder to rank (repeatable).")
    parser.add_argument("--niqe_cache", default="~/.cache/basicsr",
                        help="Folder holding basicsr-1.4.2.tar.gz (see niqe_peer.py).")
    parser.add_argument("--max_side", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=len(HELD_OUT),
                        help="Use the first N held-out photographs (fewer: faster).")
    parser.add_argument("--quick", action="store_true", help="2 images, 2 families.")
    args = parser.parse_args()

    extra = {}
    for item in args.model:
        label, _, folder = item.partition("=")
        if not (label and folder and (pathlib.Path(folder) / "model.json").is_file()):
            parser.error(f"--model={item}: expected LABEL=DIR, DIR a model folder")
        extra[label] = pathlib.Path(folder)
    out = pathlib.Path(args.out).absolute()
    (out / "models").mkdir(parents=True, exist_ok=True)
    folders = {
        "untrained": model_folder(trained_export(
            out / "runs" / "untrained", "configs/low_level.py", ["--untrained"]),
            out / "models" / "untrained"),
        "trained default": model_folder(trained_export(
            pathlib.Path(args.workdir).absolute(), "configs/low_level.py"),
            out / "models" / "default"),
    }
    if not args.no_paper:
        paper = pathlib.Path(args.paper_workdir or out / "runs" / "paper").absolute()
        folders[":paper"] = model_folder(
            trained_export(paper, "configs/low_level.py:paper"), out / "models" / "paper")
    folders.update(extra)

    methods = {label: grepq_method(folder) for label, folder in folders.items()}
    if not args.no_peers:
        try:
            methods["NIQE (basicsr)"] = niqe_method(args.niqe_cache)
        except (ImportError, FileNotFoundError) as error:
            print(f"NIQE row skipped: {error}", file=sys.stderr)
        methods["FSIMc (full reference)"] = fsim_method()

    names = list(HELD_OUT)[:2 if args.quick else args.images]
    families = {**UNSEEN, **TRAINING}
    if args.quick:
        families = {name: families[name] for name in ("jpeg2000", "jpeg")}
    references = held_out_images(names, args.max_side)
    scores = {row: {family: {} for family in families} for row in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for f_index, (family, distort) in enumerate(families.items()):
        for i_index, (name, reference) in enumerate(references.items()):
            versions = make_versions(reference, distort, [args.seed, f_index, i_index])
            for row, method in methods.items():
                start = time.perf_counter()
                scores[row][family][name] = [method(v, reference) for v in versions]
                seconds[row] += time.perf_counter() - start
        print(f"{family} done", flush=True)

    with open(out / "scores.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "family", "image"] + [f"level_{l}" for l in LEVELS])
        for row in methods:
            for family in families:
                for name, values in scores[row][family].items():
                    writer.writerow([row, family, name] + [repr(float(v)) for v in values])
    report = table(methods, families, scores)
    (out / "table.md").write_text(report + "\n")
    scatter_plots(list(methods), families, scores, out)
    print(f"\nSpearman of score vs -level (levels 0-5), mean over {len(references)} "
          f"held-out images; max side {args.max_side} px\n")
    print(report)
    print("\nseconds scoring per method: " + ", ".join(f"{row} {s:.0f}"
                                                     for row, s in seconds.items()))
    print(f"wrote {out}/table.md, scores.csv, scatter_*.png")


if __name__ == "__main__":
    main()
