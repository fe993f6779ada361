"""The compute dtypes a config or an encoder's metadata may name."""

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
