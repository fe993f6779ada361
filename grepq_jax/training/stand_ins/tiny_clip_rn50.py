"""A tiny random CLIP ResNet (image tower + text tower) that stands in for
OpenAI's RN50 in tests and offline smoke runs.

What `configs/high_level.py:tiny_rn50` trains: offline, the weights drawn
with NumPy (seeded; no init to compile). Not a quality model.

    image tower  ModifiedResNetArch(layers (1, 1, 1, 1), width 8, 2 pool heads,
                 embed_dim 16, native size 64)
    text tower   width 32, 2 layers, 2 heads, context 16, projection to 16,
                 with `tiny_clip.tiny_tokenizer()`'s vocabulary
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax.traverse_util import unflatten_dict

from grepq_jax.models import clip_rn50, clip_rn50_text
from grepq_jax.formats.pytorch.resnet_weights import variable_shapes
from grepq_jax.training.stand_ins import tiny_clip

IMAGE_ARCH = clip_rn50.ModifiedResNetArch(layers=(1, 1, 1, 1), width=8, heads=2, embed_dim=16,
                                          image_size=64)
TEXT_WIDTH, TEXT_LAYERS, TEXT_HEADS, CONTEXT = 32, 2, 2, 16


def _draw(path: tuple, shape: tuple, rng: np.random.RandomState) -> np.ndarray:
    """One variable, named by its path, at a scale that keeps features O(1).

    BatchNorm and LayerNorm scales, shifts and running statistics are away from
    (1, 0), so that a test comparing two implementations sees every one of them.
    """
    name = path[-1]
    if name == "var":
        value = rng.uniform(0.5, 1.5, shape)
    elif name == "mean":
        value = rng.normal(0.0, 0.2, shape)
    elif name == "scale":
        value = rng.uniform(0.5, 1.5, shape)
    elif name == "bias":
        value = rng.normal(0.0, 0.1, shape)
    elif name == "kernel":  # fan-in: every axis but the output one
        value = rng.normal(0.0, np.prod(shape[:-1]) ** -0.5, shape)
    else:  # positional and token embeddings
        value = rng.normal(0.0, 1.0, shape)
    return value.astype(np.float32)


def random_variables(shapes: dict, seed: int) -> dict:
    """{path: ShapeDtypeStruct} (flat) -> the nested tree of seeded draws."""
    rng = np.random.RandomState(seed)  # NumPy keeps RandomState's streams frozen
    return unflatten_dict({path: _draw(path, spec.shape, rng) for path, spec in shapes.items()})


def text_arch(vocab_size: int) -> clip_rn50_text.TextArch:
    return clip_rn50_text.TextArch(vocab_size=vocab_size, width=TEXT_WIDTH, layers=TEXT_LAYERS,
                                   heads=TEXT_HEADS, context_length=CONTEXT,
                                   embed_dim=IMAGE_ARCH.embed_dim)


def tiny_clip_rn50(prompts: Sequence[tuple[str, str]], seed: int = 0
                   ) -> tuple[clip_rn50.ModifiedResNetArch, dict, jax.Array]:
    """(arch, {"params", "batch_stats"} of the image tower, (P, 2, 16) prompt embeddings).

    The prompts go through the tiny random text tower, as OpenAI's text tower
    embeds them in a converted RN50.
    """
    variables = random_variables(variable_shapes(clip_rn50.ModifiedResNet(IMAGE_ARCH)), seed)
    tokenizer = tiny_clip.tiny_tokenizer()
    arch = text_arch(len(tokenizer))
    params = random_variables(clip_rn50_text.param_shapes(arch), seed + 1)
    tower = clip_rn50_text.text_tower(arch, params, tokenizer)
    return IMAGE_ARCH, variables, clip_rn50_text.encode_prompts(tower, prompts)

