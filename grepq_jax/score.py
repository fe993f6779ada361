"""Scores images with a model folder: the `create_scorer` API and the CLI.

    python -m grepq_jax.score --model=models/grepq photos/ extra.jpg \
        --output=scores.csv [--json=scores.json] [--mode=zero_shot]

The model folder is checked completely before any image is read or any
output written: a damaged one stops the command with one line naming the
file and key (exit 2).

Files and folders (searched recursively for image suffixes; a file named
explicitly is read whatever its suffix) are scored at their own resolution,
streaming: rows are written and flushed as they are done, so memory stays
flat over a folder of any size. Files without an image suffix and links to
folders (not followed) are counted and listed on stderr at the end. The CSV
(stdout when --output is not given; "\\n" line endings) has the columns
    path, low_level, high_level, combined, error   (zero-shot modes)
    path, prediction, error                        (regressor mode)
with a part a mode does not compute left empty. Paths are written as text
with each byte that is not UTF-8 shown as \\xNN (the same in CSV, JSON and
on stdout). A file that cannot be read, is too small or has more than
--max_pixels pixels gets a row with its error and the rest are scored; a
score is never written as NaN or inf (such a row holds an error instead).
The exit code is 0 if every file was scored, 1 if any failed (or none was
found), 2 for bad flags, an unusable model folder or outputs that clash, 1
for a full disk (in one line). --json writes the same rows as a JSON array.
A progress bar goes to stderr.

Outputs never touch inputs or each other: --output, --json and --maps are
checked against the model folder, the inputs and one another (resolved,
links followed) before any work, and a clash is refused (exit 2). The CSV
and JSON files are written beside their targets under temporary names and
renamed into place when complete, so a failure or an interrupt leaves no
empty or partial file (on stdout, rows stream as they are done).

--maps=DIR also writes, per scored image, DIR/NAME.png: the image beside a
map of where it looks damaged (each low-level patch's distance to the
pristine Gaussian, with a colour bar; `Scorer.quality_map` gives the array).
NAME is the file's stem (NAME-2, NAME-3... when stems repeat). Making a map
reads the image and runs the low-level encoder a second time.

Memory: with the low-level score alone each image is held as its file's
pixels (uint8: 3 bytes a pixel) and made float one chunk of patches at a
time; whole-image encoders take batches of at most --batch_size images and
--batch_pixels pixels as float32 (a larger image alone). Memory thus
depends on the largest image, never on the number of files.

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

import contextlib
import csv
import dataclasses
import io
import json
import pathlib
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from absl import flags
from absl import logging
import numpy as np
from PIL import Image, ImageOps
import tqdm

from grepq_jax import cli, errors, model_cache, output_files
from grepq_jax.scoring import quality_map, zero_shot
from grepq_jax.scoring import quality_model as qm
from grepq_jax.data import images

MODES = {  # mode -> what QualityModel.analyse computes for it
    "zero_shot": frozenset({qm.Need.LOW_LEVEL_SCORE, qm.Need.HIGH_LEVEL}),
    "zero_shot_low": frozenset({qm.Need.LOW_LEVEL_SCORE}),
    "zero_shot_high": frozenset({qm.Need.HIGH_LEVEL}),
    "regressor": None,  # the regressor's parts: QualityModel.regression_needs()
}
SCORE_RANGES = {"zero_shot": (0.0, 1.5), "zero_shot_low": (0.0, 0.5),
                "zero_shot_high": (0.0, 1.0)}
_SCORE_COLUMN = {"zero_shot": "combined", "zero_shot_low": "low_level",
                 "zero_shot_high": "high_level"}  # which part .score() returns
ZERO_SHOT_COLUMNS = ("path", "low_level", "high_level", "combined", "error")
REGRESSOR_COLUMNS = ("path", "prediction", "error")
PATH_TYPES = (str, bytes, os.PathLike)


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """One scored image: `score` (None on error) and its parts by column name."""
    source: Any
    score: float | None
    parts: dict[str, float]
    error: str | None = None


# A file name's bytes that are not UTF-8 reach Python as lone surrogates
# (surrogate escapes), which no output encoding accepts.
_SURROGATES = re.compile("[\ud800-\udfff]")


def printable(text: str | bytes | os.PathLike) -> str:
    """A path (or a message holding one) as text any UTF-8 output takes.

    os.fsdecode, then each byte that is not UTF-8 (a surrogate escape) is
    written as the four characters \\xNN: the name b"a_\\xff.png" prints
    as a_\\xff.png.
    """
    def escape(match):
        code = ord(match[0])
        return f"\\x{code - 0xDC00:02x}" if code >= 0xDC80 else f"\\u{code:04x}"
    return _SURROGATES.sub(escape, os.fsdecode(text))


def default_mode(model: qm.QualityModel) -> str:
    """zero_shot with both encoders, else the zero-shot mode of the one present."""
    if model.low_level and model.high_level:
        return "zero_shot"
    return "zero_shot_low" if model.low_level else "zero_shot_high"


def as_pixels(image, *, max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """A path, PIL image or array -> pixels as `data.images.read_pixels` gives them.

    Paths: str, bytes or os.PathLike. Arrays: (H, W, 3) floating point in
    [0, 1], or uint8 (H, W, 3) / (H, W). PIL images get their EXIF
    orientation applied, as files do. More than `max_pixels` pixels is an
    error. Raises ValueError (UnusableImageError for files) saying why.
    """
    if isinstance(image, PATH_TYPES):
        return images.read_pixels(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        images.check_pixel_count(*image.size, max_pixels)
        try:
            return images.pil_to_pixels(ImageOps.exif_transpose(image))
        except OSError as error:  # A lazily opened image that fails to decode.
            raise images.UnusableImageError(f"cannot decode ({error})") from error
    array = np.asarray(image)
    if array.size == 0:
        raise ValueError(f"an empty image (an array of shape {array.shape})")
    if array.ndim in (2, 3):
        images.check_pixel_count(array.shape[1], array.shape[0], max_pixels)
    if array.dtype == np.uint8:
        if array.ndim == 2:
            return images.grey_to_rgb(array)
        if array.ndim == 3 and array.shape[-1] == 3:
            return array
    elif np.issubdtype(array.dtype, np.floating) and array.ndim == 3 and array.shape[-1] == 3:
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ValueError("a float image must hold finite values in [0, 1], got "
                             f"[{array.min()}, {array.max()}]")
        return array.astype(np.float32, copy=False)
    raise ValueError(f"expected an (H, W, 3) RGB array in [0, 1] (or uint8), got "
                     f"{array.dtype} of shape {array.shape}")


class Scorer:
    """Scores images with a model folder; see the module docstring for modes.

    score_range: (low, high) of the scores (nominal for the regressor);
    higher_is_better: always True.
    """
    higher_is_better = True

    def __init__(self, model: qm.QualityModel, mode: str | None = None, *,
                 batch_size: int = 8, batch_pixels: int = qm.BATCH_PIXELS,
                 max_pixels: int = images.MAX_PIXELS):
        mode = mode or default_mode(model)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
        if mode == "regressor":
            if model.regressor is None:
                raise ValueError("this model folder has no regressor: fit one with "
                                 "python -m grepq_jax.evaluate --fit_regressor_into_model")
            self.needs = model.regression_needs()
            self.score_range = tuple(model.regressor_info["score_range"])
        else:
            self.needs = model.check_needs(MODES[mode])
            self.score_range = SCORE_RANGES[mode]
        for name, value in (("batch_size", batch_size), ("batch_pixels", batch_pixels),
                            ("max_pixels", max_pixels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.model, self.mode = model, mode
        self.batch_size, self.batch_pixels, self.max_pixels = (batch_size, batch_pixels,
                                                               max_pixels)
        self.columns = REGRESSOR_COLUMNS if mode == "regressor" else ZERO_SHOT_COLUMNS

    def score(self, image) -> float:
        """The score of one path, PIL image or (H, W, 3) array in [0, 1].

        Raises ValueError (UnusableImageError for an unreadable file) if it
        cannot be scored.
        """
        result = next(self.score_many([image]))
        if result.error is not None:
            raise ValueError(f"{describe(image)}: {result.error}")
        return result.score

    def quality_map(self, image) -> np.ndarray:
        """Where one path, PIL image or array looks damaged: (H, W) float64, at
        each pixel the mean distance of the low-level patches covering it to
        the pristine Gaussian (higher is worse; NaN at the uncovered right and
        bottom edges). Raises ValueError if it cannot be made (no low-level
        encoder, an unreadable or too small image).
        """
        try:
            return self.model.quality_map(as_pixels(image, max_pixels=self.max_pixels))
        except ValueError as error:
            raise ValueError(f"{describe(image)}: {error}") from error

    def score_many(self, sources: Iterable) -> Iterator[ScoreResult]:
        """ScoreResult per source, in order, reading each lazily (bounded memory).

        A source that cannot be read or scored gets a result with `error`.
        """
        analyses = self.model.analyse(self._read_lazily(sources), needs=self.needs,
                                      batch_size=self.batch_size,
                                      batch_pixels=self.batch_pixels)
        return (self._result(source, analysis) for source, analysis in analyses)

    def _read_lazily(self, sources: Iterable) -> Iterator[tuple[Any, Any]]:
        for source in sources:
            try:
                yield source, as_pixels(source, max_pixels=self.max_pixels)
            except ValueError as error:
                yield source, error

    def _result(self, source, analysis) -> ScoreResult:
        if isinstance(analysis, Exception):
            return ScoreResult(source, None, {},
                               printable(str(analysis) or type(analysis).__name__))
        if self.mode == "regressor":
            kind = self.model.regressor_info["features"]
            features = self.model.regression_features(analysis, kind)[None]
            parts = {"prediction": float(self.model.regressor.predict(features)[0])}
        else:
            parts = {name: value for name, value in (
                ("low_level", analysis.low_level_score),
                ("high_level", analysis.high_level_score)) if value is not None}
            if self.mode == "zero_shot":
                parts["combined"] = float(zero_shot.combined_score(parts["low_level"],
                                                                   parts["high_level"]))
        if not all(np.isfinite(value) for value in parts.values()):
            return ScoreResult(source, None, {}, f"the model gave a non-finite score "
                               f"{parts}; its folder is damaged")
        column = "prediction" if self.mode == "regressor" else _SCORE_COLUMN[self.mode]
        return ScoreResult(source, parts[column], parts)


def describe(source) -> str:
    """A path as printable text; anything else by its type."""
    if isinstance(source, PATH_TYPES):
        return printable(source)
    return f"{type(source).__name__} image"


def create_scorer(model_folder, mode: str | None = None, *, batch_size: int = 8,
                  chunk: int = 64, batch_pixels: int = qm.BATCH_PIXELS,
                  max_pixels: int = images.MAX_PIXELS) -> Scorer:
    """A Scorer for the model folder written by `python -m grepq_jax.export`.

    mode: "zero_shot", "zero_shot_low", "zero_shot_high" or "regressor";
    None picks zero_shot, or the zero-shot mode of the one encoder present.
    batch_size and batch_pixels: at most this many same-size images, and
    pixels, through the whole-image encoders at once; chunk: low-level
    patches at once. None of these changes a score (the low-level score is
    bit-identical; whole-image outputs agree to float32 rounding).
    max_pixels: larger images are refused, each with its error. Raises
    ModelFolderError (a ValueError) naming the file when the folder is
    damaged. `model_folder` may be a name `grepq download` wrote ("grepq"),
    found in its cache unless a folder of that name is here.
    """
    model_folder = model_cache.resolve(model_folder)
    return Scorer(qm.QualityModel.load(model_folder, chunk=chunk), mode,
                  batch_size=batch_size, batch_pixels=batch_pixels,
                  max_pixels=max_pixels)


# Command line ---------------------------------------------------------------

FLAGS = flags.FlagValues()
_MODEL = flags.DEFINE_string("model", None, "The model folder (grepq export), or "
                             "grepq: the released model that grepq download fetched.",
                             required=True, flag_values=FLAGS)
_MODE = flags.DEFINE_enum("mode", None, list(MODES), "What to score; default "
                          "zero_shot (or the one encoder's zero-shot mode).",
                          flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string("output", "-", "The CSV file to write; - for stdout.",
                              flag_values=FLAGS)
_JSON = flags.DEFINE_string("json", None, "Also write the rows as a JSON array here.",
                            flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 8, "At most this many same-size images through the whole-image "
    "encoders at once.", lower_bound=1, flag_values=FLAGS)
_BATCH_PIXELS = flags.DEFINE_integer(
    "batch_pixels", qm.BATCH_PIXELS, "At most this many pixels through the whole-image "
    "encoders at once (a larger image goes alone).", lower_bound=1, flag_values=FLAGS)
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", images.MAX_PIXELS, "Refuse (with an error row) images with more "
    "pixels; default and most: Pillow's decompression-bomb limit.", lower_bound=1,
    upper_bound=images.MAX_PIXELS, flag_values=FLAGS)
_MAPS = flags.DEFINE_string(
    "maps", None, "Also write a quality map (PNG) per scored image into this folder "
    "(made if missing); needs a low-level encoder.", flag_values=FLAGS)
_CHUNK = flags.DEFINE_integer("chunk", 64, "Low-level patches through the encoder at once.",
                              lower_bound=1, flag_values=FLAGS)


def iter_image_paths(paths: Iterable[str], skips: images.WalkSkips | None = None
                     ) -> Iterator[pathlib.Path]:
    """Each path itself if not a folder (reading it reports a missing file),
    else the entries with image suffixes under it (`data.images.walk_image_files`,
    lazily); what the walks pass over is counted in `skips`.
    """
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            yield from images.walk_image_files(path, skips)
        else:
            yield path


class _RowWriter:
    """CSV (and optionally a JSON array) written and flushed row by row.

    Each row is formatted whole first; a row its file's encoding cannot take
    is written with backslash escapes instead, so no row is ever lost.
    """

    def __init__(self, columns, csv_file, json_file):
        self.columns = columns
        self._csv_file, self._json_file, self._rows = csv_file, json_file, 0
        _write(csv_file, self._csv_line(dict(zip(columns, columns))))
        if json_file:
            _write(json_file, "[")

    def _csv_line(self, row: dict) -> str:
        text = io.StringIO()
        csv.DictWriter(text, self.columns, lineterminator="\n").writerow(row)
        return text.getvalue()

    def write(self, result: ScoreResult) -> None:
        row = {"path": describe(result.source), "error": result.error} | result.parts
        _write(self._csv_file, self._csv_line(
            {name: "" if row.get(name) is None else row[name] for name in self.columns}))
        if self._json_file:
            record = json.dumps({name: row.get(name) for name in self.columns})
            _write(self._json_file, ("," if self._rows else "") + "\n" + record)
        self._rows += 1

    def close(self) -> None:
        if self._json_file:
            _write(self._json_file, "\n]\n")


def _write(file, text: str) -> None:
    """Writes and flushes `text`; escaped to ASCII if the encoding refuses it."""
    try:
        file.write(text)
    except UnicodeEncodeError:
        file.write(text.encode("ascii", "backslashreplace").decode("ascii"))
    file.flush()


class MapWriter:
    """Writes `folder`/NAME.png, a quality map per image, NAME its file's stem
    made unique in the folder (NAME-2, ...); never overwrites a file."""

    def __init__(self, scorer: Scorer, folder):
        if scorer.model.low_level is None:
            raise ValueError("--maps needs a model with a low-level encoder; this one "
                             f"holds {scorer.model.parts}")
        self.scorer, self.folder = scorer, pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.failed = 0

    def _free_path(self, source) -> pathlib.Path:
        stem = pathlib.Path(os.fsdecode(source)).stem or "image"
        for number in range(1, 1 << 20):
            path = self.folder / (f"{stem}.png" if number == 1 else f"{stem}-{number}.png")
            if not path.exists():
                return path
        raise OSError(f"no free name for {stem}.png in {self.folder}")

    def write(self, result: ScoreResult) -> None:
        """The map of a scored image; a failure is reported on stderr and counted."""
        try:
            pixels = as_pixels(result.source, max_pixels=self.scorer.max_pixels)
            distance_map = self.scorer.model.quality_map(pixels)
            title = f"{describe(result.source)}: {result.score:.4f} ({self.scorer.mode})"
            with output_files.replacing_path(self._free_path(result.source)) as path:
                quality_map.write_map_png(path, pixels, distance_map, title)
        except (ValueError, OSError) as error:
            self.failed += 1
            print(f"no map for {describe(result.source)}: {printable(str(error))}",
                  file=sys.stderr)


def score_paths(scorer: Scorer, paths: list[str], csv_file, json_file=None, *,
                progress: bool = True, skips: images.WalkSkips | None = None,
                maps: MapWriter | None = None) -> tuple[int, int]:
    """Writes a row per image of `paths` (and its map, with `maps`);
    returns (scored, failed).

    What the folder walks pass over is counted in `skips`.
    """
    total = sum(1 for _ in iter_image_paths(paths))  # A cheap first walk, for the ETA.
    writer = _RowWriter(scorer.columns, csv_file, json_file)
    scored = failed = 0
    try:
        with tqdm.tqdm(total=total, unit="image", disable=not progress,
                       file=sys.stderr) as bar:
            for result in scorer.score_many(iter_image_paths(paths, skips)):
                writer.write(result)
                if maps is not None and result.error is None:
                    maps.write(result)
                scored += result.error is None
                failed += result.error is not None
                bar.update()
    finally:
        # The rows so far stay valid JSON for a caller's own file; the command
        # discards its unfinished files instead (output_files.replacing).
        writer.close()
    return scored, failed


def _planned_places(paths: list[str]) -> tuple[list[output_files.Place], list]:
    """(inputs, outputs) as the flags and arguments name them, for the clash check."""
    inputs = [output_files.Place(f"--model={_MODEL.value}",
                                 model_cache.resolve(_MODEL.value), folder=True)]
    for path in paths:
        if os.path.isdir(path):
            inputs.append(output_files.Place(f"the input folder {path}", path, folder=True,
                                             suffixes=images.IMAGE_SUFFIXES))
        else:
            inputs.append(output_files.Place(f"the input {path}", path))
    outputs = [output_files.Place(f"--{flag.name}={flag.value}", flag.value)
               for flag in (_OUTPUT, _JSON) if flag.value and flag.value != "-"]
    if _MAPS.value:
        outputs.append(output_files.Place(f"--maps={_MAPS.value}", _MAPS.value,
                                          folder=True, suffixes=frozenset({".png"})))
    return inputs, outputs


def _open_outputs(stack: contextlib.ExitStack):
    """(csv file, JSON file or None): stdout, or files that appear complete
    when `stack` closes without error (output_files.replacing)."""
    try:
        out = sys.stdout if _OUTPUT.value == "-" else stack.enter_context(
            output_files.replacing(cli.absolute(_OUTPUT.value), newline="",
                                   encoding="utf-8"))
        json_file = (stack.enter_context(output_files.replacing(
            cli.absolute(_JSON.value), encoding="utf-8")) if _JSON.value else None)
    except OSError as error:  # A missing folder, no permission: the user's to fix.
        raise errors.UsageError(f"cannot write the output: {error}") from error
    return out, json_file


def _check_usage(paths: list[str]) -> str | None:
    """What is wrong with the arguments before any work, or None."""
    if not paths:
        return "give the files and folders to score after the flags"
    if _OUTPUT.value == "-" and sys.stdout is None:
        return ("stdout is closed, so the CSV has nowhere to go: give --output=FILE "
                "(or leave stdout open)")
    try:
        output_files.check_no_clash(*_planned_places(paths))
    except errors.UsageError as error:
        return printable(str(error))
    return None


def main(argv: list[str]) -> int:
    paths = argv[1:]
    problem = _check_usage(paths)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
    try:
        scorer = create_scorer(
            cli.absolute(model_cache.resolve(_MODEL.value)), _MODE.value, batch_size=_BATCH_SIZE.value,
            chunk=_CHUNK.value, batch_pixels=_BATCH_PIXELS.value,
            max_pixels=_MAX_PIXELS.value)
    except ValueError as error:  # ModelFolderError, or a mode the model cannot do.
        print(f"cannot score with {_MODEL.value}: {printable(str(error))}",
              file=sys.stderr)
        return 2
    try:
        maps = MapWriter(scorer, cli.absolute(_MAPS.value)) if _MAPS.value else None
    except (ValueError, OSError) as error:
        print(f"cannot write maps into {_MAPS.value}: {printable(str(error))}",
              file=sys.stderr)
        return 2
    print(f"scoring in mode {scorer.mode} (the model holds {scorer.model.parts}); "
          f"scores in {scorer.score_range}, higher is better", file=sys.stderr)
    skips = images.WalkSkips()
    try:
        with contextlib.ExitStack() as stack:
            out, json_file = _open_outputs(stack)
            scored, failed = score_paths(scorer, paths, out, json_file, skips=skips,
                                         maps=maps)
    except BrokenPipeError:
        raise  # cli.run ends quietly: the reader (`| head`) has gone.
    except errors.UsageError as error:
        print(printable(str(error)), file=sys.stderr)
        return 2
    except errors.RunFailure as error:  # A full disk: no output file is left.
        print(f"score failed: {printable(str(error))}", file=sys.stderr)
        return 1
    except OSError as error:  # Writing stdout (files fail as RunFailure or UsageError).
        failure = errors.disk_full(error, "stdout") or error
        print(f"score failed: {printable(str(failure))}", file=sys.stderr)
        return 1
    for line in skips.summary():
        print(f"not scored: {printable(line)}", file=sys.stderr)
    print(f"scored {scored} image(s); {failed} failed (see the error column)",
          file=sys.stderr)
    if maps is not None:
        print(f"wrote {scored - maps.failed} quality map(s) into {printable(str(maps.folder))}"
              + (f"; {maps.failed} could not be made" if maps.failed else ""),
              file=sys.stderr)
    return 1 if failed or not scored or (maps and maps.failed) else 0


USAGE = """\
usage: grepq score --model=DIR [flags] IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...]
       (or python -m grepq_jax.score ...)

Scores each image file, and every image under each folder, with a model folder.

example:
  grepq score --model=models/grepq photos/ extra.jpg --output=scores.csv
  grepq score --model=models/grepq photos/ --maps=maps   (a PNG per image)"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
