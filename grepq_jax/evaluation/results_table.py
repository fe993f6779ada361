"""The results table of `grepq evaluate`: a row per protocol and method
(zero-shot, data-efficient, cross-dataset), written as results.csv and
results.md, and the images left out as skipped.csv."""
import csv
import pathlib

import numpy as np

from grepq_jax.formats import output_files
from grepq_jax.evaluation import correlation
from grepq_jax.evaluation import regression
from grepq_jax.evaluation.feature_cache import DatasetFeatures

_MAX_LISTED_SKIPS = 20


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
    """SROCC and PLCC of each zero-shot score over the whole dataset.

    Raises correlation.UndefinedCorrelation, naming the score, when it or the
    subjective scores do not vary.
    """
    rows = []
    for name, scores in features.zero_shot_scores().items():
        try:
            rows.append(_row("zero_shot", name, "-", features.dataset, 0,
                             len(features.quality),
                             [correlation.srocc(scores, features.quality)],
                             [correlation.plcc(scores, features.quality, mapping)],
                             mapping))
        except correlation.UndefinedCorrelation as error:
            raise correlation.UndefinedCorrelation(
                f"{features.dataset}, zero-shot {name} score: {error}") from None
    return rows


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
    with output_files.replacing(path, newline="") as file:
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
    output_files.write_text(path, "\n".join(text))


def write_skipped(datasets: list[DatasetFeatures], path: pathlib.Path) -> None:
    with output_files.replacing(path, newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["dataset", "image", "reason"])
        for features in datasets:
            writer.writerows((features.dataset, name, reason)
                             for name, reason in features.skipped)
