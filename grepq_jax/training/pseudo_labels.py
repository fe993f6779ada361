"""In-batch quality pseudo-labels from CLIP prompts, and the high/low groups.

Plain jnp with static shapes: jit-able, and correct on a globally sharded batch
(the sort is over the global batch, so groups span devices).
"""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


def _l2_normalise(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _replicated(x: jax.Array) -> jax.Array:
    # Meshes with Explicit axes (jax.make_mesh's default) refuse to sort along
    # a sharded axis; gather the (B,) labels first. No-op otherwise.
    sharding = jax.typeof(x).sharding
    if any(axis is not None for axis in sharding.spec):
        x = jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))
    return x


def quality_pseudo_labels(image_emb: jax.Array, prompt_emb: jax.Array, temperature: float = 0.1) -> jax.Array:
    """Soft quality labels: how much nearer each image is to "good" than to "bad".

    Args:
      image_emb: (B, D) image embeddings (any norm).
      prompt_emb: (P, 2, D) prompt embeddings, [:, 0] good, [:, 1] bad.
      temperature: divides the cosine margin (the paper's 0.1).
    Returns:
      (B,) float32 in (0, 1): sigmoid(mean_p(cos_good_p - cos_bad_p) / temperature).
      Pairs are combined by averaging their cosine margins before the sigmoid,
      so P = 1 is exactly the paper's label and no single saturated pair
      dominates the ranking.
    """
    img = _l2_normalise(image_emb.astype(jnp.float32))
    prompts = _l2_normalise(prompt_emb.astype(jnp.float32))
    # HIGHEST: bf16-rounded matmuls would blur small margins into ties.
    cos = jnp.einsum("bd,pkd->bpk", img, prompts, precision=jax.lax.Precision.HIGHEST)
    margin = jnp.mean(cos[..., 0] - cos[..., 1], axis=-1)
    return jax.nn.sigmoid(margin / temperature)


def split_quality_groups(q: jax.Array, group_size: int) -> tuple[jax.Array, jax.Array]:
    """Indices of the `group_size` highest- and lowest-quality images.

    Args:
      q: (B,) pseudo-labels.
      group_size: G, static, with 2 * G <= B (paper: B = 128, G = 4).
    Returns:
      hi_idx (G,) int32, best first; lo_idx (G,) int32, worst first. Ties follow
      the original code: one stable ascending argsort, lo from its head (lower
      index first) and hi from its tail (higher index first).
    """
    if not 0 < 2 * group_size <= q.shape[0]:
        raise ValueError(f"need 0 < 2 * group_size <= batch, got G={group_size}, B={q.shape[0]}")
    order = jnp.argsort(_replicated(q), stable=True)
    return order[::-1][:group_size].astype(jnp.int32), order[:group_size].astype(jnp.int32)
