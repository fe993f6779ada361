"""GRepQ's projection heads: the low-level encoder's MLP and the high-level
CLIP tower's, both used by the contrastive losses only."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _torch_linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
    """nn.Dense initialised like torch.nn.Linear: weight and bias ~ U(+-1/sqrt(fan_in))."""
    bound = fan_in ** -0.5

    def init(key, shape, param_dtype=jnp.float32):
        return jax.random.uniform(key, shape, param_dtype, -bound, bound)

    return nn.Dense(features, kernel_init=init, bias_init=init, dtype=dtype, name=name)


class MLPHead(nn.Module):
    """Linear(F, F) -> ReLU -> Linear(F, out_dim): (B, F) -> (B, out_dim) float32.

    The layers are named `dense_0` and `dense_2` after their indices in the
    original PyTorch `head = nn.Sequential(Linear, ReLU, Linear)`.
    """
    out_dim: int = 128
    dtype: Any = jnp.float32  # compute dtype; params stay float32

    @nn.compact
    def __call__(self, features):
        width = features.shape[-1]
        x = nn.relu(_torch_linear(width, width, self.dtype, name="dense_0")(features))
        x = _torch_linear(self.out_dim, width, self.dtype, name="dense_2")(x)
        return x.astype(jnp.float32)


class ProjectionHead(nn.Module):
    """Dense + ReLU on the image embedding, for the group-contrastive loss only."""

    features: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, D) -> (B, features), non-negative."""
        return nn.relu(nn.Dense(self.features)(x))
