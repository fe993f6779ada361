"""A tiny random CLIP, tokenizer and image processor saved with `save_pretrained`.

Reuse from another test file (tests/ is on sys.path under pytest):

    from clip_fixtures import tiny_clip_dir  # noqa: F401  (a pytest fixture)

The builder itself is `grepq_jax.training.stand_ins.tiny_clip.save_tiny_clip`, which the
`configs/high_level.py:tiny` smoke run uses too.
"""
import pathlib

import pytest

from grepq_jax.training.stand_ins.tiny_clip import TINY_IMAGE_SIZE as IMAGE_SIZE
from grepq_jax.training.stand_ins.tiny_clip import TINY_MEAN as MEAN
from grepq_jax.training.stand_ins.tiny_clip import TINY_PATCH_SIZE as PATCH_SIZE
from grepq_jax.training.stand_ins.tiny_clip import TINY_STD as STD
from grepq_jax.training.stand_ins.tiny_clip import save_tiny_clip

__all__ = ["IMAGE_SIZE", "MEAN", "PATCH_SIZE", "STD", "save_tiny_clip",
           "tiny_clip_dir"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> pathlib.Path:
    """A directory holding `save_tiny_clip`'s output, built once per session."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))
