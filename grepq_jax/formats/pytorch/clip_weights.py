"""Reading PyTorch weight files: OpenAI's and open_clip's CLIP RN50, GRepQ's high-level model.

The files, read by `weight_files` without torch and without running anything
they hold:

- OpenAI's `RN50.pt` (what `clip.load("RN50")` downloads): a TorchScript
  archive of the whole CLIP, fp16 weights; its module's state dict is read.
- open_clip's RN50 weights: a plain state dict, bare or in a training
  checkpoint (`{"state_dict": {"module.visual...": ...}}`), same key names.
- GRepQ's released `high_level_model_weights.pth`: the fine-tuned image tower
  alone, `model.visual.state_dict()` (no `visual.` prefix).
"""
from __future__ import annotations

import pathlib

import numpy as np

from grepq_jax import errors
from grepq_jax.formats.pytorch import weight_files
from grepq_jax.models import clip_rn50
from grepq_jax.formats.pytorch.clip_rn50_keys import ClipWeights, convert_modified_resnet, convert_openai_clip


def _unwrap(loaded, path: pathlib.Path) -> dict:
    """A training checkpoint's "state_dict" and DataParallel's "module." prefix removed."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        raise errors.InputError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    if all(isinstance(k, str) and k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def as_float32_arrays(state: dict, source: str) -> dict[str, np.ndarray]:
    """{key: array}, floating ones (fp16 in RN50.pt) as float32; errors.InputError for a non-array."""
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise errors.InputError(f"{source}: {key!r} holds a {type(value).__name__}, not a tensor")
        arrays[key] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return arrays


def read_state_dict(path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch weights file as {key: array}; see the module docstring.

    Raises errors.InputError naming the file when it is missing, not a weights
    file, or a pickle that would run code.
    """
    path = pathlib.Path(path)
    try:
        loaded = weight_files.load(path)
    except weight_files.TorchFileError as error:
        raise errors.InputError(str(error)) from None
    return as_float32_arrays(_unwrap(loaded, path), str(path))


def load_clip_rn50(path, *, position_embedding: str = "resize",
                   hidden_act: str = "quick_gelu") -> ClipWeights:
    """OpenAI's RN50.pt or open_clip's RN50 weights -> both towers, converted.

    position_embedding: "resize" (OpenAI's model at 224; resized elsewhere) or
    "none" (GRepQ's evaluation). hidden_act: the text MLP's, "quick_gelu" for
    OpenAI's weights and open_clip's "-quickgelu" ones, "gelu" for the rest.
    """
    return convert_openai_clip(read_state_dict(path),
                               source=str(path), position_embedding=position_embedding,
                               hidden_act=hidden_act)


def load_grepq_high_level(path, *, position_embedding: str = "none"
                          ) -> tuple[clip_rn50.ModifiedResNetArch, dict]:
    """GRepQ's `high_level_model_weights.pth` -> (arch, {"params", "batch_stats"}).

    The positional embedding is left out by default, as GRepQ evaluates.
    """
    return convert_modified_resnet(read_state_dict(path), source=str(path),
                                   position_embedding=position_embedding)
