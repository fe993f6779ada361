"""The side that uses trained encoders: model folders, the encoders in
inference mode, the quality model and its zero-shot scores.

It stands on `models/`, `checkpoint` and `data/images` only, never on the
training side (train, pathways/, the data pipelines); import-linter's
contracts in pyproject.toml keep it so.
"""
