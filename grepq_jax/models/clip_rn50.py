"""CLIP's ModifiedResNet image tower (OpenAI's RN50 and narrower variants) in Flax linen.

OpenAI's ResNet differs from torchvision's in three places: a stem of three 3x3
convs (the first with stride 2) and a 2x2 average pool; blocks that downsample
with a 2x2 average pool (after conv2/bn2/relu, before conv3; and before the
shortcut's 1x1 conv) instead of a strided conv; and an attention pool in place
of the global average: the mean token is prepended, a positional embedding
added, and the mean token's multi-head attention output projected.

Module names mirror OpenAI's clip/model.py, so weights convert one to one
(formats/pytorch/clip_rn50_keys.py holds the mapping):

    conv1, bn1, conv2, bn2, conv3, bn3          stem: W/2, W/2, W channels
    layer{s}_{i}/conv1, bn1, conv2, bn2, conv3, bn3
    layer{s}_{i}/downsample_conv, downsample_bn where shape or stride changes
    attnpool/positional_embedding               (1 + g*g, 32 W), g = image_size // 32
    attnpool/{q,k,v}_proj/{kernel, bias}        (32 W, 32 W), (32 W,)
    attnpool/c_proj/{kernel, bias}              (32 W, D), (D,)

(W: width, 64 in RN50; D: embed_dim, 1024 in RN50.) Variables: `params`
(float32 whatever `dtype` is) and `batch_stats`.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from grepq_jax.models.clip import resize_position_embedding
from grepq_jax.models import resnet

# "resize": add the positional embedding, resized bicubically to the feature
# grid (the identity at the native size); "none": leave it out, as GRepQ's
# evaluation does (its README has users comment out that line of clip/model.py).
POSITION_EMBEDDINGS = ("resize", "none")
DOWNSAMPLING = 32  # input pixels per feature-grid cell
MIN_SIDE = 31  # the smallest input side with a 1-cell grid: ceil(31 / 2) = 16 = 2**4


@dataclasses.dataclass(frozen=True)
class ModifiedResNetArch:
    """Shape of a CLIP ModifiedResNet; the defaults are OpenAI's RN50.

    Frozen and hashable, so a module holding it can be a static jit argument.
    `dataclasses.asdict` gives its JSON form, `from_dict` reads it back.
    """

    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage
    width: int = 64  # W: stem output; stage s has W * 2**s inner channels
    heads: int = 32  # attention-pool heads (OpenAI: 32 W / 64)
    embed_dim: int = 1024  # D: attention-pool output
    image_size: int = 224  # native input side: the positional grid is image_size // 32
    position_embedding: str = "resize"  # one of POSITION_EMBEDDINGS

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        problems = []
        if len(self.layers) != 4 or min(self.layers) < 1:
            problems.append(f"layers must be 4 counts >= 1, got {self.layers}")
        if self.width < 2 or self.width % 2:
            problems.append(f"width must be even, got {self.width}")
        if self.heads < 1 or self.feature_dim % self.heads:
            problems.append(f"heads={self.heads} must divide 32 * width = {self.feature_dim}")
        if self.image_size < DOWNSAMPLING:
            problems.append(f"image_size must be >= {DOWNSAMPLING}, got {self.image_size}")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            problems.append(f"position_embedding must be one of {POSITION_EMBEDDINGS}, "
                            f"got {self.position_embedding!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def feature_dim(self) -> int:
        """Channels entering the attention pool: 8 W inner channels x 4 expansion."""
        return self.width * 32

    @property
    def grid(self) -> int:
        """Side of the stored positional grid (7 for RN50)."""
        return self.image_size // DOWNSAMPLING

    @classmethod
    def from_dict(cls, fields: dict) -> ModifiedResNetArch:
        return cls(**{**fields, "layers": tuple(fields["layers"])})


def _avg_pool(x: jax.Array, size: int) -> jax.Array:
    """torch's AvgPool2d(size): size x size windows, stride size, odd edges dropped."""
    if size == 1:
        return x
    return nn.avg_pool(x, (size, size), strides=(size, size), padding="VALID")


class Bottleneck(nn.Module):
    """OpenAI's bottleneck: (B, H, W, C) -> (B, H // strides, W // strides, 4 features).

    All convs have stride 1; a `strides` x `strides` average pool comes after
    conv2/bn2/relu and, on the shortcut, before its 1x1 conv.
    """

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(resnet.conv, dtype=self.dtype)
        norm = partial(resnet.batch_norm, train, self.dtype)
        out_features = self.features * self.expansion
        y = nn.relu(norm(name="bn1")(conv(self.features, 1, 1, name="conv1")(x)))
        y = nn.relu(norm(name="bn2")(conv(self.features, 3, 1, name="conv2")(y)))
        y = norm(name="bn3")(conv(out_features, 1, 1, name="conv3")(_avg_pool(y, self.strides)))
        if self.strides > 1 or x.shape[-1] != out_features:
            x = _avg_pool(x, self.strides)
            x = norm(name="downsample_bn")(conv(out_features, 1, 1, name="downsample_conv")(x))
        return nn.relu(y + x)


class AttentionPool(nn.Module):
    """Mean token + positional embedding, one query (the mean) over all tokens.

    (B, h, w, C) -> (B, D). Separate q/k/v projections and an output
    projection c_proj, as OpenAI's AttentionPool2d.
    """

    arch: ModifiedResNetArch
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        # The mean in float32: summing h*w bfloat16 values loses precision.
        mean = jnp.mean(tokens.astype(jnp.float32), axis=1, keepdims=True)
        tokens = jnp.concatenate([mean.astype(tokens.dtype), tokens], axis=1)
        positions = self.param(
            "positional_embedding", nn.initializers.normal(channels ** -0.5),
            (self.arch.grid ** 2 + 1, channels))
        if self.arch.position_embedding == "resize":
            positions = resize_position_embedding(positions, (height, width))
            tokens = tokens + positions.astype(tokens.dtype)
        dense = partial(nn.Dense, dtype=self.dtype,
                        kernel_init=nn.initializers.normal(channels ** -0.5))
        head_dim = channels // self.arch.heads

        def heads(name, inputs):  # (B, L, C) -> (B, L, heads, C / heads)
            projected = dense(channels, name=name)(inputs)
            return projected.reshape(*projected.shape[:2], self.arch.heads, head_dim)

        attended = nn.dot_product_attention(
            heads("q_proj", tokens[:, :1]), heads("k_proj", tokens), heads("v_proj", tokens),
            dtype=self.dtype)
        return dense(self.arch.embed_dim, name="c_proj")(attended.reshape(batch, channels))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower: (B, H, W, 3) CLIP-normalised pixels -> (B, D).

    Any H, W >= MIN_SIDE; the feature grid is about (H / 32, W / 32). Off the native
    size the positional embedding is resized or left out (arch.position_embedding).
    `train` normalises with batch statistics and updates `batch_stats`, as
    the original trains with model.train().
    """

    arch: ModifiedResNetArch = ModifiedResNetArch()
    dtype: Any = jnp.float32  # compute dtype; params stay float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        if min(images.shape[1:3]) < MIN_SIDE:
            raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} pixels are below "
                             f"the {MIN_SIDE}x{MIN_SIDE} that CLIP's ResNet needs")
        conv = partial(resnet.conv, dtype=self.dtype)
        norm = partial(resnet.batch_norm, train, self.dtype)
        width = self.arch.width
        x = images.astype(self.dtype)
        for index, (features, strides) in enumerate([(width // 2, 2), (width // 2, 1), (width, 1)]):
            x = conv(features, 3, strides, name=f"conv{index + 1}")(x)
            x = nn.relu(norm(name=f"bn{index + 1}")(x))
        x = _avg_pool(x, 2)
        for stage, blocks in enumerate(self.arch.layers):
            for index in range(blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = Bottleneck(width * 2**stage, strides, self.dtype,
                               name=f"layer{stage + 1}_{index}")(x, train)
        return AttentionPool(self.arch, self.dtype, name="attnpool")(x)


def feature_grid(height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid the attention pool sees for an H x W input."""
    def side(n):
        n = (n + 1) // 2  # the stride-2 3x3 conv with padding 1
        return n // 16  # four 2x2 average pools, each flooring
    return side(height), side(width)

