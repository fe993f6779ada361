"""The two GRepQ training losses, as pure jit-able functions.

Both are written in log-sum-exp form so that large similarities or tiny FSIM
weights never overflow or take the log of zero.
"""

import jax
import jax.numpy as jnp

# The original code clamps feature norms at this value before dividing.
_NORM_EPS = 1e-8


def l2_normalise(x: jax.Array, axis: int = -1) -> jax.Array:
    """Unit-length rows, with norms clamped as the original code does."""
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / jnp.maximum(norm, _NORM_EPS)


def quality_aware_contrastive_loss(
    f1: jax.Array, f2: jax.Array, sim: jax.Array, tau: float = 0.5
) -> jax.Array:
    """Quality-aware contrastive loss of the low-level encoder.

    Args:
        f1: (B, V, C) features of the anchor views of B groups of V versions.
        f2: (B, V, C) features of the augmented views, version for version.
        sim: (B, V, V) FSIM similarities between versions, ones on the diagonal.
        tau: temperature.

    Returns:
        Scalar: the mean over rows of -log(sum_j a_ij e^S_ij / sum_j e^S_ij),
        plus the same over columns, with a = 2 - 2 / (1 + sim^2) and
        S = <f1_i, f2_j> / tau on unit-normalised features.
    """
    logits = (
        jnp.einsum("bic,bjc->bij", l2_normalise(f1), l2_normalise(f2)) / tau
    )
    # 2 - 2 / (1 + s^2) == 2 s^2 / (1 + s^2): no cancellation for small s.
    sim = sim.astype(logits.dtype)
    alpha = 2.0 * sim**2 / (1.0 + sim**2)

    def side(axis):
        return jax.nn.logsumexp(logits, axis=axis) - jax.nn.logsumexp(
            logits, axis=axis, b=alpha
        )

    return jnp.mean(side(-1)) + jnp.mean(side(-2))


def group_contrastive_loss(
    z_a: jax.Array, z_b: jax.Array, temperature: float = 0.5
) -> jax.Array:
    """Group-contrastive loss of the high-level encoder.

    Args:
        z_a: (G, D) projected features of one quality group (G >= 2).
        z_b: (G, D) projected features of the other group.
        temperature: softmax temperature t.

    Returns:
        Scalar: the mean over all 2G members of
        -log(e^(pos/t) / (e^(pos/t) + sum_neg e^(sim/t))), where pos is a member's
        mean cosine similarity to the other members of its own group and the
        negatives are its similarities to every member of the other group.
    """
    group_size = z_a.shape[0]
    if z_b.shape[0] != group_size or group_size < 2:
        raise ValueError(
            f"groups must have the same size >= 2, got {z_a.shape} and {z_b.shape}"
        )
    z_a, z_b = l2_normalise(z_a), l2_normalise(z_b)
    off_diagonal = 1.0 - jnp.eye(group_size, dtype=z_a.dtype)

    def member_losses(own, other):
        within = own @ own.T
        positive = jnp.sum(within * off_diagonal, axis=1) / (group_size - 1)
        logits = jnp.concatenate([positive[:, None], own @ other.T], axis=1)
        return (
            jax.nn.logsumexp(logits / temperature, axis=1)
            - positive / temperature
        )

    return jnp.mean(
        jnp.concatenate([member_losses(z_a, z_b), member_losses(z_b, z_a)])
    )
