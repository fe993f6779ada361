"""The high-level (CLIP) model: a trainable image tower and frozen prompt embeddings.

This module, clip_rn50_text.py (OpenAI's text tower as HF's Flax CLIP text
model) and stand_ins/tiny_clip.py (a tiny random checkpoint for tests) are
the only ones that import transformers' CLIP classes (they are deprecated
upstream; 4.57.x is the last line that has them), so an upstream change
touches these three files alone.

Image-tower param tree (`ClipImageEncoder`), identical to the matching subtrees
of `FlaxCLIPModel.params`, so `vision_params_from_pretrained` only selects:

    vision_model/
      embeddings/class_embedding             (W,)
      embeddings/patch_embedding/kernel      (p, p, 3, W)
      embeddings/position_embedding/embedding (1 + (S/p)**2, W)   native grid
      pre_layrnorm/{scale, bias}             (W,)
      encoder/layers/{0..L-1}/...            HF FlaxCLIPEncoderLayer
      post_layernorm/{scale, bias}           (W,)
    visual_projection/kernel                 (W, D)

(W: tower width, S: native image size, p: patch size, D: embedding size.)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPVisionConfig,
    FlaxCLIPModel,
)
from transformers.models.clip.modeling_flax_clip import (
    FlaxCLIPEncoder,
    FlaxCLIPTextModelWithProjectionModule,
)
from transformers.utils import cached_file

from grepq_jax import errors

# OpenAI's normalisation, used when a checkpoint ships no preprocessor config.
# transformers 4.57 is pinned knowingly, as the last line with Flax CLIP; its
# notice that the Flax classes go in v5 is for us, not for a user's log.
logging.getLogger("transformers.modeling_flax_utils").addFilter(
    lambda record: "TensorFlow and JAX classes are deprecated" not in record.getMessage())

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipLoadError(errors.RunFailure):
    """A CLIP checkpoint (or its tokenizer) could not be loaded."""


@dataclasses.dataclass(frozen=True)
class ClipVisionArch:
    """Shape of a CLIP ViT image tower.

    Frozen and hashable, unlike HF's `CLIPVisionConfig`, so a module holding it
    can be a static jit argument or sit in a TrainState's `apply_fn`.
    """

    image_size: int  # native (pre-training) side S, pixels
    patch_size: int  # p, pixels
    width: int  # W, transformer hidden size
    layers: int
    heads: int
    mlp_dim: int
    embed_dim: int  # D, visual projection output size
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hf(cls, vision: CLIPVisionConfig, projection_dim: int) -> ClipVisionArch:
        return cls(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            width=vision.hidden_size,
            layers=vision.num_hidden_layers,
            heads=vision.num_attention_heads,
            mlp_dim=vision.intermediate_size,
            embed_dim=projection_dim,
            hidden_act=vision.hidden_act,
            layer_norm_eps=vision.layer_norm_eps,
        )

    def hf_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.width,
            intermediate_size=self.mlp_dim,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            projection_dim=self.embed_dim,
        )


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 resampling matrix of PyTorch's bicubic interpolate.

    Same kernel (a = -0.75), half-pixel centres (align_corners=False), clamped
    borders and no antialiasing, as HF PyTorch CLIP's `interpolate_pos_encoding`;
    `jax.image.resize` differs in all three, so we build the matrix ourselves.
    """
    a = -0.75
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src).astype(np.int64)
    t = src - base

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for k in range(4):
        np.add.at(matrix, (rows, np.clip(base - 1 + k, 0, n_in - 1)), weights[:, k])
    return matrix.astype(np.float32)


def resize_position_embedding(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Resamples ViT position embeddings to a new patch grid.

    Args:
      pos: (1 + n*n, W), the class token's row first, then an n x n grid.
      grid: (gh, gw) target patch grid, static.
    Returns:
      (1 + gh*gw, W); `pos` itself when grid == (n, n). The class token's row is
      kept; the grid is resized bicubically as in PyTorch (see _bicubic_matrix).
    """
    n = int(round((pos.shape[0] - 1) ** 0.5))
    if n * n != pos.shape[0] - 1:
        raise ValueError(f"position embedding of {pos.shape[0]} rows is not 1 + a square grid")
    if tuple(grid) == (n, n):
        return pos
    gh, gw = grid
    patch = pos[1:].reshape(n, n, -1)
    # HIGHEST: default TPU/GPU f32 matmuls round to bf16/tf32; this one is tiny.
    patch = jnp.einsum(
        "hi,wj,ijc->hwc", _bicubic_matrix(n, gh), _bicubic_matrix(n, gw), patch,
        precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.concatenate([pos[:1], patch.reshape(gh * gw, -1)], axis=0)


class _Embeddings(nn.Module):
    """Patch + class-token + position embeddings at any input size."""

    arch: ClipVisionArch
    dtype: Any = jnp.float32

    def setup(self):
        w, p = self.arch.width, self.arch.patch_size
        num_positions = (self.arch.image_size // p) ** 2 + 1
        # Names and initialisers as HF's FlaxCLIPVisionEmbeddings (same tree).
        self.class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (w,))
        self.patch_embedding = nn.Conv(
            w, (p, p), strides=(p, p), padding="VALID", use_bias=False,
            dtype=self.dtype, kernel_init=nn.initializers.normal(),
        )
        self.position_embedding = nn.Embed(num_positions, w, embedding_init=nn.initializers.normal())

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """(B, H, W, 3) -> (B, 1 + (H//p)*(W//p), width). Remainder rows/cols dropped."""
        p = self.arch.patch_size
        batch, height, width, _ = pixels.shape
        if height < p or width < p:
            raise ValueError(f"image {height}x{width} is smaller than one {p}x{p} patch")
        gh, gw = height // p, width // p
        # Bottom/right remainder is ignored, as a stride-p VALID conv would do anyway.
        patches = self.patch_embedding(pixels[:, : gh * p, : gw * p])
        patches = patches.reshape(batch, gh * gw, -1)
        cls = jnp.broadcast_to(self.class_embedding.astype(patches.dtype), (batch, 1, patches.shape[-1]))
        pos = resize_position_embedding(self.position_embedding.embedding, (gh, gw))
        return jnp.concatenate([cls, patches], axis=1) + pos.astype(patches.dtype)


class _VisionTower(nn.Module):
    """HF's FlaxCLIPVisionTransformer with our any-size embeddings; pooled output."""

    arch: ClipVisionArch
    dtype: Any = jnp.float32

    def setup(self):
        eps = self.arch.layer_norm_eps
        self.embeddings = _Embeddings(self.arch, dtype=self.dtype)
        self.pre_layrnorm = nn.LayerNorm(epsilon=eps, dtype=self.dtype)  # sic: HF's name
        self.encoder = FlaxCLIPEncoder(self.arch.hf_config(), dtype=self.dtype)
        self.post_layernorm = nn.LayerNorm(epsilon=eps, dtype=self.dtype)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        hidden = self.pre_layrnorm(self.embeddings(pixels))
        hidden = self.encoder(inputs_embeds=hidden, deterministic=True, return_dict=False)[0]
        return self.post_layernorm(hidden[:, 0])


class ClipImageEncoder(nn.Module):
    """CLIP image tower + visual projection, as a plain linen module.

    Params are float32; `dtype` is the compute dtype.
    """

    arch: ClipVisionArch
    dtype: Any = jnp.float32

    def setup(self):
        self.vision_model = _VisionTower(self.arch, dtype=self.dtype)
        self.visual_projection = nn.Dense(
            self.arch.embed_dim, use_bias=False, dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.02),
        )

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """(B, H, W, 3) pixels, already CLIP-normalised -> (B, D) projected, unnormalised.

        H, W >= patch size; any remainder past a multiple of the patch size at
        the bottom/right is ignored. Off the native size the position
        embeddings are resized bicubically (trace time, from the static shape).
        """
        return self.visual_projection(self.vision_model(pixels))


def vision_params_from_pretrained(params: dict) -> dict:
    """`FlaxCLIPModel.params` -> the `ClipImageEncoder` params (same leaves, no copy)."""
    missing = [k for k in ("vision_model", "visual_projection") if k not in params]
    if missing:
        raise KeyError(f"not a CLIP param tree: missing {missing}")
    return {"vision_model": params["vision_model"], "visual_projection": params["visual_projection"]}


@dataclasses.dataclass(frozen=True)
class ClipBundle:
    """Everything `load_clip` gives: the trainable tower and the frozen text side."""

    encoder: ClipImageEncoder
    params: dict  # initial ClipImageEncoder params (see the module docstring)
    mean: tuple[float, float, float]  # per-channel, for pixels in [0, 1]
    std: tuple[float, float, float]
    text_module: nn.Module  # HF text tower + projection, frozen
    text_params: dict
    tokenizer: Any
    max_text_len: int

    @property
    def image_size(self) -> int:
        return self.encoder.arch.image_size

    @property
    def patch_size(self) -> int:
        return self.encoder.arch.patch_size

    @property
    def embed_dim(self) -> int:
        return self.encoder.arch.embed_dim


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers at all, asked once in a second or
    two. Without it, transformers retries each file for many seconds with a
    traceback per try before failing."""
    from huggingface_hub import constants  # pylint: disable=import-outside-toplevel

    url = urllib.parse.urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
        return True
    except OSError:
        return False


def _offline_from_env() -> bool:
    # Read at call time: huggingface_hub freezes HF_HUB_OFFLINE at import.
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _load_error(name: str, cause: object) -> ClipLoadError:
    return ClipLoadError(
        f"Could not load the CLIP checkpoint {name!r}: {cause}\n"
        "Without network access (or with HF_HUB_OFFLINE=1), point the config at a local "
        "directory instead, e.g. --config.model.clip=/path/to/dir, holding a CLIP saved "
        "with save_pretrained together with its tokenizer (and, optionally, its image "
        "processor): on a machine with network, FlaxCLIPModel.from_pretrained(name)"
        ".save_pretrained(dir) and CLIPProcessor.from_pretrained(name).save_pretrained(dir)."
    )


def _normalisation(name: str, local_files_only: bool) -> tuple[tuple, tuple]:
    """CLIP's mean/std from the checkpoint's image processor config, else OpenAI's."""
    path = cached_file(
        name, "preprocessor_config.json", local_files_only=local_files_only,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return OPENAI_MEAN, OPENAI_STD
    with open(path) as f:
        cfg = json.load(f)
    return tuple(cfg.get("image_mean", OPENAI_MEAN)), tuple(cfg.get("image_std", OPENAI_STD))


def load_clip(name_or_path: str, *, dtype=jnp.float32, local_files_only: bool | None = None) -> ClipBundle:
    """Loads a CLIP checkpoint (hub name or `save_pretrained` directory).

    Args:
      name_or_path: e.g. "openai/clip-vit-base-patch32" or a local directory.
      dtype: compute dtype of the image tower (params stay float32).
      local_files_only: None follows HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE.
    Raises:
      ClipLoadError: at once, naming the checkpoint, when it cannot be reached.
    """
    if local_files_only is None:
        local_files_only = _offline_from_env()
    path = os.path.expanduser(name_or_path)
    # Path-like names are never hub ids: fail here rather than via a hub lookup.
    if (os.path.isabs(path) or path.startswith(".")) and not os.path.isdir(path):
        raise _load_error(name_or_path, "no such directory")
    if not local_files_only and not os.path.isdir(path) and not _hub_reachable():
        local_files_only = True  # The local cache, or a clear error at once.
    try:
        model, params = FlaxCLIPModel.from_pretrained(path, _do_init=False, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        mean, std = _normalisation(path, local_files_only)
        vision_params = vision_params_from_pretrained(params)
        text_params = {"text_model": params["text_model"], "text_projection": params["text_projection"]}
    except (OSError, ValueError, KeyError) as err:  # HF hub errors are OSError/ValueError
        raise _load_error(name_or_path, err) from err
    cfg = model.config
    text_config = CLIPTextConfig.from_dict({**cfg.text_config.to_dict(), "projection_dim": cfg.projection_dim})
    arch = ClipVisionArch.from_hf(cfg.vision_config, cfg.projection_dim)
    return ClipBundle(
        encoder=ClipImageEncoder(arch, dtype=dtype),
        params=jax.tree.map(jnp.asarray, vision_params),
        mean=mean,
        std=std,
        text_module=FlaxCLIPTextModelWithProjectionModule(text_config),
        text_params=jax.tree.map(jnp.asarray, text_params),
        tokenizer=tokenizer,
        max_text_len=text_config.max_position_embeddings,
    )


def encode_prompts(bundle: ClipBundle, pairs: Sequence[tuple[str, str]]) -> jax.Array:
    """Frozen text embeddings of antonym prompt pairs; call once, keep as a constant.

    Args:
      pairs: P pairs (good prompt, bad prompt), e.g. [("a good photo.", "a bad photo.")].
    Returns:
      (P, 2, D) float32, L2-normalised over D; [:, 0] good, [:, 1] bad.
    """
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"expected a non-empty list of (good, bad) prompt pairs, got {pairs!r}")
    texts = [t for pair in pairs for t in pair]
    tokens = bundle.tokenizer(
        texts, padding=True, truncation=True, max_length=bundle.max_text_len, return_tensors="np"
    )
    ids = jnp.asarray(tokens["input_ids"], jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    emb = bundle.text_module.apply(
        {"params": bundle.text_params}, ids, jnp.asarray(tokens["attention_mask"]), positions,
        return_dict=False,
    )[0].astype(jnp.float32)
    emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
    return jax.lax.stop_gradient(emb.reshape(len(pairs), 2, -1))
