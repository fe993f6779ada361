"""Scores images with a model folder: the `create_scorer` API and the CLI.

    python -m grepq_jax.score --model=models/grepq photos/ extra.jpg \
        --output=scores.csv [--json=scores.json] [--mode=zero_shot]

Files and folders (searched recursively for image suffixes; a file named
explicitly is read whatever its suffix) are scored at their own resolution,
in batches of same-size images, streaming: rows are written and flushed as
they are done, so memory stays flat over a folder of any size. The CSV
(stdout when --output is not given) has the columns
    path, low_level, high_level, combined, error   (zero-shot modes)
    path, prediction, error                        (regressor mode)
with a part a mode does not compute left empty. A file that cannot be read
or is too small gets a row with its error and the rest are scored; the exit
code is 0 if every file was scored, 1 if any failed (or none was found), 2
for bad flags or an unusable model folder. --json writes the same rows as a
JSON array. A progress bar goes to stderr.

Modes (every score: higher is better):
    zero_shot        low + high, in (0, 1.5)   (the paper's combination)
    zero_shot_low    low-level Gaussian distance score, in (0, 0.5]
    zero_shot_high   prompt score sigmoid(10 (s_good - s_bad)), in (0, 1)
    regressor        the fitted ridge's prediction, on the quality scale it
                     was fitted to (regressor.json's score_range, nominal:
                     not clipped; oriented so higher is better)
"""
import os

if __name__ == "__main__":  # No PyTorch needed: see grepq_jax/cli.py.
    os.environ.setdefault("USE_TORCH", "0")

import csv
import dataclasses
import json
import pathlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from absl import flags
from absl import logging
import numpy as np
from PIL import Image, ImageOps
import tqdm

from grepq_jax import cli, zero_shot
from grepq_jax import quality_model as qm
from grepq_jax.data import images

MODES = {  # mode -> what QualityModel.analyse computes for it
    "zero_shot": frozenset({"low_level_score", "high_level"}),
    "zero_shot_low": frozenset({"low_level_score"}),
    "zero_shot_high": frozenset({"high_level"}),
    "regressor": None,  # the regressor's parts: QualityModel.regression_needs()
}
SCORE_RANGES = {"zero_shot": (0.0, 1.5), "zero_shot_low": (0.0, 0.5),
                "zero_shot_high": (0.0, 1.0)}
_SCORE_COLUMN = {"zero_shot": "combined", "zero_shot_low": "low_level",
                 "zero_shot_high": "high_level"}  # which part .score() returns
ZERO_SHOT_COLUMNS = ("path", "low_level", "high_level", "combined", "error")
REGRESSOR_COLUMNS = ("path", "prediction", "error")


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """One scored image: `score` (None on error) and its parts by column name."""
    source: Any
    score: float | None
    parts: dict[str, float]
    error: str | None = None


def default_mode(model: qm.QualityModel) -> str:
    """zero_shot with both encoders, else the zero-shot mode of the one present."""
    if model.low_level and model.high_level:
        return "zero_shot"
    return "zero_shot_low" if model.low_level else "zero_shot_high"


def as_rgb(image) -> np.ndarray:
    """A path, PIL image or array -> (H, W, 3) float32 in [0, 1].

    Arrays: (H, W, 3) floating point in [0, 1], or uint8 (H, W, 3) / (H, W)
    (divided by 255). PIL images get their EXIF orientation applied, as
    files do. Raises ValueError (UnusableImageError for files) saying why.
    """
    if isinstance(image, (str, os.PathLike)):
        return images.read_image(image)
    if isinstance(image, Image.Image):
        try:
            return images.pil_to_rgb(ImageOps.exif_transpose(image))
        except OSError as error:  # A lazily opened image that fails to decode.
            raise images.UnusableImageError(f"cannot decode ({error})") from error
    array = np.asarray(image)
    if array.dtype == np.uint8:
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3):
            return images.pixels_to_rgb(array)
    elif np.issubdtype(array.dtype, np.floating) and array.ndim == 3 and array.shape[-1] == 3:
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ValueError("a float image must hold finite values in [0, 1], got "
                             f"[{array.min()}, {array.max()}]")
        return array.astype(np.float32)
    raise ValueError(f"expected an (H, W, 3) RGB array in [0, 1] (or uint8), got "
                     f"{array.dtype} of shape {array.shape}")


class Scorer:
    """Scores images with a model folder; see the module docstring for modes.

    score_range: (low, high) of the scores (nominal for the regressor);
    higher_is_better: always True.
    """
    higher_is_better = True

    def __init__(self, model: qm.QualityModel, mode: str | None = None, *,
                 batch_size: int = 8):
        mode = mode or default_mode(model)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
        if mode == "regressor":
            if model.regressor is None:
                raise ValueError("this model folder has no regressor: fit one with "
                                 "python -m grepq_jax.evaluate --fit_regressor_into_model")
            if model.regressor_info.get("parts") != model.parts:
                raise ValueError(f"the regressor reads {model.regressor_info.get('parts')}, "
                                 f"but the model holds {model.parts}")
            self.needs = model.regression_needs()
            self.score_range = tuple(model.regressor_info["score_range"])
        else:
            self.needs = model.check_needs(MODES[mode])
            self.score_range = SCORE_RANGES[mode]
        self.model, self.mode, self.batch_size = model, mode, batch_size
        self.columns = REGRESSOR_COLUMNS if mode == "regressor" else ZERO_SHOT_COLUMNS

    def score(self, image) -> float:
        """The score of one path, PIL image or (H, W, 3) array in [0, 1].

        Raises ValueError (UnusableImageError for an unreadable file) if it
        cannot be scored.
        """
        result = next(self.score_many([image]))
        if result.error is not None:
            raise ValueError(f"{_describe(image)}: {result.error}")
        return result.score

    def score_many(self, sources: Iterable) -> Iterator[ScoreResult]:
        """ScoreResult per source, in order, reading each lazily (bounded memory).

        A source that cannot be read or scored gets a result with `error`.
        """
        return (self._result(source, analysis) for source, analysis in self.model.analyse(
            _read_lazily(sources), needs=self.needs, batch_size=self.batch_size))

    def _result(self, source, analysis) -> ScoreResult:
        if isinstance(analysis, Exception):
            return ScoreResult(source, None, {}, str(analysis) or type(analysis).__name__)
        if self.mode == "regressor":
            kind = self.model.regressor_info["features"]
            features = self.model.regression_features(analysis, kind)[None]
            value = float(self.model.regressor.predict(features)[0])
            return ScoreResult(source, value, {"prediction": value})
        parts = {name: value for name, value in (("low_level", analysis.low_level_score),
                                                 ("high_level", analysis.high_level_score))
                 if value is not None}
        if self.mode == "zero_shot":
            parts["combined"] = float(zero_shot.combined_score(parts["low_level"],
                                                               parts["high_level"]))
        return ScoreResult(source, parts[_SCORE_COLUMN[self.mode]], parts)


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"{type(source).__name__} image"


def _read_lazily(sources: Iterable) -> Iterator[tuple[Any, np.ndarray | Exception]]:
    for source in sources:
        try:
            yield source, as_rgb(source)
        except ValueError as error:
            yield source, error


def create_scorer(model_folder, mode: str | None = None, *, batch_size: int = 8,
                  chunk: int = 64) -> Scorer:
    """A Scorer for the model folder written by `python -m grepq_jax.export`.

    mode: "zero_shot", "zero_shot_low", "zero_shot_high" or "regressor";
    None picks zero_shot, or the zero-shot mode of the one encoder present.
    batch_size: same-size images encoded together; chunk: low-level patches
    at once. Neither changes a score.
    """
    return Scorer(qm.QualityModel.load(model_folder, chunk=chunk), mode,
                  batch_size=batch_size)


# Command line ---------------------------------------------------------------

FLAGS = flags.FlagValues()
_MODEL = flags.DEFINE_string("model", None, "The model folder (grepq_jax.export).",
                             required=True, flag_values=FLAGS)
_MODE = flags.DEFINE_enum("mode", None, list(MODES), "What to score; default "
                          "zero_shot (or the one encoder's zero-shot mode).",
                          flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string("output", "-", "The CSV file to write; - for stdout.",
                              flag_values=FLAGS)
_JSON = flags.DEFINE_string("json", None, "Also write the rows as a JSON array here.",
                            flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images held and encoded together.",
                                   lower_bound=1, flag_values=FLAGS)
_CHUNK = flags.DEFINE_integer("chunk", 64, "Low-level patches through the encoder at once.",
                              lower_bound=1, flag_values=FLAGS)


def iter_image_paths(paths: Iterable[str]) -> Iterator[pathlib.Path]:
    """Each path itself if a file (or missing: reading it reports that), else the
    image files under it, recursively, sorted per folder, found lazily.

    Symbolic links to folders are not followed (no link loops).
    """
    for path in map(pathlib.Path, paths):
        if not path.is_dir():
            yield path
            continue
        for root, folders, names in os.walk(path):
            folders.sort()
            for name in sorted(names):
                if pathlib.Path(name).suffix.lower() in images.IMAGE_SUFFIXES:
                    yield pathlib.Path(root, name)


class _RowWriter:
    """CSV (and optionally a JSON array) written and flushed row by row."""

    def __init__(self, columns, csv_file, json_file):
        self.columns = columns
        self._csv = csv.DictWriter(csv_file, columns)
        self._csv.writeheader()
        self._files = [csv_file] + ([json_file] if json_file else [])
        self._json, self._rows = json_file, 0
        if json_file:
            json_file.write("[")

    def write(self, result: ScoreResult) -> None:
        row = {"path": str(result.source), "error": result.error or ""} | result.parts
        self._csv.writerow({name: row.get(name, "") for name in self.columns})
        if self._json:
            record = {name: row.get(name) for name in self.columns}
            record["error"] = result.error
            self._json.write(("," if self._rows else "") + "\n" + json.dumps(record))
        self._rows += 1
        for file in self._files:
            file.flush()

    def close(self) -> None:
        if self._json:
            self._json.write("\n]\n")


def score_paths(scorer: Scorer, paths: list[str], csv_file, json_file=None, *,
                progress: bool = True) -> tuple[int, int]:
    """Writes a row per image of `paths`; returns (scored, failed)."""
    total = sum(1 for _ in iter_image_paths(paths))  # A cheap first walk, for the ETA.
    writer = _RowWriter(scorer.columns, csv_file, json_file)
    scored = failed = 0
    try:
        with tqdm.tqdm(total=total, unit="image", disable=not progress,
                       file=sys.stderr) as bar:
            for result in scorer.score_many(iter_image_paths(paths)):
                writer.write(result)
                scored += result.error is None
                failed += result.error is not None
                bar.update()
    finally:
        writer.close()  # Valid JSON of the rows so far, even if interrupted.
    return scored, failed


def main(argv: list[str]) -> int:
    paths = argv[1:]
    if not paths:
        print("give the files and folders to score after the flags", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
    try:
        scorer = create_scorer(_MODEL.value, _MODE.value, batch_size=_BATCH_SIZE.value,
                               chunk=_CHUNK.value)
    except ValueError as error:  # ModelFolderError, or a mode the model cannot do.
        print(f"cannot score with {_MODEL.value}: {error}", file=sys.stderr)
        return 2
    print(f"scoring in mode {scorer.mode} (the model holds {scorer.model.parts}); "
          f"scores in {scorer.score_range}, higher is better", file=sys.stderr)
    out = sys.stdout if _OUTPUT.value == "-" else open(_OUTPUT.value, "w", newline="")
    json_file = open(_JSON.value, "w") if _JSON.value else None
    try:
        scored, failed = score_paths(scorer, paths, out, json_file)
    finally:
        for file in (out, json_file):
            if file not in (None, sys.stdout):
                file.close()
    print(f"scored {scored} image(s); {failed} failed (see the error column)",
          file=sys.stderr)
    return 1 if failed or not scored else 0


USAGE = """\
usage: grepq score --model=DIR [flags] IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...]
       (or python -m grepq_jax.score ...)

Scores each image file, and every image under each folder, with a model folder.

example:
  grepq score --model=models/grepq photos/ extra.jpg --output=scores.csv"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
