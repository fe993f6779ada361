"""Converts released PyTorch CLIP RN50 / GRepQ weights into a high-level export.

    python -m grepq_jax.convert --clip=RN50.pt \
        --grepq_high_level=high_level_model_weights.pth --out=exports/grepq_high_level

Writes a high-level export (the format of high_level_export.py, as a
training run writes it) with encoder "clip_rn50", step 0 and
"converted_from": the two files. It holds the image tower (GRepQ's fine-tuned
one with --grepq_high_level, else OpenAI's own) with its BatchNorm
statistics, and the prompt embeddings of OpenAI's frozen text tower, as GRepQ
scores with them. `configs/high_level.py:paper` trains from OpenAI's, as the
paper does. Needs torch (`pip install 'grepq_jax[convert]'`); training from the
export does not.

The tokenizer is built from OpenAI's BPE file (--bpe; by default the one the
installed `clip` or `open_clip` package ships). OpenAI's RN50.pt is a
TorchScript archive, read only when its SHA-256 is OpenAI's published one or
with --trust_torchscript (TorchScript runs code from the file).
"""
import importlib.util
import json
import pathlib
import sys

from absl import flags
from absl import logging

from grepq_jax import cli, high_level_export, released
from grepq_jax.models import clip, clip_rn50_text, torch_weights
from grepq_jax.models.clip_rn50 import POSITION_EMBEDDINGS

GREPQ_PROMPTS = (("a good photo.", "a bad photo."),)  # GRepQ's, lower-cased as the tokenizer does
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"

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
_BPE = flags.DEFINE_string("bpe", None, f"OpenAI's {BPE_FILE}; default: the installed clip or "
                           "open_clip package's.", flag_values=FLAGS)
_POSITIONS = flags.DEFINE_enum(
    "position_embedding", None, POSITION_EMBEDDINGS, "The attention pool's positional "
    "embedding; default: none with --grepq_high_level (as GRepQ scores), else resize.",
    flag_values=FLAGS)
_HIDDEN_ACT = flags.DEFINE_enum(
    "text_activation", "quick_gelu", ["quick_gelu", "gelu"], "The text MLP's activation: "
    "quick_gelu for OpenAI's and open_clip's -quickgelu weights.", flag_values=FLAGS)
_TRUST = flags.DEFINE_bool("trust_torchscript", False, "Read a TorchScript --clip file that is "
                           "not OpenAI's published RN50.pt.", flag_values=FLAGS)


def default_bpe() -> pathlib.Path:
    """OpenAI's BPE file as the `clip` or `open_clip` package installs it (not imported)."""
    for package in ("clip", "open_clip"):
        spec = importlib.util.find_spec(package)
        path = spec and spec.origin and pathlib.Path(spec.origin).with_name(BPE_FILE)
        if path and path.is_file():
            return path
    raise FileNotFoundError(f"no {BPE_FILE} found: pass --bpe=PATH (it ships with OpenAI's "
                            "clip package and with open_clip)")


def convert_high_level(out, *, clip_file, grepq_high_level=None, bpe=None,
                       position_embedding=None, hidden_act="quick_gelu",
                       trust_torchscript=False, prompts=GREPQ_PROMPTS) -> dict:
    """Writes the export (see the module docstring) into `out`; returns its metadata.

    Raises WeightsError / ValueError / OSError naming the bad file, before
    anything is written; ImportError without torch.
    """
    out = pathlib.Path(cli.absolute(str(out)))
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose a new folder")
    if position_embedding is None:
        position_embedding = "none" if grepq_high_level else "resize"
    tokenizer = clip_rn50_text.tokenizer_from_openai_bpe(bpe or default_bpe())
    weights = torch_weights.load_clip_rn50(clip_file, trust_torchscript=trust_torchscript,
                                           position_embedding=position_embedding,
                                           hidden_act=hidden_act)
    arch, variables = weights.image_arch, weights.image_variables
    if grepq_high_level:
        arch, variables = torch_weights.load_grepq_high_level(
            grepq_high_level, position_embedding=position_embedding)
    if arch.embed_dim != weights.text_arch.embed_dim:
        raise ValueError(f"{grepq_high_level}: embeds in {arch.embed_dim} dimensions, the text "
                         f"tower of {clip_file} in {weights.text_arch.embed_dim}")
    tower = clip_rn50_text.text_tower(weights.text_arch, weights.text_params, tokenizer)
    return high_level_export.write(
        str(out), encoder="clip_rn50", arch=arch, variables=variables,
        prompt_embeddings=clip_rn50_text.encode_prompts(tower, prompts),
        mean=clip.OPENAI_MEAN, std=clip.OPENAI_STD, prompts=prompts, dtype="float32", step=0,
        converted_from={
            "clip": cli.absolute(str(clip_file)),
            "grepq_high_level": grepq_high_level and cli.absolute(str(grepq_high_level))})


def _convert_from_flags() -> str:
    """Runs the conversion the flags ask for; returns what it wrote, in words."""
    if _GREPQ_LOW.value:
        description = released.package_released_grepq(
            _OUT.value, low_level=_GREPQ_LOW.value, high_level=_GREPQ.value,
            clip_file=_CLIP.value, pristine_patches=_PRISTINE_PATCHES.value,
            pristine_folder=_PRISTINE.value, bpe=_BPE.value,
            trust_torchscript=_TRUST.value)
        return f"the model folder {_OUT.value}: {json.dumps(description)}"
    if _PRISTINE_PATCHES.value or _PRISTINE.value:
        raise ValueError("--pristine_patches and --pristine need --grepq_low_level")
    if not _CLIP.value:
        raise ValueError("give --clip=RN50.pt (and --grepq_high_level), or "
                         "--grepq_low_level for a whole model folder")
    metadata = convert_high_level(
        _OUT.value, clip_file=_CLIP.value, grepq_high_level=_GREPQ.value, bpe=_BPE.value,
        position_embedding=_POSITIONS.value, hidden_act=_HIDDEN_ACT.value,
        trust_torchscript=_TRUST.value)
    return f"the high-level export {_OUT.value}: {json.dumps(metadata['arch'])}"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"unexpected arguments: {argv[1:]}", file=sys.stderr)
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
into a whole scoring model folder. Needs torch (and h5py for the patch file):
pip install -e '.[convert]'.

examples:
  grepq convert --clip=RN50.pt --out=exports/openai_rn50      # configs/high_level.py:paper
  grepq convert --grepq_low_level=low_level_model_weights.tar \\
      --grepq_high_level=high_level_model_weights.pth --clip=RN50.pt \\
      --pristine_patches=pristine_patches_096_0.75_0.80.hdf5 --out=models/grepq"""


def run_command() -> None:
    cli.run(main, FLAGS, USAGE)


if __name__ == "__main__":
    run_command()
