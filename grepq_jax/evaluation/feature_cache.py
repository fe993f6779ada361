"""A dataset's usable images with what a model folder made of them, computed
once and kept in a cache file (features_<dataset>.npz of `grepq evaluate`).

The cache is keyed by a hash of what the features depend on (the encoders,
the pristine statistics and the stride, the dataset's images, scores and
references), so the next run with the same model and dataset reads it,
whatever the protocol options.
"""
import dataclasses
import hashlib
import json
import pathlib
import re
import sys

import numpy as np
import tqdm

from grepq_jax.formats import output_files
from grepq_jax.formats import images
from grepq_jax.evaluation import iqa_datasets
from grepq_jax.scoring import model_folder as folder_format
from grepq_jax.scoring import quality_model as qm
from grepq_jax.scoring import zero_shot

_CACHE_VERSION = 2  # 2: references saved and keyed.
_ZERO_SHOT = ("low_level", "high_level", "combined")


class EvaluationFailure(RuntimeError):
    """The evaluation could not finish with the data given (exit status 1)."""


def reference_groups(references) -> np.ndarray | None:
    """(N,) labels to split by (str), or None when no image has a reference.

    references: (N,) str or None. An image without a reference is its own
    group, so it can never share content with another image.
    """
    if all(reference is None for reference in references):
        return None
    return np.array([f"reference:{reference}" if reference is not None else f"image:{i}"
                     for i, reference in enumerate(references)])


@dataclasses.dataclass(frozen=True)
class DatasetFeatures:
    """A dataset's usable images, their quality and what the model made of them.

    quality: (N,) scores oriented so higher is better (`oriented_quality`),
    on score_range; arrays: name -> (N,) or (N, C) float32/64,
    of "low_level_score", "high_level_score", "high_level_embedding",
    "low_level_projection", "low_level_pooled" (those the model has);
    references: (N,) each image's pristine source, or None (see
    `reference_groups`); skipped: (name, reason) of the images left out.
    """
    dataset: str
    names: tuple[str, ...]
    quality: np.ndarray
    score_range: tuple[float, float]
    arrays: dict[str, np.ndarray]
    references: tuple[str | None, ...]
    skipped: tuple[tuple[str, str], ...]

    def groups(self) -> np.ndarray | None:
        """The data-efficient protocol's split groups (None: by image)."""
        return reference_groups(self.references)

    def zero_shot_scores(self) -> dict[str, np.ndarray]:
        """Of "low_level", "high_level", "combined": those the model has."""
        scores = {name: self.arrays[f"{name}_score"] for name in _ZERO_SHOT[:2]
                  if f"{name}_score" in self.arrays}
        if len(scores) == 2:
            scores["combined"] = zero_shot.combined_score(scores["low_level"],
                                                          scores["high_level"])
        return scores

    def regression_features(self, kind: str) -> np.ndarray:
        """[high-level embedding, low-level `kind` features] -> (N, C)."""
        names = [name for name in qm.regression_feature_names(("high_level", "low_level"), kind)
                 if name in self.arrays]
        return np.concatenate([self.arrays[name] for name in names], axis=1)


def oriented_quality(dataset: iqa_datasets.IqaDataset, scores: np.ndarray) -> np.ndarray:
    """Scores turned so higher is better: low + high - score where they fall."""
    scores = np.asarray(scores, np.float64)
    if dataset.higher_is_better:
        return scores
    low, high = dataset.score_range
    return low + high - scores


def _model_files_digest(model_folder: pathlib.Path) -> str:
    """Hash of what features depend on: the encoders, statistics and stride."""
    digest = hashlib.sha256()
    description = folder_format.read_description(model_folder)
    digest.update(json.dumps(description["zero_shot"], sort_keys=True).encode())
    for name in (folder_format.LOW_LEVEL_DIR, folder_format.HIGH_LEVEL_DIR,
                 folder_format.PRISTINE_FILE):
        path = model_folder / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else (
            [path] if path.is_file() else [])
        for file in files:
            digest.update(str(file.relative_to(model_folder)).encode())
            with open(file, "rb") as stream:  # In blocks: parameters can be large.
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def cache_key(model_folder, dataset: iqa_datasets.IqaDataset) -> str:
    """Changes when the model's encoders or the dataset's images or scores do."""
    model_digest = _model_files_digest(pathlib.Path(model_folder))
    digest = hashlib.sha256(f"{_CACHE_VERSION}:{model_digest}".encode())
    digest.update(f"{dataset.higher_is_better}:{list(dataset.score_range)}\n".encode())
    for item in dataset.items:
        digest.update(f"{item.name}\0{item.path}\0{item.score!r}\0{item.reference}\n"
                      .encode())
    return digest.hexdigest()


def skip_reasons(skipped: list[tuple[str, str]], shown: int = 3) -> str:
    """Why images were skipped, in a line: the commonest reasons, each with its
    count and its first image's own words. Reasons that differ only in a
    quoted name (the file's path) count as one."""
    by_reason: dict[str, list[str]] = {}
    for _, reason in skipped:
        by_reason.setdefault(re.sub(r"'[^']*'", "'...'", reason), []).append(reason)
    common = sorted(by_reason.values(), key=len, reverse=True)
    text = "; ".join(f"{len(reasons)} x {reasons[0]}" for reasons in common[:shown])
    if len(common) > shown:
        text += f"; and {len(common) - shown} other reason(s)"
    return text or "no image was given"


def compute_features(model: qm.QualityModel, dataset: iqa_datasets.IqaDataset, *,
                     batch_size: int = 8) -> DatasetFeatures:
    """Runs the model once over every image of `dataset`, whole, at its own size.

    An image that cannot be read or is too small is skipped, with its reason.
    """
    needs = set(model.regression_needs())
    if model.low_level:
        needs.add(qm.Need.LOW_LEVEL_SCORE)

    def read(item):
        try:
            return item, images.read_image(item.path)
        except images.UnusableImageError as error:
            return item, error

    columns: dict[str, list] = {}
    kept, skipped = [], []
    analyses = model.analyse(map(read, dataset.items), needs=needs, batch_size=batch_size)
    for item, analysis in tqdm.tqdm(analyses, total=len(dataset.items), unit="image",
                                    desc=dataset.name, file=sys.stderr):
        if isinstance(analysis, Exception):
            skipped.append((item.name, str(analysis)))
            continue
        kept.append(item)
        for name, value in analysis.arrays().items():
            columns.setdefault(name, []).append(value)
    if len(kept) < 2:
        raise EvaluationFailure(f"{dataset.name}: only {len(kept)} of "
                                f"{len(dataset.items)} images could be used; "
                                f"{skip_reasons(skipped)}")
    quality = oriented_quality(dataset, [item.score for item in kept])
    return DatasetFeatures(dataset.name, tuple(item.name for item in kept), quality,
                           tuple(map(float, dataset.score_range)),
                           {name: np.stack(values) for name, values in columns.items()},
                           tuple(item.reference for item in kept), tuple(skipped))


def save_features(path: pathlib.Path, key: str, features: DatasetFeatures) -> None:
    """np.savez of `features` and its cache key (plain arrays, no pickle),
    complete or not at all."""
    arrays = {"key": np.array(key), "dataset": np.array(features.dataset),
              "names": np.array(features.names, dtype=str), "quality": features.quality,
              "score_range": np.array(features.score_range),
              "skipped": np.array(features.skipped, dtype=str).reshape(-1, 2),
              "references": np.array([r or "" for r in features.references], dtype=str),
              "has_reference": np.array([r is not None for r in features.references], bool)}
    arrays |= {f"array_{name}": value for name, value in features.arrays.items()}
    with output_files.replacing(path, "wb") as file:
        np.savez(file, **arrays)


def load_features(path: pathlib.Path, key: str) -> DatasetFeatures | None:
    """The features saved at `path` under `key`, else None (absent or stale)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        if str(saved["key"]) != key:
            return None
        return DatasetFeatures(
            str(saved["dataset"]), tuple(map(str, saved["names"])), saved["quality"],
            tuple(map(float, saved["score_range"])),
            {name[len("array_"):]: saved[name] for name in saved.files
             if name.startswith("array_")},
            tuple(str(r) if has else None
                  for r, has in zip(saved["references"], saved["has_reference"])),
            tuple((str(a), str(b)) for a, b in saved["skipped"]))


def dataset_features(model: qm.QualityModel, model_folder, dataset, cache_path, *,
                     batch_size: int) -> DatasetFeatures:
    """From the cache file when it matches the model and dataset, else computed
    and cached there."""
    cache_path = pathlib.Path(cache_path)
    key = cache_key(model_folder, dataset)
    features = load_features(cache_path, key)
    if features is not None:
        print(f"features of {dataset.name} read from {cache_path}", file=sys.stderr)
        return features
    features = compute_features(model, dataset, batch_size=batch_size)
    save_features(cache_path, key, features)
    return features
