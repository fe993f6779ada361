"""The released GRepQ files -> one scoring model folder.

The authors released three files (their README links them):

    low_level_model_weights.tar   torch.save of train_llm.py's checkpoint:
                                  {"model": {"state_dict": LLModel("resnet18",
                                  head="mlp").state_dict()}, "current_iteration",
                                  "optimizer": {"state_dict": ...}}
    high_level_model_weights.pth  torch.save of the fine-tuned CLIP RN50 image
                                  tower's state_dict (train_hlm.py)
    pristine_patches_096_0.75_0.80.hdf5
                                  the selected 96x96 pristine patches
                                  (zeroshot_ll_model.pristine), see scoring/pristine.py

`package_released_grepq` converts the first into a low-level export in the
format a low-level training run writes (training/pathways/low_level.py), takes the
second as a high-level export (`grepq convert` output) or converts it with
OpenAI's RN50.pt for the text tower, and packages both with
`packing.export_model`, the pristine statistics taken from the patch file (or
from a folder of pristine images). Everything is written into a staging
folder beside `out` and renamed into place at the end, so an error leaves
nothing half-written. The PyTorch files are read without torch
(formats/pytorch/weight_files.py); the patch file needs h5py.
"""
import os
import pathlib
import shutil
import tempfile

import numpy as np

from grepq_jax.formats import encoder_export
from grepq_jax.scoring import packing
from grepq_jax.formats.paths import absolute
from grepq_jax.formats.pytorch import weight_files
from grepq_jax.formats.pytorch import resnet_weights, clip_weights

# LLModel's state_dict holds the same tensors twice, under encoder.base_model.*
# and encoder.resnet18.*; the converter reads the second (resnet_weights.py).
_LOW_LEVEL_CHECKPOINT_KEYS = ("model", "state_dict")


def read_low_level_checkpoint(path) -> tuple[dict[str, np.ndarray], int]:
    """train_llm.py's checkpoint -> ({key: float32 array} of the model, iteration).

    Read by weight_files (no torch; tensors and containers only). Raises
    ValueError naming the file and the key when it is not such a checkpoint.
    """
    loaded = weight_files.load(path)
    state, where = loaded, []
    for key in _LOW_LEVEL_CHECKPOINT_KEYS:
        if not isinstance(state, dict) or key not in state:
            raise ValueError(f"{path}: no key {'/'.join(where + [key])!r}; expected "
                             "train_llm.py's {'model': {'state_dict': ...}}")
        state, where = state[key], where + [key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: model/state_dict holds a {type(state).__name__}, "
                         "not a state dict")
    arrays = clip_weights.as_float32_arrays(state, f"{path}: model/state_dict")
    iteration = loaded.get("current_iteration", 0)
    return arrays, iteration if isinstance(iteration, int) else 0


def low_level_export_tree(state_dict: dict[str, np.ndarray], source: str
                          ) -> tuple[dict, dict]:
    """An LLModel state dict -> (tree, metadata) as training/pathways/low_level.py exports them.

    Raises ValueError naming `source` and the key that does not fit.
    """
    try:
        variables = resnet_weights.convert_grepq_low_level(state_dict)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{source}: {error.args[0]}") from None
    width = variables["params"]["encoder"]["conv1"]["kernel"].shape[-1]
    head_dim = variables["params"]["head"]["dense_2"]["kernel"].shape[-1]
    model = {"encoder": "resnet18", "width": int(width), "head_dim": int(head_dim),
             "dtype": "float32"}
    return variables, {"pathway": "low_level", "model": model}


def convert_low_level(path, out) -> dict:
    """Writes the low-level export of train_llm.py's checkpoint `path` into `out`.

    Returns its metadata ("step": the checkpoint's iteration).
    """
    state_dict, iteration = read_low_level_checkpoint(path)
    tree, metadata = low_level_export_tree(state_dict, str(path))
    metadata.update(step=iteration, converted_from=absolute(str(path)))
    encoder_export.write(str(out), tree, metadata)
    return metadata


def _high_level_export(high_level: str, staging: pathlib.Path, *, clip_file, bpe,
                       prompts) -> str:
    """An export folder as it is, or the .pth file converted into `staging`."""
    if pathlib.Path(high_level).is_dir():
        return high_level
    if not clip_file:
        raise ValueError(f"{high_level}: converting GRepQ's image tower needs OpenAI's "
                         "RN50.pt for the prompt embeddings (clip_file)")
    from grepq_jax.formats.pytorch import clip_export
    directory = staging / "high_level_export"
    clip_export.convert_high_level(directory, clip_file=clip_file, grepq_high_level=high_level,
                               bpe=bpe, prompts=prompts or clip_export.GREPQ_PROMPTS)
    return str(directory)


def package_released_grepq(out, *, low_level: str | None = None,
                           high_level: str | None = None, clip_file: str | None = None,
                           pristine_patches: str | None = None,
                           pristine_folder: str | None = None, bpe: str | None = None,
                           prompts: tuple[tuple[str, str], ...] | None = None,
                           chunk: int = 64) -> dict:
    """Writes the model folder `out` from the released GRepQ files; returns model.json.

    low_level: low_level_model_weights.tar; high_level: a high-level export
    folder (`grepq convert`) or high_level_model_weights.pth, which then needs
    clip_file (OpenAI's RN50.pt: the text tower, for the prompts) and
    converts as `grepq convert` does (no positional embedding, as GRepQ
    evaluates), embedding `prompts` ((good, bad) pairs; default GRepQ's);
    pristine_patches: pristine_patches_096_0.75_0.80.hdf5, or
    pristine_folder: images (default with neither: the embedded photographs).
    Either encoder may be left out. Raises ValueError / OSError naming the
    bad file and key, FileExistsError when `out` is not new or empty,
    ImportError without h5py for the patch file; `out` is then left as it was.
    """
    out = pathlib.Path(absolute(str(out)))
    # Made absolute once, so model.json names the files wherever it is read.
    low_level, high_level, clip_file, pristine_patches, pristine_folder = (
        path and absolute(str(path))
        for path in (low_level, high_level, clip_file, pristine_patches, pristine_folder))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        low_export = None
        if low_level:
            low_export = str(staging / "low_level_export")
            convert_low_level(low_level, low_export)
        high_export = high_level and _high_level_export(
            high_level, staging, clip_file=clip_file, bpe=bpe, prompts=prompts)
        description = packing.export_model(
            staging / "model", low_level=low_export, high_level=high_export,
            pristine_folder=pristine_folder, pristine_patches=pristine_patches, chunk=chunk)
        if out.exists():
            out.rmdir()  # Empty, checked above.
        os.replace(staging / "model", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return description
