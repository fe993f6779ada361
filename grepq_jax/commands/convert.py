"""`grepq convert`: its flags and exit codes. With --clip (and
--grepq_high_level) it writes a high-level export
(formats/pytorch/clip_export.py); with --grepq_low_level, a whole model folder
from the released GRepQ files (released/packaging.py).
"""
import json
import pathlib
import sys

from absl import flags
from absl import logging

from grepq_jax.commands import cli
from grepq_jax.released import packaging
from grepq_jax.formats.pytorch import clip_export
from grepq_jax.models.clip_rn50 import POSITION_EMBEDDINGS

PROMPT_SEPARATOR = "|"

FLAGS = flags.FlagValues()
_CLIP = flags.DEFINE_string(
    "clip", None, "OpenAI's RN50.pt, or open_clip's RN50 weights: the text tower (and the "
    "image tower without --grepq_high_level).", flag_values=FLAGS)
_GREPQ_LOW = flags.DEFINE_string(
    "grepq_low_level", None, "GRepQ's low_level_model_weights.tar: with it, --out becomes a "
    "whole scoring model folder (both encoders and the pristine statistics), not an export.",
    flag_values=FLAGS)
_PRISTINE_PATCHES = flags.DEFINE_string(
    "pristine_patches", None, "With --grepq_low_level: the original's pristine patch file "
    "(pristine_patches_096_0.75_0.80.hdf5) for the zero-shot statistics.", flag_values=FLAGS)
_PRISTINE = flags.DEFINE_string(
    "pristine", None, "With --grepq_low_level: a folder of pristine images instead "
    "(default with neither: the embedded photographs).", flag_values=FLAGS)
_GREPQ = flags.DEFINE_string(
    "grepq_high_level", None, "GRepQ's high_level_model_weights.pth: the fine-tuned image tower.",
    flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "The folder to write (new or empty): a high-level "
                           "export, or with --grepq_low_level a model folder.",
                           required=True, flag_values=FLAGS)
_BPE = flags.DEFINE_string("bpe", None, "OpenAI's bpe_simple_vocab_16e6.txt.gz; default: the "
                           "copy shipped in the package.", flag_values=FLAGS)
_PROMPTS = flags.DEFINE_string(
    "prompts", None, "The antonym prompts to embed: 'GOOD|BAD' (e.g. \"A good photo.|A bad "
    "photo.\"), or a text file of such lines, one pair each; default: GRepQ's pair.",
    flag_values=FLAGS)
_POSITIONS = flags.DEFINE_enum(
    "position_embedding", None, POSITION_EMBEDDINGS, "The attention pool's positional "
    "embedding; default: none with --grepq_high_level (as GRepQ scores), else resize.",
    flag_values=FLAGS)
_HIDDEN_ACT = flags.DEFINE_enum(
    "text_activation", "quick_gelu", ["quick_gelu", "gelu"], "The text MLP's activation: "
    "quick_gelu for OpenAI's and open_clip's -quickgelu weights.", flag_values=FLAGS)


def prompt_pairs(value: str) -> tuple[tuple[str, str], ...]:
    """--prompts' value -> ((good, bad), ...): one 'GOOD|BAD' pair, or a file of such lines.

    Raises ValueError naming the file and line, or the value, when a pair is malformed.
    """
    path = pathlib.Path(value)
    if path.is_file():
        lines = [(f"{path}:{number}", line) for number, line in
                 enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        if not lines:
            raise ValueError(f"{path}: no prompt pairs in it (--prompts)")
    elif PROMPT_SEPARATOR in value:
        lines = [(f"--prompts={value}", value)]
    else:
        raise ValueError(f"--prompts={value}: no such file, and not 'GOOD|BAD'")
    pairs = []
    for where, line in lines:
        parts = [part.strip() for part in line.split(PROMPT_SEPARATOR)]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{where}: expected 'GOOD|BAD', two prompts and one "
                             f"{PROMPT_SEPARATOR!r}, got {line!r}")
        pairs.append(tuple(parts))
    return tuple(pairs)


def _check_inputs_exist(named_paths) -> None:
    """The first of (flag, path, is_folder) whose path is missing, named: before any work."""
    for flag, path, is_folder in named_paths:
        if path and not (pathlib.Path(path).is_dir() if is_folder else
                         pathlib.Path(path).is_file()):
            raise ValueError(f"{path}: no such {'folder' if is_folder else 'file'} (--{flag})")


def _input_flags() -> list[tuple[str, str | None, bool]]:
    """The input flags in the order of the usage line's form the flags choose."""
    tail = [("bpe", _BPE.value, False)]  # --prompts, last, is checked as it is read.
    high_level_is_folder = bool(_GREPQ.value) and pathlib.Path(_GREPQ.value).is_dir()
    if _GREPQ_LOW.value:
        return [("grepq_low_level", _GREPQ_LOW.value, False),
                ("grepq_high_level", _GREPQ.value, high_level_is_folder),
                ("clip", _CLIP.value, False),
                ("pristine_patches", _PRISTINE_PATCHES.value, False),
                ("pristine", _PRISTINE.value, True), *tail]
    return [("clip", _CLIP.value, False), ("grepq_high_level", _GREPQ.value, False), *tail]


def _convert_from_flags() -> str:
    """Runs the conversion the flags ask for; returns what it wrote, in words."""
    _check_inputs_exist(_input_flags())
    prompts = prompt_pairs(_PROMPTS.value) if _PROMPTS.value else clip_export.GREPQ_PROMPTS
    if _GREPQ_LOW.value:
        description = packaging.package_released_grepq(
            _OUT.value, low_level=_GREPQ_LOW.value, high_level=_GREPQ.value,
            clip_file=_CLIP.value, pristine_patches=_PRISTINE_PATCHES.value,
            pristine_folder=_PRISTINE.value, bpe=_BPE.value, prompts=prompts)
        return f"the model folder {_OUT.value}: {json.dumps(description)}"
    if _PRISTINE_PATCHES.value or _PRISTINE.value:
        raise ValueError("--pristine_patches and --pristine need --grepq_low_level")
    if not _CLIP.value:
        raise ValueError("give --clip=RN50.pt (and --grepq_high_level), or "
                         "--grepq_low_level for a whole model folder")
    metadata = clip_export.convert_high_level(
        _OUT.value, clip_file=_CLIP.value, grepq_high_level=_GREPQ.value, bpe=_BPE.value,
        position_embedding=_POSITIONS.value, hidden_act=_HIDDEN_ACT.value, prompts=prompts)
    return f"the high-level export {_OUT.value}: {json.dumps(metadata['arch'])}"


def main(argv: list[str]) -> int:
    if cli.unexpected_arguments(argv):
        return 2
    logging.set_verbosity(logging.WARNING)  # Orbax logs every write at INFO.
    try:
        written = _convert_from_flags()
    except ImportError as error:
        print(f"convert failed: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # Bad or missing files: the user's to fix.
        print(f"convert failed: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written}", file=sys.stderr)
    return 0


USAGE = """\
usage: grepq convert --clip=RN50.pt [--grepq_high_level=FILE] --out=DIR [flags]
       grepq convert --grepq_low_level=FILE [--grepq_high_level=FILE --clip=RN50.pt]
           [--pristine_patches=FILE | --pristine=DIR] --out=DIR
       (or python -m grepq_jax.convert ...)

Converts OpenAI's / open_clip's CLIP RN50 and GRepQ's released weights: into a
high-level export (for training or grepq export), or with --grepq_low_level
into a whole scoring model folder. Needs no torch: the files are read without
running anything they hold; h5py reads the patch file (pip install -e '.[convert]').

examples:
  grepq convert --clip=RN50.pt --out=exports/openai_rn50      # configs/high_level.py:paper
  grepq convert --grepq_low_level=low_level_model_weights.tar \\
      --grepq_high_level=high_level_model_weights.pth --clip=RN50.pt \\
      --pristine_patches=pristine_patches_096_0.75_0.80.hdf5 --out=models/grepq"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
