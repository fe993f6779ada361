"""OpenAI CLIP RN50 state dicts (as NumPy arrays) -> Flax trees; no torch here.

`clip_weights.py` reads the files; this module maps their keys. Every
function takes `source` (the file's name) for its errors, which name it and
the key: a missing key, an unexpected one, or a shape that does not fit.

Image tower (`clip_rn50.ModifiedResNet`), Flax variable <- OpenAI key,
one to one (keys bare, as GRepQ saves them; a whole CLIP prefixes "visual."):
    params/{conv,bn}{1,2,3}/...                    <- {conv,bn}{1,2,3}.{weight, bias}
    batch_stats/bn{k}/{mean, var}                  <- bn{k}.{running_mean, running_var}
    .../layer{s}_{i}/{conv,bn}{k}/...              <- layer{s}.{i}.{conv,bn}{k}.{...}
    .../layer{s}_{i}/downsample_{conv,bn}/...      <- layer{s}.{i}.downsample.{0,1}.{...}
    params/attnpool/positional_embedding           <- attnpool.positional_embedding
    params/attnpool/{q,k,v,c}_proj/kernel          <- attnpool.{q,k,v,c}_proj.weight, transposed
Conv kernels go (O, I, kh, kw) -> (kh, kw, I, O). Ignored: `*.num_batches_tracked`.

Text tower (HF's FlaxCLIPTextModelWithProjection), Flax param <- OpenAI key
(`text_model/encoder/layers/{i}` as L, `transformer.resblocks.{i}` as R):
    text_model/embeddings/token_embedding/embedding     <- token_embedding.weight
    text_model/embeddings/position_embedding/embedding  <- positional_embedding
    L/self_attn/{q,k,v}_proj/{kernel, bias}             <- R.attn.in_proj_{weight, bias}, rows
                                                           [0, W), [W, 2W), [2W, 3W)
    L/self_attn/out_proj/...                            <- R.attn.out_proj.{weight, bias}
    L/layer_norm{1,2}/{scale, bias}                     <- R.ln_{1,2}.{weight, bias}
    L/mlp/fc{1,2}/...                                   <- R.mlp.c_{fc,proj}.{...}
    text_model/final_layer_norm/...                     <- ln_final.{weight, bias}
    text_projection/kernel                              <- text_projection (already (in, out))
Linear weights are transposed, (out, in) -> (in, out).
Ignored in a whole CLIP: `logit_scale` and the TorchScript archive's
`input_resolution`, `context_length`, `vocab_size`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from flax.traverse_util import unflatten_dict

from grepq_jax import errors
from grepq_jax.models import clip_rn50, clip_rn50_text
from grepq_jax.formats.pytorch.resnet_weights import convert_state_dict, torchvision_key, variable_shapes

_CLIP_EXTRAS = ("logit_scale", "input_resolution", "context_length", "vocab_size")


class ClipWeights(NamedTuple):
    """A whole OpenAI-layout CLIP ResNet, converted."""

    image_arch: clip_rn50.ModifiedResNetArch
    image_variables: dict  # {"params", "batch_stats"} of clip_rn50.ModifiedResNet
    text_arch: clip_rn50_text.TextArch
    text_params: dict  # of clip_rn50_text.text_module(text_arch)


def _required(state: Mapping[str, np.ndarray], key: str, source: str, hint: str = "") -> np.ndarray:
    if key not in state:
        raise errors.InputError(f"{source}: missing key {key!r}{hint}")
    return np.asarray(state[key])


def _count(state: Mapping, pattern: str) -> int:
    """How many distinct indices `pattern` (a regex with one group) matches in the keys."""
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


# --- image tower ---------------------------------------------------------------

def _wrong_file_hint(state: Mapping) -> str:
    """What a file without a ModifiedResNet's signature keys seems to be."""
    if "layer1.0.conv1.weight" in state or "attnpool.positional_embedding" in state:
        return ""  # a ModifiedResNet, with something missing
    if "visual.proj" in state or "proj" in state:
        return " (this is a ViT CLIP, not a ResNet one)"
    if any(k.startswith("visual.") for k in state):
        return " (this is a whole CLIP: read it with clip_weights.load_clip_rn50)"
    if any(k.startswith("encoder.resnet18.") for k in state):
        return " (this is GRepQ's low-level model: resnet_weights.convert_grepq_low_level)"
    return " (not a CLIP ModifiedResNet state dict)"


def image_arch_from_state_dict(state: Mapping[str, np.ndarray], *, source: str,
                               position_embedding: str, heads: int | None = None
                               ) -> clip_rn50.ModifiedResNetArch:
    """The architecture the weights have; heads (not in them) default to OpenAI's 32 W / 64."""
    hint = _wrong_file_hint(state)
    width = _required(state, "layer1.0.conv1.weight", source, hint).shape[0]
    positions = _required(state, "attnpool.positional_embedding", source, hint).shape[0]
    embed_dim = _required(state, "attnpool.c_proj.weight", source, hint).shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid + 1 != positions:
        raise errors.InputError(f"{source}: 'attnpool.positional_embedding' has {positions} rows, "
                                "not 1 + a square grid")
    layers = tuple(_count(state, rf"layer{s}\.(\d+)\.") for s in range(1, 5))
    try:
        return clip_rn50.ModifiedResNetArch(
            layers=layers, width=width, heads=heads or width * 32 // 64, embed_dim=embed_dim,
            image_size=grid * clip_rn50.DOWNSAMPLING, position_embedding=position_embedding)
    except ValueError as err:
        raise errors.InputError(f"{source}: {err}") from None


def _image_key(path: tuple) -> str:
    """("params", "layer2_0", "downsample_bn", "scale") -> "layer2.0.downsample.1.weight"."""
    if path[-1] == "positional_embedding":
        return "attnpool.positional_embedding"
    return torchvision_key(path)


def convert_modified_resnet(state: Mapping[str, np.ndarray], *, source: str,
                            position_embedding: str = "resize", heads: int | None = None
                            ) -> tuple[clip_rn50.ModifiedResNetArch, dict]:
    """A bare ModifiedResNet state dict (GRepQ's high-level weights, or a whole
    CLIP's `visual.*` with the prefix removed) -> (arch, {"params", "batch_stats"}).
    """
    arch = image_arch_from_state_dict(state, source=source, heads=heads,
                                      position_embedding=position_embedding)
    template = variable_shapes(clip_rn50.ModifiedResNet(arch))
    try:
        variables = convert_state_dict(state, template, _image_key,
                                       lambda k: k.endswith(".num_batches_tracked"))
    except (KeyError, ValueError) as err:
        raise errors.InputError(f"{source}: {err.args[0]}") from None
    return arch, variables


# --- text tower ----------------------------------------------------------------

def text_arch_from_state_dict(state: Mapping[str, np.ndarray], *, source: str,
                              heads: int | None = None, hidden_act: str = "quick_gelu"
                              ) -> clip_rn50_text.TextArch:
    """The text tower's shape from its weights; heads default to OpenAI's width / 64."""
    vocab_size, width = _required(state, "token_embedding.weight", source).shape
    try:
        return clip_rn50_text.TextArch(
            vocab_size=vocab_size, width=width,
            layers=_count(state, r"transformer\.resblocks\.(\d+)\."),
            heads=heads or max(1, width // 64),
            context_length=_required(state, "positional_embedding", source).shape[0],
            embed_dim=_required(state, "text_projection", source).shape[1],
            hidden_act=hidden_act)
    except ValueError as err:
        raise errors.InputError(f"{source}: {err}") from None


_TEXT_MODULES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "fc1": "c_fc", "fc2": "c_proj",
                 "out_proj": "out_proj"}
_TEXT_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _text_source(path: tuple) -> tuple[str, int | None]:
    """A Flax text param path -> (OpenAI key, which third of in_proj or None)."""
    joined = "/".join(path)
    fixed = {
        "text_model/embeddings/token_embedding/embedding": "token_embedding.weight",
        "text_model/embeddings/position_embedding/embedding": "positional_embedding",
        "text_model/final_layer_norm/scale": "ln_final.weight",
        "text_model/final_layer_norm/bias": "ln_final.bias",
        "text_projection/kernel": "text_projection",
    }
    if joined in fixed:
        return fixed[joined], None
    match = re.fullmatch(r"text_model/encoder/layers/(\d+)/(?:self_attn|mlp)?/?(\w+)/(\w+)", joined)
    if match is None:
        raise RuntimeError(f"unknown HF CLIP text param {joined}: update clip_rn50_keys")
    index, module, leaf = match.groups()
    block = f"transformer.resblocks.{index}"
    if module in ("q_proj", "k_proj", "v_proj"):
        return f"{block}.attn.in_proj_{_TEXT_LEAVES[leaf]}", "qkv".index(module[0])
    group = "attn." if module == "out_proj" else "mlp." if module.startswith("fc") else ""
    return f"{block}.{group}{_TEXT_MODULES[module]}.{_TEXT_LEAVES[leaf]}", None


def _text_value(state, path, spec, source) -> tuple[str, np.ndarray]:
    key, third = _text_source(path)
    value = _required(state, key, source)
    transpose = path[-1] == "kernel" and key != "text_projection"
    expected = spec.shape[::-1] if transpose else spec.shape
    if third is not None:  # q, k and v stacked along the output rows
        expected = (3 * expected[0], *expected[1:])
    if value.shape != tuple(expected):
        raise errors.InputError(f"{source}: {key!r} has shape {value.shape}, expected {tuple(expected)}")
    if third is not None:
        rows = expected[0] // 3
        value = value[third * rows:(third + 1) * rows]
    return key, np.ascontiguousarray(value.T if transpose else value, np.float32)


def convert_openai_text(state: Mapping[str, np.ndarray], *, source: str, heads: int | None = None,
                        hidden_act: str = "quick_gelu") -> tuple[clip_rn50_text.TextArch, dict]:
    """OpenAI CLIP text keys (no `visual.*`) -> (arch, params of text_module(arch))."""
    arch = text_arch_from_state_dict(state, source=source, heads=heads, hidden_act=hidden_act)
    params, used = {}, set()
    for path, spec in clip_rn50_text.param_shapes(arch).items():
        key, params[path] = _text_value(state, path, spec, source)
        used.add(key)
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise errors.InputError(f"{source}: unexpected keys {unexpected}")
    return arch, unflatten_dict(params)


# --- a whole CLIP --------------------------------------------------------------

def convert_openai_clip(state: Mapping[str, np.ndarray], *, source: str,
                        position_embedding: str = "resize", image_heads: int | None = None,
                        text_heads: int | None = None, hidden_act: str = "quick_gelu"
                        ) -> ClipWeights:
    """A whole OpenAI-layout CLIP ResNet state dict (OpenAI's RN50.pt, open_clip's RN50)."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        raise errors.InputError(f"{source}: no 'visual.*' keys: not a whole CLIP state dict"
                           + (" (GRepQ's high-level weights? use load_grepq_high_level)"
                              if "attnpool.positional_embedding" in state else ""))
    text = {k: v for k, v in state.items() if not k.startswith("visual.") and k not in _CLIP_EXTRAS}
    image_arch, image_variables = convert_modified_resnet(
        visual, source=f"{source} (keys under 'visual.')",
        position_embedding=position_embedding, heads=image_heads)
    text_arch, text_params = convert_openai_text(text, source=source, heads=text_heads,
                                                 hidden_act=hidden_act)
    return ClipWeights(image_arch, image_variables, text_arch, text_params)
