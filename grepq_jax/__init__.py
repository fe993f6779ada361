"""GRepQ quality representations in JAX/Flax."""
