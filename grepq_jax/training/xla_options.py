"""XLA compiler options for the train step, per backend."""

import jax

# XLA:CPU (jax 0.10) hands convolutions to YNNPACK, whose filter gradients are
# 2-3x slower than XLA's own Eigen convolutions (benchmarks/README.md). Keep
# YNNPACK for dots and reductions only: the same float32 arithmetic.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def step_compiler_options() -> dict[str, str] | None:
    """XLA options for the train step on this backend."""
    return _CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
