"""GRepQ's low-level model: a ResNet encoder and an MLP projection head."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from grepq_jax.models.dtypes import DTYPES
from grepq_jax.models.heads import MLPHead
from grepq_jax.models.resnet import resnet


class LowLevelModel(nn.Module):
    """The PyTorch GRepQ `LLModel(encoder, head="mlp")` as a Flax module.

    `__call__(images, train)`: images (B, H, W, 3) float32 NHWC, H and W >= 32.
    Returns {"features": (B, F) pooled encoder features, "projection":
    (B, head_dim) head output}, both float32; F = 512 * width / 64 for resnet18,
    2048 * width / 64 for resnet50. GRepQ's losses and its NIQE-style quality
    score use "projection" (what the PyTorch LLModel returns).
    Variables: `params` {"encoder", "head"} and `batch_stats` {"encoder"};
    with `train=True` apply it with `mutable=["batch_stats"]`.
    """
    encoder: str = "resnet18"  # a key of resnet.ARCHITECTURES
    width: int = 64
    head_dim: int = 128
    dtype: Any = jnp.float32  # compute dtype; params stay float32

    @nn.compact
    def __call__(self, images, train: bool):
        features = resnet(self.encoder, width=self.width, dtype=self.dtype, name="encoder")(
            images, train)
        projection = MLPHead(self.head_dim, self.dtype, name="head")(features)
        return {"features": features, "projection": projection}


def make_low_level_model(model_config) -> LowLevelModel:
    """The model a config's `model` fields (or an export's copy of them, a
    dict) describe: encoder, width, head_dim and dtype (a key of DTYPES)."""
    return LowLevelModel(
        encoder=model_config["encoder"],
        width=model_config["width"],
        head_dim=model_config["head_dim"],
        dtype=DTYPES[model_config["dtype"]],
    )
