"""The judge of bench_learning_parity.py: held-out orderings of a model folder.

The held-out photographs, families and metric are bench_quality.py's
(HELD_OUT, UNSEEN, TRAINING, `ordering`). The zero-shot low-level score of a
version is the model folder's (`grepq_jax.scoring.zero_shot`: 96 px patches
at stride 48, the Gaussian of their head projections against the pristine
Gaussian), computed in two halves so that the held-out features are taken
once per encoder and any pristine statistics can be tried on them: the
versions' Gaussians (`version_gaussians`) and the distance to a pristine set
(`orderings`). `check_against_scorer` shows the halves give the scorer's score.
"""
import pathlib

import numpy as np

import bench_quality
from grepq_jax import create_scorer
from grepq_jax.scoring import encoders, model_folder, patches, pristine, zero_shot

PATCH, STRIDE, CHUNK = 96, 48, 64  # the model folders' zero_shot settings


def heldout_versions(num_images: int, family_names, max_side: int, seed: int = 0) -> dict:
    """{(family, image): [6 uint8 versions, level 0 the reference]}, seeded as
    bench_quality.py seeds them."""
    families = {**bench_quality.UNSEEN, **bench_quality.TRAINING}
    references = bench_quality.held_out_images(list(bench_quality.HELD_OUT)[:num_images],
                                               max_side)
    out = {}
    for f_index, family in enumerate(families):
        if family not in family_names:
            continue
        for i_index, (name, reference) in enumerate(references.items()):
            out[family, name] = bench_quality.make_versions(
                reference, families[family], [seed, f_index, i_index])
    return out


def load_folder(folder) -> tuple[encoders.LowLevelEncoder, pristine.PristineStatistics]:
    """A model folder's low-level encoder and its own pristine statistics."""
    folder = pathlib.Path(folder)
    description = model_folder.read_description(folder)
    encoder = encoders.LowLevelEncoder.from_export(folder / model_folder.LOW_LEVEL_DIR,
                                                   chunk=CHUNK)
    return encoder, model_folder.read_pristine_statistics(folder, encoder, description)


def version_gaussians(encoder, versions: dict) -> dict:
    """{key: [(mu, cov) of each version's patch projections]}; every patch of
    every version goes through the encoder in full chunks."""
    cut = {key: [patches.cut_patches(v, PATCH, STRIDE) for v in values]
           for key, values in versions.items()}
    every = np.concatenate([p for values in cut.values() for p in values])
    features = pristine.features_in_chunks(
        (every[i:i + CHUNK] for i in range(0, len(every), CHUNK)), encoder.patch_features)
    out, start = {}, 0
    for key, values in cut.items():
        out[key] = []
        for p in values:
            out[key].append(pristine.fit_gaussian(features[start:start + len(p)]))
            start += len(p)
    return out


def orderings(gaussians: dict, stats: pristine.PristineStatistics) -> dict:
    """{family: {image: Spearman of the 6 scores against -level}}."""
    out = {}
    for (family, image), values in gaussians.items():
        scores = [zero_shot.low_level_score(zero_shot.gaussian_distance(
            stats.mu, stats.cov, mu, cov, 1e-3)) for mu, cov in values]
        out.setdefault(family, {})[image] = bench_quality.ordering(scores)
    return out


def summary(rho: dict) -> dict:
    """Means over (image, family) pairs: all, unseen, training families; per family."""
    def mean(families):
        values = [r for f in families for r in rho[f].values()]
        return float(np.mean(values)) if values else float("nan")
    unseen = [f for f in rho if f in bench_quality.UNSEEN]
    training = [f for f in rho if f in bench_quality.TRAINING]
    return {"heldout_mean": mean(rho), "unseen_mean": mean(unseen),
            "training_mean": mean(training),
            "per_family": {f: mean([f]) for f in rho}}


def statistics_of(images, encoder) -> pristine.PristineStatistics:
    """Pristine statistics of (H, W, 3) images, as `grepq export --pristine` selects them."""
    return pristine.pristine_statistics(images, encoder.patch_features, patch_size=PATCH,
                                        chunk=CHUNK)


def check_against_scorer(folder, encoder, stats, version: np.ndarray) -> float:
    """|this module's score - create_scorer(folder)'s| for one uint8 version."""
    scorer = create_scorer(str(folder), mode="zero_shot_low")
    mu, cov = version_gaussians(encoder, {"one": [version]})["one"][0]
    ours = zero_shot.low_level_score(zero_shot.gaussian_distance(stats.mu, stats.cov,
                                                                  mu, cov, 1e-3))
    return abs(float(ours) - float(scorer.score(version.astype(np.float32) / 255)))
