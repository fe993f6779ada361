"""GRepQ quality representations in JAX/Flax.

    scorer = grepq_jax.create_scorer("models/grepq")  # see grepq_jax.scoring.api
    scorer.score("photo.jpg")  # higher is better, in scorer.score_range

Importing the package is light: JAX, Flax and the models load on first use of
`create_scorer`.
"""

__all__ = ["create_scorer"]


def __getattr__(name):
    if name == "create_scorer":
        from grepq_jax.scoring.api import create_scorer  # pylint: disable=import-outside-toplevel
        return create_scorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
