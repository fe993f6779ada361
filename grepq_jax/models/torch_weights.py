"""Reading PyTorch weight files: OpenAI's and open_clip's CLIP RN50, GRepQ's high-level model.

torch is imported inside these functions only (`pip install 'grepq_jax[convert]'`);
nothing else in grepq_jax needs it. The files:

- OpenAI's `RN50.pt` (what `clip.load("RN50")` downloads): a TorchScript
  archive of the whole CLIP, fp16 weights. Loading TorchScript runs code
  from the file, so it is done only for a file whose SHA-256 is OpenAI's
  published one (`OPENAI_SHA256`) or with `trust_torchscript=True`: use it
  only on files from a source you trust.
- open_clip's RN50 weights: a plain state dict, bare or in a training
  checkpoint (`{"state_dict": {"module.visual...": ...}}`), same key names.
- GRepQ's released `high_level_model_weights.pth`: the fine-tuned image tower
  alone, `model.visual.state_dict()` (no `visual.` prefix).
Everything but TorchScript is read with `torch.load(weights_only=True)`,
which unpickles tensors and containers only.
"""
from __future__ import annotations

import hashlib
import pathlib
import zipfile

import numpy as np

from grepq_jax.models import clip_rn50
from grepq_jax.models.clip_rn50_convert import (ClipWeights, WeightsError, convert_modified_resnet,
                                                convert_openai_clip)

# The SHA-256 that OpenAI's download URL carries and clip.load checks.
OPENAI_SHA256 = {
    "RN50": "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
}


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError("reading PyTorch weight files needs torch: "
                          "pip install 'grepq_jax[convert]'") from None
    return torch


def _is_torchscript(path: pathlib.Path) -> bool:
    """TorchScript archives are zips holding code/ and constants.pkl; torch.save's hold neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name
                   for name in archive.namelist())


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_torchscript(torch, path: pathlib.Path, trust: bool) -> dict:
    if not trust and sha256(path) not in OPENAI_SHA256.values():
        raise WeightsError(
            f"{path}: a TorchScript archive that is not OpenAI's published RN50.pt; loading "
            "TorchScript runs code from the file: pass trust_torchscript=True only if you trust it")
    try:
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError as err:
        raise WeightsError(f"{path}: unreadable TorchScript archive ({err})") from None


def _unwrap(loaded, path: pathlib.Path) -> dict:
    """A training checkpoint's "state_dict" and DataParallel's "module." prefix removed."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    if all(isinstance(k, str) and k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def _as_numpy(torch, state: dict, path: pathlib.Path) -> dict[str, np.ndarray]:
    """Tensors -> NumPy; floating ones (fp16 in RN50.pt) as float32."""
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: {key!r} holds a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        arrays[key] = (value.float() if value.is_floating_point() else value).numpy()
    return arrays


def read_state_dict(path, *, trust_torchscript: bool = False) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch weights file as {key: array}; see the module docstring.

    Raises WeightsError naming the file when it is missing, not a weights
    file, or an untrusted TorchScript archive; ImportError without torch.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    torch = _import_torch()
    if _is_torchscript(path):
        return _as_numpy(torch, _load_torchscript(torch, path, trust_torchscript), path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not its own
        raise WeightsError(f"{path}: not a PyTorch weights file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return _as_numpy(torch, _unwrap(loaded, path), path)


def load_clip_rn50(path, *, trust_torchscript: bool = False, position_embedding: str = "resize",
                   hidden_act: str = "quick_gelu") -> ClipWeights:
    """OpenAI's RN50.pt or open_clip's RN50 weights -> both towers, converted.

    position_embedding: "resize" (OpenAI's model at 224; resized elsewhere) or
    "none" (GRepQ's evaluation). hidden_act: the text MLP's, "quick_gelu" for
    OpenAI's weights and open_clip's "-quickgelu" ones, "gelu" for the rest.
    """
    return convert_openai_clip(read_state_dict(path, trust_torchscript=trust_torchscript),
                               source=str(path), position_embedding=position_embedding,
                               hidden_act=hidden_act)


def load_grepq_high_level(path, *, position_embedding: str = "none"
                          ) -> tuple[clip_rn50.ModifiedResNetArch, dict]:
    """GRepQ's `high_level_model_weights.pth` -> (arch, {"params", "batch_stats"}).

    The positional embedding is left out by default, as GRepQ evaluates.
    """
    return convert_modified_resnet(read_state_dict(path), source=str(path),
                                   position_embedding=position_embedding)
