"""The side that uses trained encoders: a model folder applied to images,
zero-shot scores, quality maps, the Scorer API. It never imports
grepq_jax.training (import-linter's contract in pyproject.toml).
"""
