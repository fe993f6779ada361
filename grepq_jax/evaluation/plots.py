"""The figures of `grepq evaluate`: SROCC against the number of labelled
images, and one split's test predictions against the true scores."""
import numpy as np

from grepq_jax.formats import output_files
from grepq_jax.evaluation import correlation
from grepq_jax.evaluation import regression
from grepq_jax.evaluation.feature_cache import DatasetFeatures


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
    with output_files.replacing_path(path) as partial:
        figure.savefig(partial)


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
    with output_files.replacing_path(path) as partial:
        figure.savefig(partial)
    return figure
