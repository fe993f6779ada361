"""The two trained encoders in inference mode, rebuilt from their exports.

Both are rebuilt from the export's metadata alone and its stored tree is
checked against the tree that metadata builds (encoder_export.check_tree)
before anything runs: a damaged or mismatched export fails with one
errors.InputError naming the file and key, never inside a compiled program.
"""
import functools

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from grepq_jax import errors
from grepq_jax.formats import encoder_export, high_level_export
from grepq_jax.models import clip_rn50
from grepq_jax.models import low_level as low_level_model
from grepq_jax.models.dtypes import DTYPES
from grepq_jax.scoring import zero_shot


# The encoders -------------------------------------------------------------------

def _power_of_two_at_most(count: int, limit: int) -> int:
    """The smallest power of two >= count, capped at limit (count <= limit)."""
    return min(limit, 1 << max(0, count - 1).bit_length())


class LowLevelEncoder:
    """The ResNet low-level model in inference mode, one jit for all calls.

    widths: {"features": F, "projection": C}, the output widths.
    """

    def __init__(self, model, variables: dict, metadata: dict, *, chunk: int):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.model, self.metadata, self.chunk = model, metadata, chunk
        self._variables = jax.device_put(variables)
        self._apply = jax.jit(functools.partial(model.apply, train=False))
        shapes = jax.eval_shape(self._apply, variables,
                                jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
        self.widths = {name: value.shape[-1] for name, value in shapes.items()}

    @classmethod
    def from_export(cls, directory, *, chunk: int) -> "LowLevelEncoder":
        """From a low-level export folder (training/pathways/low_level.py writes it), checked."""
        tree, metadata, source = encoder_export.read_checked(directory, "low_level")
        return cls.from_tree(tree, metadata, chunk=chunk, source=source)

    @classmethod
    def from_tree(cls, tree: dict, metadata: dict, *, chunk: int,
                  source: str = "export") -> "LowLevelEncoder":
        """From `encoder_export.read`'s (tree, metadata), checked; source names it."""
        meta_source = str(epath.Path(source) / encoder_export.METADATA)
        if encoder_export.require(metadata, "pathway", str, meta_source) != "low_level":
            raise errors.InputError(f"{meta_source}: expected a low_level export, got "
                                    f"pathway {metadata['pathway']!r}")
        config = encoder_export.require(metadata, "model", dict, meta_source)
        model_source = f"{meta_source} (model)"
        encoder_export.require(config, "encoder", str, model_source)
        for key in ("width", "head_dim"):
            encoder_export.require(config, key, int, model_source, positive=True)
        if encoder_export.require(config, "dtype", str, model_source) not in DTYPES:
            raise errors.InputError(f"{model_source}: dtype must be one of "
                                    f"{sorted(DTYPES)}, got {config['dtype']!r}")
        model = encoder_export.build(meta_source, "model",
                       lambda: low_level_model.make_low_level_model(config))
        expected = encoder_export.build(meta_source, "model", lambda: jax.eval_shape(
            functools.partial(model.init, train=False), jax.random.key(0),
            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)))
        variables = {name: tree.get(name) for name in ("params", "batch_stats")}
        encoder_export.check_tree(variables, dict(expected), f"{source}/{encoder_export.TREE}",
                   f"the model in {meta_source}")
        return cls(model, variables, metadata, chunk=chunk)

    def image_features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, H, W, 3) in [0, 1] -> {"features": (B, F), "projection": (B, C)}."""
        out = self._apply(self._variables, jnp.asarray(images, jnp.float32))
        return {name: np.asarray(value, np.float32) for name, value in out.items()}

    def patch_features(self, patches: np.ndarray) -> np.ndarray:
        """(k <= chunk, P, P, 3) in [0, 1] -> (k, C) head projections.

        The chunk is zero-padded to a power of two (at most `chunk`) and the
        padded rows dropped, so any image size reuses the same few programs.
        """
        count = len(patches)
        if not 0 < count <= self.chunk:
            raise ValueError(f"expected 1 to {self.chunk} patches, got {count}")
        padded = np.zeros((_power_of_two_at_most(count, self.chunk),) + patches.shape[1:],
                          np.float32)
        padded[:count] = patches
        return self.image_features(padded)["projection"][:count]


class HighLevelEncoder:
    """A CLIP image tower (ViT or RN50) in inference mode and the prompt embeddings.

    min_side: the smallest image side it takes (a ViT crops H and W to
    multiples of its patch size; RN50's pools floor odd sides as OpenAI's do).
    """

    def __init__(self, exported: high_level_export.HighLevelExport):
        self.arch, self.metadata = exported.arch, exported.metadata
        self.prompt_embeddings = np.asarray(exported.prompt_embeddings, np.float32)
        self.min_side = (clip_rn50.MIN_SIDE if exported.encoder == "clip_rn50"
                         else exported.arch.patch_size)
        mean = np.asarray(exported.mean, np.float32)
        std = np.asarray(exported.std, np.float32)
        apply = exported.inference_fn(DTYPES[exported.metadata["dtype"]])

        def embed(variables, images):
            return apply(variables, (images - mean) / std)

        self._variables = jax.device_put(exported.variables)
        self._embed = jax.jit(embed)

    @classmethod
    def from_export(cls, directory) -> "HighLevelEncoder":
        """From a high-level export folder (high_level_export.py), checked."""
        return cls(high_level_export.read(directory))

    @classmethod
    def from_tree(cls, tree: dict, metadata: dict,
                  source: str = "export") -> "HighLevelEncoder":
        """From `encoder_export.read`'s (tree, metadata), checked; source names it."""
        return cls(high_level_export.from_tree(tree, metadata, source))

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) in [0, 1], H and W >= min_side -> (B, D) unnormalised
        image embeddings."""
        out = self._embed(self._variables, jnp.asarray(images, jnp.float32))
        return np.asarray(out, np.float32)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(B, D) -> (B,) sigmoid(10 (s_good - s_bad)) in (0, 1)."""
        return zero_shot.high_level_score(embeddings, self.prompt_embeddings)
