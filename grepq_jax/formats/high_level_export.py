"""The high-level encoder export: a trained CLIP image tower and its prompt embeddings.

The one owner of the format. The high-level training run writes it
(pathways/high_level.py), and so does `grepq convert` from PyTorch files;
`read` loads either tower. Stored with `checkpoint.write_export` (the tree in
params/, the metadata in encoder.json):

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

Exports written before "encoder" was recorded hold a clip_vit.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from grepq_jax.formats import checkpoint
from grepq_jax.models import clip, clip_rn50
from grepq_jax.formats.pytorch import resnet_weights

ENCODERS = ("clip_vit", "clip_rn50")
_ARCHES = {"clip_vit": lambda fields: clip.ClipVisionArch(**fields),
           "clip_rn50": clip_rn50.ModifiedResNetArch.from_dict}


class ExportError(ValueError):
    """A folder that is not a high-level export; the message names it."""


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
    checkpoint.write_export(directory, {"encoder": stored,
                                        "prompt_embeddings": prompt_embeddings}, metadata)
    return metadata


def from_tree(tree: dict, metadata: dict, source: str) -> HighLevelExport:
    """From `checkpoint.read_export`'s (tree, metadata); `source` names it in errors."""
    if metadata.get("pathway") != "high_level":
        raise ExportError(f"{source}: not a high-level export (pathway "
                          f"{metadata.get('pathway')!r})")
    encoder = metadata.get("encoder", "clip_vit")
    if encoder not in ENCODERS:
        raise ExportError(f"{source}: unknown encoder {encoder!r}, expected one of {ENCODERS}")
    try:
        arch = _ARCHES[encoder](metadata["arch"])
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{source}: bad 'arch' for {encoder}: {err}") from None
    if set(tree) != {"encoder", "prompt_embeddings"}:
        raise ExportError(f"{source}: holds {sorted(tree)}, expected encoder and "
                          "prompt_embeddings")
    variables = tree["encoder"] if encoder == "clip_rn50" else {"params": tree["encoder"]}
    _check_variables(variables, variable_shapes(tower_module(encoder, arch)), source)
    prompts = tree["prompt_embeddings"]
    if prompts.ndim != 3 or prompts.shape[1:] != (2, arch.embed_dim):
        raise ExportError(f"{source}: prompt_embeddings of shape {prompts.shape}, expected "
                          f"(pairs, 2, {arch.embed_dim})")
    return HighLevelExport(encoder, arch, variables, prompts, metadata)


def variable_shapes(module) -> dict:
    """{(collection, *names): ShapeDtypeStruct} of a tower's variables, abstractly."""
    if isinstance(module, clip_rn50.ModifiedResNet):
        return resnet_weights.variable_shapes(module)
    size = module.arch.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return flatten_dict(jax.eval_shape(lambda x: module.init(jax.random.key(0), x), images))


def _check_variables(variables: dict, expected: dict, source: str) -> None:
    """ExportError naming the first array missing, unexpected or of another shape."""
    stored = flatten_dict(variables)
    for path in sorted(expected.keys() | stored.keys()):
        name = "/".join(path)
        if path not in stored:
            raise ExportError(f"{source}: the encoder lacks {name}, which its arch needs")
        if path not in expected:
            raise ExportError(f"{source}: the encoder's {name} is not in its arch")
        if stored[path].shape != expected[path].shape:
            raise ExportError(f"{source}: the encoder's {name} has shape {stored[path].shape}, "
                              f"its arch needs {expected[path].shape}")


def read(directory: str) -> HighLevelExport:
    """The export in `directory` (absolute, or relative to the working directory).

    Raises FileNotFoundError when `directory` holds no export, ExportError
    when it holds another kind.
    """
    return from_tree(*checkpoint.read_export(directory), source=str(directory))
