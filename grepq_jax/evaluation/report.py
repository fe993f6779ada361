"""A model folder evaluated on an IQA dataset: each image's features (computed
once, cached in the output folder), zero-shot and data-efficient results,
the report files (results.csv and .md, skipped.csv, two figures), and
optionally a ridge fitted on every image and written into the model folder.
"""
import os
import pathlib
import sys

from grepq_jax.evaluation import feature_cache, iqa_datasets, plots, regression, results_table
from grepq_jax.formats import output_files
from grepq_jax.scoring import model_folder as folder_format
from grepq_jax.scoring import quality_model as qm
from grepq_jax.scoring.model_folder import load_model


def fit_regressor_into_model(model_folder, model: qm.QualityModel,
                             features: feature_cache.DatasetFeatures,
                             dataset: iqa_datasets.IqaDataset, kind: str, *,
                             seed: int) -> regression.RidgeRegressor:
    """Ridge (CV alpha) on every usable image, written into the model folder."""
    ridge = regression.fit_ridge_cv(features.regression_features(kind), features.quality,
                                    seed=seed)
    info = {"features": kind, "parts": model.parts, "dataset": dataset.name,
            "score_kind": dataset.score_kind,
            "dataset_higher_is_better": dataset.higher_is_better,
            "orientation": "score" if dataset.higher_is_better else "low + high - score",
            "score_range": list(features.score_range),
            "num_images": len(features.quality), "alpha": ridge.alpha, "seed": seed}
    folder_format.write_regressor(model_folder, ridge, info)
    return ridge


def evaluate(model_folder, dataset: iqa_datasets.IqaDataset, out, *,
             num_train=(50,), splits: int = 10, mapping: str = "poly3",
             features: str = "projection",
             cross_dataset: iqa_datasets.IqaDataset | None = None,
             fit_regressor: bool = False, seed: int = 0, batch_size: int = 8,
             chunk: int = 64) -> list[dict]:
    """Runs the protocols and writes the report files into `out`.

    Returns the table's rows (as results.csv).
    """
    out, model_folder = pathlib.Path(out), pathlib.Path(model_folder)
    num_train = sorted(set(num_train))
    groups = feature_cache.reference_groups([item.reference for item in dataset.items])
    for n in num_train:  # Before any encoding; checked again on the usable images.
        regression.check_num_train(n, len(dataset.items), groups=groups)
    model = load_model(model_folder, chunk=chunk)
    out.mkdir(parents=True, exist_ok=True)
    notes = [note for d in (dataset, cross_dataset) if d is not None for note in d.notes]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    main_features = feature_cache.dataset_features(model, model_folder, dataset,
                                                   out / f"features_{dataset.name}.npz",
                                                   batch_size=batch_size)
    all_features = [main_features]
    rows = results_table.zero_shot_rows(main_features, mapping)
    results = results_table.data_efficient(main_features, features, num_train=num_train,
                                           splits=splits, mapping=mapping, seed=seed)
    method = results_table.regressor_name(model.parts, features)
    rows += results_table.data_efficient_rows(results, main_features, method, mapping)
    if cross_dataset is not None:
        tag = cross_dataset.name + ("_cross" if cross_dataset.name == dataset.name else "")
        cross_features = feature_cache.dataset_features(model, model_folder, cross_dataset,
                                                        out / f"features_{tag}.npz",
                                                        batch_size=batch_size)
        all_features.append(cross_features)
        rows += results_table.zero_shot_rows(cross_features, mapping)
        rows.append(results_table.cross_dataset_row(main_features, cross_features, features,
                                                    method, mapping=mapping, seed=seed))
    results_table.write_csv(rows, out / "results.csv")
    results_table.write_markdown(rows, out / "results.md", model_folder=model_folder,
                                 mapping=mapping, kind=features, parts=model.parts, seed=seed,
                                 datasets=all_features, notes=notes)
    if any(f.skipped for f in all_features):
        results_table.write_skipped(all_features, out / "skipped.csv")
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
    plots.plot_srocc_vs_labels(results, zero_shot,
                               f"{dataset.name}: {method}, split by {split_by}",
                               out / "srocc_vs_labels.png")
    plots.plot_predicted_vs_true(main_features, features, results[num_train[-1]], mapping,
                                 out / "predicted_vs_true.png")
    if fit_regressor:
        fit_regressor_into_model(model_folder, model, main_features, dataset, features,
                                 seed=seed)
    return rows


REPORT_FILES = ("results.csv", "results.md", "skipped.csv", "srocc_vs_labels.png",
                "predicted_vs_true.png", "traceback.txt")


def check_outputs(model_folder, out, datasets) -> None:
    """errors.UsageError if a file evaluate writes into `out` is the model
    folder's, a dataset's image, or another output."""
    inputs = [output_files.Place(f"--model={model_folder}", model_folder, folder=True)]
    inputs += [output_files.Place(f"the {dataset.name} image {item.name}", item.path)
               for dataset in datasets for item in dataset.items]
    names = list(REPORT_FILES) + [f"features_{dataset.name}.npz" for dataset in datasets]
    output_files.check_no_clash(inputs, [
        output_files.Place(f"--out={out} ({name})", os.path.join(out, name))
        for name in names])
