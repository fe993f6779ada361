"""`grepq evaluate`: its flags, the files it writes into --out, and exit
codes: 0 done; 2 a usage or input error (a flag, a dataset's layout, the model
folder, too many labelled images, an output onto an input), in one line; 1 a
failure while running (too few usable images, scores that do not vary, a full
disk, anything unexpected: its traceback kept in --out/traceback.txt). The
protocol is grepq_jax/evaluation/'s; the README describes its outputs.
"""
import json
import pathlib
import sys
import traceback

from absl import flags
from absl import logging

from grepq_jax.commands import cli
from grepq_jax.formats.paths import absolute
from grepq_jax import errors
from grepq_jax.formats import output_files
from grepq_jax.evaluation import correlation
from grepq_jax.evaluation import feature_cache
from grepq_jax.evaluation import iqa_datasets
from grepq_jax.evaluation import results_table
from grepq_jax.evaluation import report
from grepq_jax.scoring.quality_model import LOW_LEVEL_FEATURES


FLAGS = flags.FlagValues()
_MODEL = flags.DEFINE_string("model", None, "The model folder (grepq_jax.commands.export).",
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
_FEATURES = flags.DEFINE_enum("features", "projection", list(LOW_LEVEL_FEATURES),
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


def _evaluate_from_flags() -> list[dict]:
    dataset = _load_dataset(_DATASET.value, absolute(_ROOT.value), _DATASET_ARGS.value,
                            "dataset_args")
    cross = None
    if _CROSS_DATASET.value:
        if not _CROSS_ROOT.value:
            raise ValueError("--cross_dataset needs --cross_root")
        cross = _load_dataset(_CROSS_DATASET.value, absolute(_CROSS_ROOT.value),
                              _CROSS_DATASET_ARGS.value, "cross_dataset_args")
    report.check_outputs(_MODEL.value, _OUT.value, [d for d in (dataset, cross) if d is not None])
    return report.evaluate(absolute(_MODEL.value), dataset, absolute(_OUT.value),
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
        output_files.write_text(path, traceback.format_exc())
        kept = f" (traceback in {path})"
    except (OSError, errors.RunFailure):
        pass
    print(f"evaluation failed: {type(error).__name__}: {error}{kept}", file=sys.stderr)


def main(argv: list[str]) -> int:
    if cli.unexpected_arguments(argv):
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
    try:
        rows = _evaluate_from_flags()
    except (feature_cache.EvaluationFailure, correlation.UndefinedCorrelation,
            errors.RunFailure) as error:  # RunFailure: a full disk.
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    except _USER_ERRORS as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        failure = errors.disk_full(error, error.filename or absolute(_OUT.value))
        if failure is None:
            _report_failure(error, absolute(_OUT.value))
        else:
            print(f"evaluation failed: {failure}", file=sys.stderr)
        return 1
    except Exception as error:  # pylint: disable=broad-except
        _report_failure(error, absolute(_OUT.value))
        return 1
    print(results_table.markdown_table(rows), file=sys.stderr)
    print(f"results in {absolute(_OUT.value)}: results.csv, results.md, "
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
