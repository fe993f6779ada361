"""`grepq score`: its flags, the outputs checked against the inputs before
any work, and exit codes: 0 every file scored, 1 any failed (or none found, or
a full disk), 2 bad flags, an unusable model folder or outputs that clash.
Scoring is scoring/api.py's; rows and maps are written by scoring/batch.py.
"""
import contextlib
import os
import sys

from absl import flags
from absl import logging

from grepq_jax import errors
from grepq_jax.commands import cli
from grepq_jax.formats.paths import absolute
from grepq_jax.formats import images, model_cache, output_files
from grepq_jax.scoring.batch import MapWriter, score_paths
from grepq_jax.scoring.quality_model import BATCH_PIXELS
from grepq_jax.scoring.api import MODES, create_scorer, printable

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
    "batch_pixels", BATCH_PIXELS, "At most this many pixels through the whole-image "
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
            output_files.replacing(absolute(_OUTPUT.value), newline="",
                                   encoding="utf-8"))
        json_file = (stack.enter_context(output_files.replacing(
            absolute(_JSON.value), encoding="utf-8")) if _JSON.value else None)
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
            absolute(model_cache.resolve(_MODEL.value)), _MODE.value, batch_size=_BATCH_SIZE.value,
            chunk=_CHUNK.value, batch_pixels=_BATCH_PIXELS.value,
            max_pixels=_MAX_PIXELS.value)
    except ValueError as error:  # errors.InputError, or a mode the model cannot do.
        print(f"cannot score with {_MODEL.value}: {printable(str(error))}",
              file=sys.stderr)
        return 2
    try:
        maps = MapWriter(scorer, absolute(_MAPS.value)) if _MAPS.value else None
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
