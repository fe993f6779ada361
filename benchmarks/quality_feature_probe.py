"""Which of a trained encoder's features order unseen distortions? (issue 14)

bench_quality.py ranks model folders through the package's zero-shot score,
which uses the 128-d head projection and the two-Gaussian distance of the
original GRepQ. This probe asks whether the gap to NIQE is in that choice or
in the representation: for each low-level training export it computes, once,
several features of every 96 px patch (stride 48, as `score` cuts them) of
bench_quality's held-out versions and of the default pristine patches (the
embedded photographs, the original's selection), then ranks the versions by
each feature's distance to the pristine statistics, with bench_quality's
metric (mean Spearman with -level over (image, family) pairs).

Features: the projection (what the package scores with), the pooled 512-d
encoder output, and the spatial mean of each earlier stage's output (layers
1 to 3: 64, 128, 256 channels). Distances: "gaussian", the package's
(`zero_shot.gaussian_distance`: both covariances, ridge 1e-3), and
"diagonal", the mean difference scaled by the pooled per-channel variances
(no cross terms: 18 pristine patches cannot fill a covariance).

    python benchmarks/quality_feature_probe.py untrained=RUN0/export \
        default=runs/low_level/export

About 5 minutes per export on 2 CPU cores (the forward passes).
"""
import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench_quality  # noqa: E402
from grepq_jax.formats import encoder_export
from grepq_jax.formats import corpus  # noqa: E402
from grepq_jax.scoring import pristine, zero_shot  # noqa: E402
from grepq_jax.scoring.encoders import LowLevelEncoder  # noqa: E402
from grepq_jax.scoring.patches import cut_patches  # noqa: E402

CHUNK = 64
FEATURES = ("projection", "pooled", "layer1 mean", "layer2 mean", "layer3 mean")


def feature_fn(export: str):
    """uint8 patches (N, 96, 96, 3) -> {feature name: (N, C) float64}."""
    encoder = LowLevelEncoder.from_export(export, chunk=CHUNK)

    @jax.jit
    def forward(variables, images):
        out, state = encoder.model.apply(variables, images, train=False,
                                          capture_intermediates=True)
        stages = state["intermediates"]["encoder"]
        result = {"projection": out["projection"], "pooled": out["features"]}
        for stage in (1, 2, 3):  # each stage's last block
            activation = stages[f"layer{stage}_1"]["__call__"][0]
            result[f"layer{stage} mean"] = activation.astype(jnp.float32).mean(axis=(1, 2))
        return result

    def features(patches):
        parts = {name: [] for name in FEATURES}
        for start in range(0, len(patches), CHUNK):
            chunk = patches[start:start + CHUNK]
            padded = np.zeros((CHUNK,) + chunk.shape[1:], np.float32)
            padded[:len(chunk)] = chunk / np.float32(255)
            out = forward(encoder._variables, padded)  # pylint: disable=protected-access
            for name in FEATURES:
                parts[name].append(np.asarray(out[name], np.float64)[:len(chunk)])
        return {name: np.concatenate(value) for name, value in parts.items()}
    return features


def pristine_patches() -> np.ndarray:
    """The default export's pristine patches (uint8): embedded photographs,
    non-overlapping 96 px, the original's sharpness/colourfulness selection."""
    kept = []
    for name in corpus.EMBEDDED_PHOTOGRAPHS:
        patches = cut_patches(corpus.load_embedded_photograph(name), 96, 96)
        kept.append(patches[pristine.select_pristine_patches(patches)])
    return np.round(np.concatenate(kept) * 255).astype(np.uint8)


def diagonal_distance(mu_r, cov_r, mu_t, cov_t) -> float:
    variance = (np.diag(cov_r) + np.diag(cov_t)) / 2 + 1e-6
    return float(np.sqrt(((mu_r - mu_t) ** 2 / variance).sum()))


DISTANCES = {"gaussian": zero_shot.gaussian_distance, "diagonal": diagonal_distance}


def probe(export: str, versions: dict) -> dict:
    """{(feature, distance): {family: [ordering per image]}} for one export."""
    features = feature_fn(export)
    reference = {name: pristine.fit_gaussian(value)
                 for name, value in features(pristine_patches()).items()}
    rho = {}
    for (family, _), levels in versions.items():
        per_level = [features(cut_patches(v, 96, 48)) for v in levels]
        for name in FEATURES:
            fits = [pristine.fit_gaussian(f[name]) for f in per_level]
            for label, distance in DISTANCES.items():
                scores = [-distance(*reference[name], *fit) for fit in fits]
                rho.setdefault((name, label), {}).setdefault(family, []).append(
                    bench_quality.ordering(scores))
    return rho


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("exports", nargs="+", metavar="LABEL=EXPORT_DIR")
    parser.add_argument("--max_side", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    exports = {}
    for item in args.exports:
        label, _, export = item.partition("=")
        if not (label and (pathlib.Path(export) / encoder_export.METADATA).is_file()):
            parser.error(f"{item}: expected LABEL=EXPORT_DIR, a training run's export")
        exports[label] = export
    families = {**bench_quality.UNSEEN, **bench_quality.TRAINING}
    references = bench_quality.held_out_images(list(bench_quality.HELD_OUT), args.max_side)
    versions = {(family, name): bench_quality.make_versions(
                    image, distort, [args.seed, f_index, i_index])
                for f_index, (family, distort) in enumerate(families.items())
                for i_index, (name, image) in enumerate(references.items())}
    head = ["model", "feature", "distance", "unseen", "training", *families]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for label, export in exports.items():
        for (feature, distance), rho in probe(export, versions).items():
            mean = lambda names: np.mean([r for f in names for r in rho[f]])  # noqa: E731
            cells = [label, feature, distance, f"{mean(bench_quality.UNSEEN):.3f}",
                     f"{mean(bench_quality.TRAINING):.3f}",
                     *(f"{np.mean(rho[f]):.2f}" for f in families)]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
