"""Evaluates a model folder on an IQA dataset: zero-shot and data-efficient.

    python -m grepq_jax.evaluate --model=models/grepq --dataset=koniq10k \
        --root=/data/koniq10k --out=results/koniq --num_train=25,50,100,200

Writes into --out (and nowhere else, unless --fit_regressor_into_model):
  features_<dataset>.npz  every image's zero-shot scores and features (both
                          low-level kinds), computed once (whole image, own
                          resolution) and reused by the next run with the
                          same model and dataset (keyed by a hash of both),
                          whatever the protocol options
  results.csv, results.md SROCC / PLCC: median, interquartile range and std
                          over the splits (zero-shot: the whole dataset);
                          results.md also states the split protocol, the
                          features, the mapping and any image skipped
  srocc_vs_labels.png     median SROCC (bars: quartiles) against the number
                          of labelled images, zero-shot SROCC as lines
  predicted_vs_true.png   test predictions against the true scores, for the
                          split whose SROCC is the median (of an even count
                          of splits: the lower middle one) at the largest
                          number of labelled images; its title says which
  skipped.csv             images that could not be used, and why (if any;
                          their count and this file are also printed)

Scores are oriented so higher is better: a dataset whose scores fall with
quality (LIVE's or CSIQ's DMOS) is read as low + high - score on its
nominal range. The data-efficient protocol fits a ridge (alpha from
{0.1, 1, 10, 100} by 5-fold CV inside the training images) on n labelled
images and tests it, over --splits seeded splits:
- authentic-distortion datasets (no image has a reference: KonIQ-10k,
  CLIVE, FLIVE, SPAQ, AGIQA-3K, a CSV without a reference column) are split
  by image: n images drawn at random, all the others tested;
- synthetic-distortion datasets (LIVE, CSIQ, TID2013, KADID-10k, a CSV
  with a reference column) are split by reference, so that no content is
  both trained on and tested: round(0.2 R) (at least 1) of the R references
  are drawn and all their images are the test set; the n labelled images
  are drawn from the images of the other references (the rest of those are
  unused). An image without a reference counts as its own.
The table's "split by" column says which; "n test" is then the median
test-set size over the splits.
Features: the high-level embedding joined with the low-level 128-d head
output (--features=projection, the paper's code) or the 512-d pooled
encoder features (--features=pooled), of the encoders the model has. PLCC
is computed after the mapping named by --mapping (poly3: the paper's code;
logistic4: the VQEG four-parameter logistic); results.md says which.

Exit status: 0 done; 2 a usage or input error (bad flag, dataset layout,
model folder, too many labelled images), in one line; 1 a failure while
running (too few usable images, a write that fails, anything unexpected),
in one line, its traceback kept in --out/traceback.txt.
"""
import os

if __name__ == "__main__":  # No PyTorch needed: see grepq_jax/cli.py.
    os.environ.setdefault("USE_TORCH", "0")

import csv
import dataclasses
import hashlib
import json
import pathlib
import sys
import traceback

from absl import flags
from absl import logging
import numpy as np
import tqdm

from grepq_jax import cli
from grepq_jax.evaluation import correlation
from grepq_jax.evaluation import regression
from grepq_jax.scoring import quality_model as qm
from grepq_jax.scoring import zero_shot
from grepq_jax.scoring.model_folder import write_regressor
from grepq_jax.data import images
from grepq_jax.evaluation import iqa_datasets

_CACHE_VERSION = 2  # 2: references saved and keyed.
_ZERO_SHOT = ("low_level", "high_level", "combined")
_MAX_LISTED_SKIPS = 20


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

    quality: (N,) scores oriented so higher is better (see the module
    docstring), on score_range; arrays: name -> (N,) or (N, C) float32/64,
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
    description = qm.read_description(model_folder)
    digest.update(json.dumps(description["zero_shot"], sort_keys=True).encode())
    for name in (qm.LOW_LEVEL_DIR, qm.HIGH_LEVEL_DIR, qm.PRISTINE_FILE):
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
                                f"{len(dataset.items)} images could be used")
    quality = oriented_quality(dataset, [item.score for item in kept])
    return DatasetFeatures(dataset.name, tuple(item.name for item in kept), quality,
                           tuple(map(float, dataset.score_range)),
                           {name: np.stack(values) for name, values in columns.items()},
                           tuple(item.reference for item in kept), tuple(skipped))


def save_features(path: pathlib.Path, key: str, features: DatasetFeatures) -> None:
    """np.savez of `features` and its cache key (plain arrays, no pickle)."""
    skipped = np.array(features.skipped, dtype=str).reshape(-1, 2)
    has_reference = np.array([r is not None for r in features.references], bool)
    np.savez(path, key=np.array(key), dataset=np.array(features.dataset),
             names=np.array(features.names, dtype=str), quality=features.quality,
             score_range=np.array(features.score_range), skipped=skipped,
             references=np.array([r or "" for r in features.references], dtype=str),
             has_reference=has_reference,
             **{f"array_{name}": value for name, value in features.arrays.items()})


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


# Protocols -------------------------------------------------------------------

def _row(protocol, method, train, test, num_train, num_test, srocc, plcc, mapping,
         split_by="-"):
    """One table row; srocc/plcc: (S,) values over S splits."""
    row = {"protocol": protocol, "method": method, "train_dataset": train,
           "test_dataset": test, "num_train": num_train, "num_test": num_test,
           "splits": len(srocc), "split_by": split_by, "mapping": mapping}
    for name, values in (("srocc", srocc), ("plcc", plcc)):
        low, high = np.percentile(values, [25, 75])
        row |= {f"{name}_median": float(np.median(values)),
                f"{name}_iqr": float(high - low), f"{name}_std": float(np.std(values))}
    return row


def zero_shot_rows(features: DatasetFeatures, mapping: str) -> list[dict]:
    """SROCC and PLCC of each zero-shot score over the whole dataset."""
    return [_row("zero_shot", name, "-", features.dataset, 0, len(features.quality),
                 [correlation.srocc(scores, features.quality)],
                 [correlation.plcc(scores, features.quality, mapping)], mapping)
            for name, scores in features.zero_shot_scores().items()]


def regressor_name(parts, kind: str) -> str:
    """"ridge[high + low:projection]" for parts ["high_level", "low_level"]."""
    names = [{"high_level": "high", "low_level": f"low:{kind}"}[p] for p in parts]
    return f"ridge[{' + '.join(names)}]"


def feature_description(parts, kind: str) -> str:
    """The regressor's features in words, only those of `parts`."""
    names = {"high_level": "the high-level embedding",
             "low_level": f"the low-level `{kind}` features"}
    return " + ".join(names[part] for part in parts)


def data_efficient(features: DatasetFeatures, kind: str, *, num_train, splits: int,
                   mapping: str, seed: int) -> dict[int, regression.SplitResults]:
    """regression.data_efficient_protocol, split by reference where there are."""
    return regression.data_efficient_protocol(
        features.regression_features(kind), features.quality, num_train=num_train,
        num_splits=splits, seed=seed, mapping=mapping, groups=features.groups())


def data_efficient_rows(results: dict[int, regression.SplitResults], features, method,
                        mapping) -> list[dict]:
    """num_test: the median over the splits, rounded down (sizes differ only
    when split by reference)."""
    return [_row("data_efficient", method, features.dataset, features.dataset, n,
                 int(np.median(result.num_test)), result.srocc, result.plcc, mapping,
                 result.split_by)
            for n, result in results.items()]


def cross_dataset_row(train: DatasetFeatures, test: DatasetFeatures, kind: str, method,
                      *, mapping: str, seed: int) -> dict:
    """Ridge fitted on all of `train`, tested on all of `test`."""
    out = regression.cross_dataset(train.regression_features(kind), train.quality,
                                   test.regression_features(kind), test.quality,
                                   seed=seed, mapping=mapping)
    return _row("cross_dataset", method, train.dataset, test.dataset, len(train.quality),
                len(test.quality), [out["srocc"]], [out["plcc"]], mapping)


# Reports ---------------------------------------------------------------------

_COLUMNS = ("protocol", "method", "train_dataset", "test_dataset", "num_train", "num_test",
            "splits", "split_by", "srocc_median", "srocc_iqr", "srocc_std", "plcc_median",
            "plcc_iqr", "plcc_std", "mapping")


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, _COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list[dict]) -> str:
    header = ("protocol", "method", "train", "test", "n train", "n test", "splits",
              "split by", "SROCC median", "SROCC IQR", "PLCC median", "PLCC IQR")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        spread = row["splits"] > 1
        cells = [row["protocol"], row["method"], row["train_dataset"], row["test_dataset"],
                 row["num_train"], row["num_test"], row["splits"], row["split_by"],
                 f"{row['srocc_median']:.4f}", f"{row['srocc_iqr']:.4f}" if spread else "-",
                 f"{row['plcc_median']:.4f}", f"{row['plcc_iqr']:.4f}" if spread else "-"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


_SPLIT_PROTOCOLS = {
    "image": "split by image: the n labelled images are drawn at random and all the "
             "others are tested",
    "reference": "split by reference (synthetic distortions), so that no content is "
                 "both trained on and tested: in each split round(0.2 R) (at least 1) "
                 "of its R references are drawn and all their images are tested; the n "
                 "labelled images are drawn from the images of the other references "
                 "(the rest of those are unused); n test is the median test-set size "
                 "over the splits",
}


def split_protocol_text(rows: list[dict]) -> str:
    """One sentence per dataset on how its data-efficient splits were made."""
    by = {row["test_dataset"]: row["split_by"] for row in rows
          if row["protocol"] == "data_efficient"}
    return " ".join(f"Data-efficient rows of {name}: {_SPLIT_PROTOCOLS[split_by]}."
                    for name, split_by in by.items())


def write_markdown(rows, path, *, model_folder, mapping, kind, parts, seed,
                   datasets: list[DatasetFeatures], notes=()) -> None:
    """results.md: what was done, the table, then the skipped images and notes."""
    mapping_text = {"poly3": "a third-order polynomial (np.polyfit, as the paper's code)",
                    "logistic4": "the four-parameter logistic (VQEG)",
                    "none": "no mapping (raw predictions)"}[mapping]
    text = [f"# GRepQ evaluation of `{model_folder}`", "",
            f"PLCC after {mapping_text}, fitted on each test set. Regressor features: "
            f"{feature_description(parts, kind)}. {split_protocol_text(rows)} "
            f"Splits seeded with {seed}. Scores oriented so higher is better. "
            "Zero-shot rows use every usable image.",
            "", markdown_table(rows), ""]
    text += [f"Note: {note}" for note in notes] + ([""] if notes else [])
    for features in datasets:
        text.append(f"{features.dataset}: {len(features.quality)} images used, "
                    f"{len(features.skipped)} skipped.")
        for name, reason in features.skipped[:_MAX_LISTED_SKIPS]:
            text.append(f"- skipped `{name}`: {reason}")
        if len(features.skipped) > _MAX_LISTED_SKIPS:
            text.append(f"- ... and {len(features.skipped) - _MAX_LISTED_SKIPS} more "
                        "(all in skipped.csv)")
        text.append("")
    pathlib.Path(path).write_text("\n".join(text))


def write_skipped(datasets: list[DatasetFeatures], path: pathlib.Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["dataset", "image", "reason"])
        for features in datasets:
            writer.writerows((features.dataset, name, reason)
                             for name, reason in features.skipped)


def plot_srocc_vs_labels(results: dict[int, regression.SplitResults],
                         zero_shot: list[dict], title: str, path) -> None:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.subplots()
    counts = sorted(results)
    medians = [np.median(results[n].srocc) for n in counts]
    quartiles = np.array([np.percentile(results[n].srocc, [25, 75]) for n in counts]).T
    axes.errorbar(counts, medians, yerr=[medians - quartiles[0], quartiles[1] - medians],
                  marker="o", capsize=3, label="ridge (median, quartiles)")
    for row in zero_shot:
        axes.axhline(row["srocc_median"], linestyle="--", linewidth=1,
                     label=f"zero-shot {row['method']}",
                     color={"low_level": "tab:green", "high_level": "tab:purple",
                            "combined": "tab:red"}[row["method"]])
    axes.set(xlabel="labelled images", ylabel="SROCC", title=title)
    if len(counts) > 1:
        axes.set_xscale("log", base=2)
        axes.set_xticks(counts, [str(n) for n in counts])
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def plot_predicted_vs_true(features: DatasetFeatures, kind: str,
                           result: regression.SplitResults, mapping: str, path):
    """The ridge of the split of `result` whose SROCC is the median (same rows,
    same alpha as the protocol's), its test predictions against the truth.

    Returns the matplotlib Figure (also saved at `path`).
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    x, y = features.regression_features(kind), features.quality
    split = result.median_split()
    train, test = result.train_indices[split], result.test_indices[split]
    ridge = regression.fit_ridge(x[train], y[train], float(result.alpha[split]))
    predicted = ridge.predict(x[test])
    order = np.argsort(predicted)
    mapped = correlation.mapped_predictions(predicted, y[test], mapping)
    figure = Figure(figsize=(5, 5), dpi=120)
    axes = figure.subplots()
    axes.scatter(predicted, y[test], s=8, alpha=0.6, label="test images")
    axes.plot(predicted[order], mapped[order], color="tab:red", label=f"{mapping} mapping")
    count = len(result.srocc)
    which = "median" if count % 2 else "median (lower middle)"
    axes.set(xlabel="predicted quality", ylabel="true quality (higher is better)",
             title=f"{features.dataset}, {result.num_train} labelled, split {split} of "
                   f"0-{count - 1} by {result.split_by}: the {which} SROCC\n"
                   f"SROCC {result.srocc[split]:.3f}, PLCC {result.plcc[split]:.3f}, "
                   f"{len(test)} test images")
    axes.title.set_fontsize("small")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return figure


def fit_regressor_into_model(model_folder, model: qm.QualityModel,
                             features: DatasetFeatures, dataset: iqa_datasets.IqaDataset,
                             kind: str, *, seed: int) -> regression.RidgeRegressor:
    """Ridge (CV alpha) on every usable image, written into the model folder."""
    ridge = regression.fit_ridge_cv(features.regression_features(kind), features.quality,
                                    seed=seed)
    info = {"features": kind, "parts": model.parts, "dataset": dataset.name,
            "score_kind": dataset.score_kind,
            "dataset_higher_is_better": dataset.higher_is_better,
            "orientation": "score" if dataset.higher_is_better else "low + high - score",
            "score_range": list(features.score_range),
            "num_images": len(features.quality), "alpha": ridge.alpha, "seed": seed}
    write_regressor(model_folder, ridge, info)
    return ridge


# Command line ----------------------------------------------------------------

FLAGS = flags.FlagValues()
_MODEL = flags.DEFINE_string("model", None, "The model folder (grepq_jax.export).",
                             required=True, flag_values=FLAGS)
_DATASET = flags.DEFINE_enum("dataset", None, list(iqa_datasets.DATASETS),
                             "The dataset's reader.", required=True, flag_values=FLAGS)
_ROOT = flags.DEFINE_string("root", None, "The dataset's folder.", required=True,
                            flag_values=FLAGS)
_DATASET_ARGS = flags.DEFINE_string(
    "dataset_args", "{}", 'Keyword arguments of the reader, as a JSON object, e.g. '
    '\'{"higher_is_better": false}\' for a generic CSV of DMOS.', flag_values=FLAGS)
_NUM_TRAIN = flags.DEFINE_list("num_train", ["50"], "Numbers of labelled images, "
                               "e.g. 25,50,100,200.", flag_values=FLAGS)
_SPLITS = flags.DEFINE_integer("splits", 10, "Random splits per number.", lower_bound=1,
                               flag_values=FLAGS)
_MAPPING = flags.DEFINE_enum("mapping", "poly3", ["poly3", "logistic4"],
                             "PLCC's mapping.", flag_values=FLAGS)
_FEATURES = flags.DEFINE_enum("features", "projection", list(qm.LOW_LEVEL_FEATURES),
                              "Low-level features for the regressor.", flag_values=FLAGS)
_CROSS_DATASET = flags.DEFINE_enum("cross_dataset", None, list(iqa_datasets.DATASETS),
                                   "Also fit on --dataset, test on this one.",
                                   flag_values=FLAGS)
_CROSS_ROOT = flags.DEFINE_string("cross_root", None, "The cross dataset's folder.",
                                  flag_values=FLAGS)
_CROSS_DATASET_ARGS = flags.DEFINE_string("cross_dataset_args", "{}",
                                          "As --dataset_args, for --cross_dataset.",
                                          flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "Folder for the results and feature caches.",
                           required=True, flag_values=FLAGS)
_FIT_REGRESSOR = flags.DEFINE_bool(
    "fit_regressor_into_model", False, "Fit a ridge on every usable image of --dataset "
    "and write it into --model (for score --mode=regressor).", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the splits and CV folds.", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images held and encoded together.",
                                   lower_bound=1, flag_values=FLAGS)
_CHUNK = flags.DEFINE_integer("chunk", 64, "Low-level patches through the encoder at once.",
                              lower_bound=1, flag_values=FLAGS)


def _load_dataset(name: str, root: str, args_json: str, flag: str):
    try:
        kwargs = json.loads(args_json)
    except json.JSONDecodeError as error:
        raise ValueError(f"--{flag} is not JSON: {error}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--{flag} must be a JSON object, got {args_json!r}")
    return iqa_datasets.load_iqa_dataset(name, root, **kwargs)


def _num_train() -> list[int]:
    try:
        counts = sorted({int(n) for n in _NUM_TRAIN.value})
    except ValueError:
        raise ValueError(f"--num_train must be integers, got {_NUM_TRAIN.value}") from None
    if not counts:
        raise ValueError("--num_train needs at least one number")
    return counts


def evaluate(model_folder, dataset: iqa_datasets.IqaDataset, out, *,
             num_train=(50,), splits: int = 10, mapping: str = "poly3",
             features: str = "projection",
             cross_dataset: iqa_datasets.IqaDataset | None = None,
             fit_regressor: bool = False, seed: int = 0, batch_size: int = 8,
             chunk: int = 64) -> list[dict]:
    """Runs the protocols and writes everything the module docstring lists.

    Returns the table's rows (as results.csv).
    """
    out, model_folder = pathlib.Path(out), pathlib.Path(model_folder)
    num_train = sorted(set(num_train))
    groups = reference_groups([item.reference for item in dataset.items])
    for n in num_train:  # Before any encoding; checked again on the usable images.
        regression.check_num_train(n, len(dataset.items), groups=groups)
    model = qm.QualityModel.load(model_folder, chunk=chunk)
    out.mkdir(parents=True, exist_ok=True)
    notes = [note for d in (dataset, cross_dataset) if d is not None for note in d.notes]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    main_features = dataset_features(model, model_folder, dataset,
                                     out / f"features_{dataset.name}.npz",
                                     batch_size=batch_size)
    all_features = [main_features]
    rows = zero_shot_rows(main_features, mapping)
    results = data_efficient(main_features, features, num_train=num_train, splits=splits,
                             mapping=mapping, seed=seed)
    method = regressor_name(model.parts, features)
    rows += data_efficient_rows(results, main_features, method, mapping)
    if cross_dataset is not None:
        tag = cross_dataset.name + ("_cross" if cross_dataset.name == dataset.name else "")
        cross_features = dataset_features(model, model_folder, cross_dataset,
                                          out / f"features_{tag}.npz",
                                          batch_size=batch_size)
        all_features.append(cross_features)
        rows += zero_shot_rows(cross_features, mapping)
        rows.append(cross_dataset_row(main_features, cross_features, features, method,
                                      mapping=mapping, seed=seed))
    write_csv(rows, out / "results.csv")
    write_markdown(rows, out / "results.md", model_folder=model_folder, mapping=mapping,
                   kind=features, parts=model.parts, seed=seed, datasets=all_features,
                   notes=notes)
    if any(f.skipped for f in all_features):
        write_skipped(all_features, out / "skipped.csv")
        for f in all_features:
            if f.skipped:
                print(f"{f.dataset}: {len(f.skipped)} of {len(f.skipped) + len(f.names)} "
                      f"images skipped (unreadable or too small), listed in "
                      f"{out / 'skipped.csv'}", file=sys.stderr)
    else:
        (out / "skipped.csv").unlink(missing_ok=True)  # From an earlier run.
    zero_shot = [row for row in rows if row["protocol"] == "zero_shot"
                 and row["test_dataset"] == dataset.name]
    split_by = next(iter(results.values())).split_by
    plot_srocc_vs_labels(results, zero_shot, f"{dataset.name}: {method}, split by {split_by}",
                         out / "srocc_vs_labels.png")
    plot_predicted_vs_true(main_features, features, results[num_train[-1]], mapping,
                           out / "predicted_vs_true.png")
    if fit_regressor:
        fit_regressor_into_model(model_folder, model, main_features, dataset, features,
                                 seed=seed)
    return rows


def _evaluate_from_flags() -> list[dict]:
    dataset = _load_dataset(_DATASET.value, cli.absolute(_ROOT.value), _DATASET_ARGS.value,
                            "dataset_args")
    cross = None
    if _CROSS_DATASET.value:
        if not _CROSS_ROOT.value:
            raise ValueError("--cross_dataset needs --cross_root")
        cross = _load_dataset(_CROSS_DATASET.value, cli.absolute(_CROSS_ROOT.value),
                              _CROSS_DATASET_ARGS.value, "cross_dataset_args")
    return evaluate(cli.absolute(_MODEL.value), dataset, cli.absolute(_OUT.value),
                    num_train=_num_train(),
                    splits=_SPLITS.value, mapping=_MAPPING.value, features=_FEATURES.value,
                    cross_dataset=cross, fit_regressor=_FIT_REGRESSOR.value,
                    seed=_SEED.value, batch_size=_BATCH_SIZE.value, chunk=_CHUNK.value)


# A mistake in the flags, the dataset or the model folder (exit status 2).
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                ImportError)


def _report_failure(error: Exception, out: str) -> None:
    """One line on stderr; the traceback into out/traceback.txt if possible."""
    kept = ""
    try:
        path = pathlib.Path(out) / "traceback.txt"
        path.write_text(traceback.format_exc())
        kept = f" (traceback in {path})"
    except OSError:
        pass
    print(f"evaluation failed: {type(error).__name__}: {error}{kept}", file=sys.stderr)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"unexpected arguments: {argv[1:]}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
    try:
        rows = _evaluate_from_flags()
    except EvaluationFailure as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    except _USER_ERRORS as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # pylint: disable=broad-except
        _report_failure(error, cli.absolute(_OUT.value))
        return 1
    print(markdown_table(rows), file=sys.stderr)
    print(f"results in {cli.absolute(_OUT.value)}: results.csv, results.md, "
          "srocc_vs_labels.png, predicted_vs_true.png", file=sys.stderr)
    return 0


USAGE = """\
usage: grepq evaluate --model=DIR --dataset=NAME --root=DIR --out=DIR [flags]
       (or python -m grepq_jax.evaluate ...)

Zero-shot and data-efficient evaluation of a model folder on an IQA dataset.

example:
  grepq evaluate --model=models/grepq --dataset=koniq10k --root=/data/koniq10k \
      --num_train=25,50,100,200 --out=results/koniq"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
