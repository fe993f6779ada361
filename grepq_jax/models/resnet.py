"""ResNet encoders with torchvision's architecture and parameter layout, minus `fc`.

Module names mirror torchvision so that weights convert one-to-one
(`formats/pytorch/resnet_weights.py` holds the mapping): `conv1`, `bn1`, then blocks
`layer{1..4}_{i}`, each with `conv1`, `bn1`, `conv2`, `bn2` (`conv3`, `bn3` in a
Bottleneck) and, where the shape changes, `downsample_conv`, `downsample_bn`.
Variables: `params` (float32 whatever `dtype` is) and `batch_stats`.
"""
from functools import partial
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), not truncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel_size: int, strides: int, dtype: Any, name: str) -> nn.Conv:
    # Explicit torch padding: "SAME" would pad (0, 1), not (1, 1), at stride 2.
    pad = kernel_size // 2
    return nn.Conv(
        features, (kernel_size, kernel_size), strides=(strides, strides),
        padding=((pad, pad), (pad, pad)), use_bias=False,
        kernel_init=conv_kernel_init, dtype=dtype, name=name)


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
    # torch's momentum 0.1 is Flax's 0.9. The two-pass variance matches torch's
    # numerics; the default E[x^2] - E[x]^2 loses digits. Unlike torch, the running
    # variance is updated with the biased batch variance (a factor (n-1)/n).
    # No axis_name: under global-view jit the statistics already span the global batch.
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        use_fast_variance=False, dtype=dtype, name=name)


def _shortcut(x, features: int, strides: int, conv, norm):
    """Identity, or torchvision's conv1x1 + BN projection where the shape changes."""
    if strides == 1 and x.shape[-1] == features:
        return x
    return norm(name="downsample_bn")(conv(features, 1, strides, name="downsample_conv")(x))


class BasicBlock(nn.Module):
    """ResNet-18/34 block, 3x3 -> 3x3: (B, H, W, C) -> (B, H/strides, W/strides, features)."""
    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool):
        make_conv = partial(conv, dtype=self.dtype)
        norm = partial(batch_norm, train, self.dtype)
        y = nn.relu(norm(name="bn1")(make_conv(self.features, 3, self.strides, name="conv1")(x)))
        y = norm(name="bn2")(make_conv(self.features, 3, 1, name="conv2")(y))
        return nn.relu(y + _shortcut(x, self.features, self.strides, make_conv, norm))


class Bottleneck(nn.Module):
    """ResNet-50 block, 1x1 -> 3x3 -> 1x1 (v1.5: stride on the 3x3):
    (B, H, W, C) -> (B, H/strides, W/strides, 4 * features)."""
    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x, train: bool):
        make_conv = partial(conv, dtype=self.dtype)
        norm = partial(batch_norm, train, self.dtype)
        out_features = self.features * self.expansion
        y = nn.relu(norm(name="bn1")(make_conv(self.features, 1, 1, name="conv1")(x)))
        y = nn.relu(norm(name="bn2")(make_conv(self.features, 3, self.strides, name="conv2")(y)))
        y = norm(name="bn3")(make_conv(out_features, 1, 1, name="conv3")(y))
        return nn.relu(y + _shortcut(x, out_features, self.strides, make_conv, norm))


class ResNet(nn.Module):
    """torchvision ResNet up to the global average pool.

    `__call__(images, train)`: images (B, H, W, 3) float32 NHWC, H and W >= 32;
    returns pooled features (B, 8 * width * block_cls.expansion) float32.
    `train` selects batch statistics (and updates `batch_stats`) over running ones.
    """
    stage_sizes: Sequence[int]
    block_cls: type
    width: int = 64  # channels of conv1 and layer1; tests shrink it
    dtype: Any = jnp.float32  # compute dtype; params stay float32

    @nn.compact
    def __call__(self, images, train: bool):
        x = conv(self.width, 7, 2, self.dtype, name="conv1")(images)
        x = nn.relu(batch_norm(train, self.dtype, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for index in range(num_blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                block = self.block_cls(
                    self.width * 2**stage, strides, self.dtype, name=f"layer{stage + 1}_{index}")
                x = block(x, train)
        # Average in float32: summing H*W bfloat16 values loses precision.
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


ARCHITECTURES = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
}


def resnet(architecture: str, **kwargs) -> ResNet:
    """The ResNet named `architecture` (a key of ARCHITECTURES); kwargs go to ResNet."""
    if architecture not in ARCHITECTURES:
        raise KeyError(f"unknown ResNet {architecture!r}; known: {sorted(ARCHITECTURES)}")
    stage_sizes, block_cls = ARCHITECTURES[architecture]
    return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, **kwargs)
