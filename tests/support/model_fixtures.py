"""Tiny, freshly initialised GRepQ exports and a model folder built from them.

Real exports (encoder_export.write, the pathways' metadata) of tiny models
with random parameters: no training, a few seconds. Reuse from a test file:

    from model_fixtures import low_level_export, high_level_export, model_folder  # noqa: F401
"""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from grepq_jax.formats import encoder_export
from grepq_jax.scoring import packing
from grepq_jax.models import clip
from grepq_jax.training.pathways import low_level as low_level_pathway
from grepq_jax.training.stand_ins import tiny_clip

LOW_LEVEL_MODEL = {"encoder": "resnet18", "width": 4, "head_dim": 8, "dtype": "float32"}
HIGH_LEVEL_ARCH = clip.ClipVisionArch(image_size=32, patch_size=8, width=32, layers=2,
                                      heads=2, mlp_dim=64, embed_dim=16)


def _random_like(abstract, rng):
    """NumPy draws for an abstract tree (much faster than compiling init);
    scales and BatchNorm variances around 1, variances positive."""
    def draw(path, leaf):
        values = 0.2 * rng.standard_normal(leaf.shape).astype(np.float32)
        name = path[-1].key
        if name == "var":
            return 1.0 + np.abs(values)
        return 1.0 + values if name == "scale" else values
    return jax.tree_util.tree_map_with_path(draw, abstract)


def write_low_level_export(directory, seed=0):
    """A low-level export with random params AND random BatchNorm statistics,
    so that inference mode (stored statistics) is what the scores use."""
    model = low_level_pathway.make_model(ml_collections.ConfigDict(LOW_LEVEL_MODEL))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 jnp.zeros((1, 32, 32, 3)), train=False))
    tree = _random_like(abstract, np.random.default_rng(seed))
    encoder_export.write(str(directory), tree, {"pathway": "low_level",
                                                   "model": LOW_LEVEL_MODEL, "step": 0})
    return directory


def write_high_level_export(directory, seed=0):
    encoder = clip.ClipImageEncoder(HIGH_LEVEL_ARCH)
    abstract = jax.eval_shape(lambda: encoder.init(jax.random.key(0),
                                                   jnp.zeros((1, 32, 32, 3))))["params"]
    rng = np.random.default_rng(seed)
    prompts = rng.standard_normal((1, 2, HIGH_LEVEL_ARCH.embed_dim)).astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    encoder_export.write(
        str(directory), {"encoder": _random_like(abstract, rng), "prompt_embeddings": prompts},
        {"pathway": "high_level", "encoder": "clip_vit",
         "arch": dataclasses.asdict(HIGH_LEVEL_ARCH),
         "mean": list(tiny_clip.TINY_MEAN), "std": list(tiny_clip.TINY_STD),
         "prompts": [["a good photo.", "a bad photo."]], "dtype": "float32", "step": 0})
    return directory


@pytest.fixture(scope="session")
def low_level_export(tmp_path_factory):
    return write_low_level_export(tmp_path_factory.mktemp("exports") / "low_level")


@pytest.fixture(scope="session")
def high_level_export(tmp_path_factory):
    return write_high_level_export(tmp_path_factory.mktemp("exports") / "high_level")


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory, low_level_export, high_level_export):
    """Both encoders, pristine statistics from the embedded photographs."""
    folder = tmp_path_factory.mktemp("models") / "both"
    packing.export_model(folder, low_level=str(low_level_export),
                        high_level=str(high_level_export))
    return folder
