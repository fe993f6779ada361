"""The high-level encoder export: a trained CLIP image tower and its prompt embeddings.

The one owner of the format. The high-level training run writes it
(training/pathways/high_level.py), and so does `grepq convert` from PyTorch files;
`read` loads either tower and checks it array by array. An encoder export
(encoder_export.py: the tree in params/, the metadata in encoder.json):

    tree      {"encoder": the tower's variables (below),
               "prompt_embeddings": (P, 2, D) float32, L2-normalised, [:, 0] good}
    metadata  {"pathway": "high_level", "encoder": one of ENCODERS,
               "arch": the tower's shape (below), "mean", "std": per channel,
               for pixels in [0, 1], "prompts": [[good, bad], ...],
               "dtype": compute dtype, "step": training steps, ...}

    encoder     tree["encoder"]                              metadata["arch"]
    clip_vit    clip.ClipImageEncoder's params               ClipVisionArch fields
    clip_rn50   {"params", "batch_stats"} of                 ModifiedResNetArch fields
                clip_rn50.ModifiedResNet
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from grepq_jax import errors
from grepq_jax.formats import encoder_export
from grepq_jax.formats.encoder_export import require
from grepq_jax.formats.pytorch import resnet_weights
from grepq_jax.models import clip, clip_rn50
from grepq_jax.models.dtypes import DTYPES

ENCODERS = ("clip_vit", "clip_rn50")
_ARCHES = {"clip_vit": lambda fields: clip.ClipVisionArch(**fields),
           "clip_rn50": clip_rn50.ModifiedResNetArch.from_dict}


@dataclasses.dataclass(frozen=True)
class HighLevelExport:
    """A high-level export, read back.

    `variables` is the tower's {"params"[, "batch_stats"]} whatever the
    encoder, ready for `module().apply`.
    """

    encoder: str  # one of ENCODERS
    arch: clip.ClipVisionArch | clip_rn50.ModifiedResNetArch
    variables: dict
    prompt_embeddings: jax.Array  # (P, 2, D)
    metadata: dict

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.metadata["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.metadata["std"])

    @property
    def prompts(self) -> tuple[tuple[str, str], ...]:
        return tuple(tuple(pair) for pair in self.metadata["prompts"])

    def module(self, dtype=jnp.float32):
        """The tower as a linen module computing in `dtype` (params float32)."""
        return tower_module(self.encoder, self.arch, dtype)

    def inference_fn(self, dtype=jnp.float32) -> Callable[[dict, jax.Array], jax.Array]:
        """`(variables, images) -> (B, D)` image embeddings, unnormalised.

        images: (B, H, W, 3) already normalised with `mean` and `std`. Inference
        mode: BatchNorm uses its stored statistics, so an image's embedding does
        not depend on the rest of its batch. Pure; wrap it in jax.jit.
        """
        module = self.module(dtype)
        if self.encoder == "clip_rn50":
            return lambda variables, images: module.apply(variables, images, train=False)
        return module.apply


def tower_module(encoder: str, arch, dtype=jnp.float32):
    """clip.ClipImageEncoder or clip_rn50.ModifiedResNet for `arch`."""
    if encoder == "clip_rn50":
        return clip_rn50.ModifiedResNet(arch, dtype=dtype)
    return clip.ClipImageEncoder(arch, dtype=dtype)


def write(directory: str, *, encoder: str, arch, variables: dict, prompt_embeddings,
          mean: Sequence[float], std: Sequence[float], prompts: Sequence[Sequence[str]],
          dtype: str, step: int, **extra: Any) -> dict:
    """Writes the export (see the module docstring) into `directory`; returns its metadata.

    variables: the tower's {"params"[, "batch_stats"]}, as HighLevelExport has
    them. extra: more JSON-able metadata (where the weights came from).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown high-level encoder {encoder!r}: expected one of {ENCODERS}")
    fields = dataclasses.asdict(arch)
    metadata = {
        "pathway": "high_level", "encoder": encoder,
        # Lists, as JSON reads them back: the returned metadata equals the stored one.
        "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
        "mean": list(mean), "std": list(std), "prompts": [list(p) for p in prompts],
        "dtype": dtype, "step": int(step), **extra,
    }
    stored = variables if encoder == "clip_rn50" else variables["params"]
    encoder_export.write(directory, {"encoder": stored,
                                        "prompt_embeddings": prompt_embeddings}, metadata)
    return metadata


_ARCH_INTS = {"clip_vit": ("image_size", "patch_size", "width", "layers", "heads", "mlp_dim",
                            "embed_dim"),
              "clip_rn50": ("width", "heads", "embed_dim", "image_size")}


def _check_metadata(metadata: dict, source: str) -> str:
    """The keys every high-level export's metadata has; returns its encoder."""
    if require(metadata, "pathway", str, source) != "high_level":
        raise errors.InputError(f"{source}: expected a high_level export, got pathway "
                                f"{metadata['pathway']!r}")
    encoder = require(metadata, "encoder", str, source)
    if encoder not in ENCODERS:
        raise errors.InputError(f"{source}: encoder must be one of {sorted(ENCODERS)}, "
                                f"got {encoder!r}")
    for key in ("mean", "std"):
        values = require(metadata, key, list, source)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                       and (key == "mean" or v > 0) for v in values):
            raise errors.InputError(f"{source}: {key} must be 3 finite numbers"
                                    f"{' > 0' if key == 'std' else ''}, got {values!r}")
    if require(metadata, "dtype", str, source) not in DTYPES:
        raise errors.InputError(f"{source}: dtype must be one of {sorted(DTYPES)}, "
                                f"got {metadata['dtype']!r}")
    fields = require(metadata, "arch", dict, source)
    for key in _ARCH_INTS[encoder]:
        require(fields, key, int, f"{source} (arch)", positive=True)
    if encoder == "clip_rn50":
        layers = require(fields, "layers", list, f"{source} (arch)")
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in layers):
            raise errors.InputError(f"{source} (arch): layers must be integers, got {layers!r}")
        require(fields, "position_embedding", str, f"{source} (arch)")
    return encoder


def _checked_prompts(prompts, embed_dim: int, source: str) -> np.ndarray:
    prompts = np.asarray(prompts)
    if prompts.ndim != 3 or prompts.shape[0] < 1 or prompts.shape[1:] != (2, embed_dim):
        raise errors.InputError(f"{source}: prompt_embeddings must be (pairs, 2, "
                                f"{embed_dim}), got {list(prompts.shape)}")
    if not np.isfinite(prompts).all() or not (np.linalg.norm(prompts, axis=-1) > 0).all():
        raise errors.InputError(f"{source}: prompt_embeddings must be finite and non-zero")
    return prompts.astype(np.float32)


def from_tree(tree: dict, metadata: dict, source: str) -> HighLevelExport:
    """From `encoder_export.read`'s (tree, metadata), checked array by array.

    source: the export's folder, named in errors (errors.InputError).
    """
    meta_source = str(epath.Path(source) / encoder_export.METADATA)
    tree_source = f"{source}/{encoder_export.TREE}"
    encoder = _check_metadata(metadata, meta_source)
    arch = encoder_export.build(meta_source, "architecture",
                               lambda: _ARCHES[encoder](metadata["arch"]))
    if not isinstance(tree, dict) or not isinstance(tree.get("encoder"), dict):
        raise errors.InputError(f"{tree_source}: no encoder tree, which the encoder in "
                                f"{meta_source} needs")
    stored = tree["encoder"]
    variables = ({name: stored.get(name) for name in ("params", "batch_stats")}
                 if encoder == "clip_rn50" else {"params": stored})
    expected = encoder_export.build(meta_source, "encoder", lambda: unflatten_dict(
        variable_shapes(tower_module(encoder, arch))))
    encoder_export.check_tree(variables, expected, tree_source,
                              f"the encoder in {meta_source}")
    prompts = _checked_prompts(tree.get("prompt_embeddings", np.zeros(0)), arch.embed_dim,
                               tree_source)
    return HighLevelExport(encoder, arch, variables, prompts, metadata)


def variable_shapes(module) -> dict:
    """{(collection, *names): ShapeDtypeStruct} of a tower's variables, abstractly."""
    if isinstance(module, clip_rn50.ModifiedResNet):
        return resnet_weights.variable_shapes(module)
    size = module.arch.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return flatten_dict(jax.eval_shape(lambda x: module.init(jax.random.key(0), x), images))


def read(directory) -> HighLevelExport:
    """The export in `directory` (local, relative to the current folder, or gs://),
    checked; errors.InputError naming the file and key otherwise."""
    tree, metadata, source = encoder_export.read_checked(directory, "high_level")
    return from_tree(tree, metadata, source)
