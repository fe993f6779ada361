"""Both losses against direct NumPy transcriptions of their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grepq_jax.training import losses


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def numpy_quality_aware(f1, f2, sim, tau):
    """Literal form of the definition, in float64, with explicit loops."""
    f1, f2 = _unit(f1.astype(np.float64)), _unit(f2.astype(np.float64))
    alpha = 2.0 - 2.0 / (1.0 + sim.astype(np.float64) ** 2)
    rows, cols = [], []
    for b in range(f1.shape[0]):
        s = np.exp(f1[b] @ f2[b].T / tau)
        w = alpha[b] * s
        rows += list(-np.log(w.sum(1) / s.sum(1)))
        cols += list(-np.log(w.sum(0) / s.sum(0)))
    return np.mean(rows) + np.mean(cols)


def numpy_group_contrastive(z_a, z_b, t):
    z = _unit(np.concatenate([z_a, z_b]).astype(np.float64))
    g = len(z_a)
    total = 0.0
    for i in range(2 * g):
        own = range(0, g) if i < g else range(g, 2 * g)
        other = range(g, 2 * g) if i < g else range(0, g)
        pos = np.mean([z[i] @ z[j] for j in own if j != i])
        neg = sum(np.exp(z[i] @ z[j] / t) for j in other)
        total += -np.log(np.exp(pos / t) / (np.exp(pos / t) + neg))
    return total / (2 * g)


def _symmetric_similarity(rng, b, v):
    a = rng.uniform(0.3, 1.0, size=(b, v, v))
    a = (a + a.transpose(0, 2, 1)) / 2
    a[:, np.arange(v), np.arange(v)] = 1.0
    return a.astype(np.float32)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_quality_aware_matches_numpy(tau):
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(3, 9, 16)).astype(np.float32)
    f2 = rng.normal(size=(3, 9, 16)).astype(np.float32)
    sim = _symmetric_similarity(rng, 3, 9)
    got = jax.jit(losses.quality_aware_contrastive_loss, static_argnames="tau")(
        f1, f2, sim, tau=tau
    )
    # float32 against float64: a few ulps of a value around 4.
    np.testing.assert_allclose(
        got, numpy_quality_aware(f1, f2, sim, tau), rtol=1e-5
    )


def test_quality_aware_is_stable_and_differentiable():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(2, 9, 8)).astype(np.float32)
    sim = _symmetric_similarity(rng, 2, 9)
    sim[:, 0, 1:] = sim[:, 1:, 0] = 0.0  # zero weights: log(0) in a naive form
    # A tiny temperature overflows exp() in float32 if not done in log space.
    loss, grad = jax.value_and_grad(losses.quality_aware_contrastive_loss)(
        f, f, sim, tau=1e-3
    )
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_quality_aware_prefers_similarity_ordered_features():
    """Features whose similarities follow FSIM give a lower loss than shuffled."""
    rng = np.random.default_rng(2)
    quality = np.linspace(0, 1, 9)
    sim = np.exp(-np.abs(quality[:, None] - quality[None, :]) * 3)[None]
    angle = quality * np.pi / 2
    ordered = np.stack([np.cos(angle), np.sin(angle)], -1)[None]
    shuffled = ordered[:, rng.permutation(9)]
    loss = losses.quality_aware_contrastive_loss
    assert loss(ordered, ordered, sim) < loss(shuffled, shuffled, sim)


@pytest.mark.parametrize("group_size,t", [(4, 0.5), (2, 0.5), (5, 0.1)])
def test_group_contrastive_matches_numpy(group_size, t):
    rng = np.random.default_rng(group_size)
    z_a = rng.normal(size=(group_size, 12)).astype(np.float32)
    z_b = rng.normal(size=(group_size, 12)).astype(np.float32)
    got = jax.jit(losses.group_contrastive_loss, static_argnames="temperature")(
        z_a, z_b, temperature=t
    )
    np.testing.assert_allclose(
        got, numpy_group_contrastive(z_a, z_b, t), rtol=1e-5
    )


def test_group_contrastive_separated_groups_score_lower():
    rng = np.random.default_rng(3)
    centre = rng.normal(size=8)
    tight_a = centre + 0.05 * rng.normal(size=(4, 8))
    tight_b = -centre + 0.05 * rng.normal(size=(4, 8))
    mixed = rng.normal(size=(8, 8))
    separated = losses.group_contrastive_loss(tight_a, tight_b)
    assert separated < losses.group_contrastive_loss(mixed[:4], mixed[4:])


def test_group_contrastive_rejects_bad_groups():
    with pytest.raises(ValueError, match="same size"):
        losses.group_contrastive_loss(jnp.ones((3, 4)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=">= 2"):
        losses.group_contrastive_loss(jnp.ones((1, 4)), jnp.ones((1, 4)))
