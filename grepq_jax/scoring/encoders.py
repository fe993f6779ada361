"""The two trained encoders in inference mode, rebuilt and checked from exports.

An encoder export (`checkpoint.write_export`) is a folder holding
`encoder.json` (the metadata a pathway writes; `model.json` in older
exports) and `params/` (the parameter tree). Both encoders are rebuilt from
the metadata alone, and the stored tree is checked against the tree that
metadata builds, array by array (path, shape, dtype, finite values), before
anything runs: a damaged or mismatched export fails here with
ModelFolderError naming the file and the key, never later inside a compiled
program.
"""
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from grepq_jax.formats import checkpoint
from grepq_jax.formats.paths import absolute
from grepq_jax.scoring import zero_shot
from grepq_jax.models import clip, clip_rn50
from grepq_jax.models import low_level as low_level_model
from grepq_jax.models.dtypes import DTYPES

# checkpoint.write_export's layout (checkpoint owns it): the tree folder.
EXPORT_TREE = checkpoint.EXPORT_TREE


class ModelFolderError(ValueError):
    """A model folder (or an export in it) that is missing, incomplete or damaged."""


# Checks on metadata and arrays --------------------------------------------------

def require(mapping: Any, key: str, kind, source: str, *, positive: bool = False):
    """mapping[key], checked to be of `kind` (and > 0); ModelFolderError otherwise.

    source names the file; bool is never taken for int.
    """
    if not isinstance(mapping, dict):
        raise ModelFolderError(f"{source}: expected a JSON object, got "
                               f"{type(mapping).__name__}")
    if key not in mapping:
        raise ModelFolderError(f"{source}: no key {key!r}")
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    wrong_kind = not isinstance(value, kinds) or (isinstance(value, bool)
                                                  and bool not in kinds)
    if wrong_kind or (positive and not (math.isfinite(value) and value > 0)):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise ModelFolderError(f"{source}: {key} must be a {'positive ' * positive}"
                               f"{wanted}, got {value!r}")
    return value


def _flat(tree) -> dict[str, Any]:
    """{"a/b/c": leaf} of a nested tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in leaves}


def check_tree(stored, expected, source: str, built_from: str) -> None:
    """Every array of `stored` is in `expected` (abstract) with its shape and
    dtype, none is missing, and all values are finite; ModelFolderError naming
    the first array that is not."""
    have, want = _flat(stored), _flat(expected)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise ModelFolderError(f"{source}: no array {missing[0]} ({len(missing)} missing), "
                               f"which {built_from} needs")
    if extra:
        raise ModelFolderError(f"{source}: unexpected array {extra[0]} ({len(extra)} in "
                               f"all) for {built_from}")
    for name, spec in want.items():
        array = have[name]
        if tuple(array.shape) != tuple(spec.shape) or array.dtype != spec.dtype:
            raise ModelFolderError(
                f"{source}: {name} is {array.dtype}{list(array.shape)}, but "
                f"{built_from} needs {spec.dtype}{list(spec.shape)}")
        if not np.isfinite(np.asarray(array)).all():
            raise ModelFolderError(f"{source}: {name} holds NaN or infinite values")


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax logs warnings and errors before it fails; its failure is reported
    instead, in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_checked_export(directory, pathway: str) -> tuple[dict, dict, str]:
    """(tree, metadata, source) of an export, or one ModelFolderError.

    Checks the layout and the metadata's pathway before reading the tree;
    any failure of the reader (truncated or corrupted data) is reported in
    one line naming the folder.
    """
    # Orbax wants absolute paths; epath reads gs:// too.
    directory = epath.Path(absolute(os.fspath(directory)))
    meta_path, tree_path = checkpoint.export_metadata(directory), directory / EXPORT_TREE
    if not meta_path.is_file():
        raise ModelFolderError(f"{meta_path} is missing")
    metadata = read_json(meta_path)
    if require(metadata, "pathway", str, str(meta_path)) != pathway:
        raise ModelFolderError(f"{meta_path}: expected a {pathway} export, got pathway "
                               f"{metadata['pathway']!r}")
    if not tree_path.is_dir() or not any(tree_path.iterdir()):
        raise ModelFolderError(f"{tree_path} is missing or empty")
    try:
        with _orbax_quiet():
            tree, _ = checkpoint.read_export(str(directory))
    except Exception as error:  # Orbax and TensorStore raise many types.
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise ModelFolderError(f"{tree_path}: cannot read the parameters, damaged or "
                               f"incomplete ({type(error).__name__}: {first_line})"
                               ) from None
    if not isinstance(tree, dict):
        raise ModelFolderError(f"{tree_path}: expected a tree of arrays")
    return tree, metadata, str(directory)


def read_json(path):
    """A JSON file's value; ModelFolderError naming it if unreadable."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"{path}: not readable JSON ({error})") from None


def _build(source: str, what: str, build):
    try:
        return build()
    except Exception as error:  # A config that the model code rejects.
        raise ModelFolderError(f"{source}: cannot build the {what} it describes "
                               f"({type(error).__name__}: {error})") from None


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
        """From a `checkpoint.write_export` folder of the low-level pathway."""
        tree, metadata, source = read_checked_export(directory, "low_level")
        return cls.from_tree(tree, metadata, chunk=chunk, source=source)

    @classmethod
    def from_tree(cls, tree: dict, metadata: dict, *, chunk: int,
                  source: str = "export") -> "LowLevelEncoder":
        """From `checkpoint.read_export`'s (tree, metadata), checked; source names it."""
        meta_source = str(checkpoint.export_metadata(source))
        if require(metadata, "pathway", str, meta_source) != "low_level":
            raise ModelFolderError(f"{meta_source}: expected a low_level export, got "
                                   f"pathway {metadata['pathway']!r}")
        config = require(metadata, "model", dict, meta_source)
        model_source = f"{meta_source} (model)"
        require(config, "encoder", str, model_source)
        for key in ("width", "head_dim"):
            require(config, key, int, model_source, positive=True)
        if require(config, "dtype", str, model_source) not in DTYPES:
            raise ModelFolderError(f"{model_source}: dtype must be one of "
                                   f"{sorted(DTYPES)}, got {config['dtype']!r}")
        model = _build(meta_source, "model",
                       lambda: low_level_model.make_low_level_model(config))
        expected = _build(meta_source, "model", lambda: jax.eval_shape(
            functools.partial(model.init, train=False), jax.random.key(0),
            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)))
        variables = {name: tree.get(name) for name in ("params", "batch_stats")}
        check_tree(variables, dict(expected), f"{source}/{EXPORT_TREE}",
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


_ARCH_INTS = ("image_size", "patch_size", "width", "layers", "heads", "mlp_dim",
              "embed_dim")
_RN50_ARCH_INTS = ("width", "heads", "embed_dim", "image_size")


def _check_high_level_metadata(metadata: dict, source: str) -> str:
    """The keys and values every high-level export has; returns its encoder kind."""
    if require(metadata, "pathway", str, source) != "high_level":
        raise ModelFolderError(f"{source}: expected a high_level export, got pathway "
                               f"{metadata['pathway']!r}")
    # Exports written before RN50 existed have no "encoder": they are ViTs.
    kind = metadata.get("encoder", "clip_vit")
    if kind not in HIGH_LEVEL_TOWERS:
        raise ModelFolderError(f"{source}: encoder must be one of "
                               f"{sorted(HIGH_LEVEL_TOWERS)}, got {kind!r}")
    for key in ("mean", "std"):
        values = require(metadata, key, list, source)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                       and (key == "mean" or v > 0) for v in values):
            raise ModelFolderError(f"{source}: {key} must be 3 finite numbers"
                                   f"{' > 0' if key == 'std' else ''}, got {values!r}")
    if require(metadata, "dtype", str, source) not in DTYPES:
        raise ModelFolderError(f"{source}: dtype must be one of {sorted(DTYPES)}, "
                               f"got {metadata['dtype']!r}")
    return kind


def _check_prompt_embeddings(prompts, embed_dim: int, source: str) -> np.ndarray:
    prompts = np.asarray(prompts)
    if prompts.ndim != 3 or prompts.shape[0] < 1 or prompts.shape[1:] != (2, embed_dim):
        raise ModelFolderError(f"{source}: prompt_embeddings must be (pairs, 2, "
                               f"{embed_dim}), got {list(prompts.shape)}")
    if not np.isfinite(prompts).all() or not (np.linalg.norm(prompts, axis=-1) > 0).all():
        raise ModelFolderError(f"{source}: prompt_embeddings must be finite and non-zero")
    return prompts.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class HighLevelTower:
    """One kind of CLIP image tower, rebuilt and checked from an export.

    apply(variables, pixels) maps (B, H, W, 3) CLIP-normalised pixels to (B,
    D); variables are what `apply` takes; min_side is the smallest image side
    in pixels it accepts; arch has at least `embed_dim`.
    """
    arch: Any
    apply: Any
    variables: dict
    min_side: int


def _vit_tower(metadata: dict, stored, meta_source: str, tree_source: str,
               dtype) -> HighLevelTower:
    """CLIP ViT (models/clip.py): tree["encoder"] is its params; H and W are
    cropped to multiples of the patch size by the encoder."""
    arch = require(metadata, "arch", dict, meta_source)
    for key in _ARCH_INTS:
        require(arch, key, int, f"{meta_source} (arch)", positive=True)
    arch = _build(meta_source, "architecture", lambda: clip.ClipVisionArch(**arch))
    size = arch.image_size
    expected = _build(meta_source, "encoder", lambda: jax.eval_shape(
        clip.ClipImageEncoder(arch).init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))["params"])
    check_tree(stored, expected, tree_source, f"the encoder in {meta_source}")
    encoder = clip.ClipImageEncoder(arch, dtype=dtype)
    return HighLevelTower(arch, lambda params, pixels: encoder.apply({"params": params},
                                                                     pixels),
                          stored, arch.patch_size)


def _rn50_tower(metadata: dict, stored, meta_source: str, tree_source: str,
                dtype) -> HighLevelTower:
    """CLIP's ModifiedResNet (models/clip_rn50.py): tree["encoder"] is
    {"params", "batch_stats"}, applied in inference mode; no patch size, so
    nothing is cropped (the pools floor odd sides as OpenAI's do)."""
    fields = require(metadata, "arch", dict, meta_source)
    arch_source = f"{meta_source} (arch)"
    for key in _RN50_ARCH_INTS:
        require(fields, key, int, arch_source, positive=True)
    layers = require(fields, "layers", list, arch_source)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in layers):
        raise ModelFolderError(f"{arch_source}: layers must be integers, got {layers!r}")
    require(fields, "position_embedding", str, arch_source)
    arch = _build(meta_source, "architecture",
                  lambda: clip_rn50.ModifiedResNetArch.from_dict(fields))
    size = arch.image_size
    expected = _build(meta_source, "encoder", lambda: jax.eval_shape(
        functools.partial(clip_rn50.ModifiedResNet(arch).init, train=False),
        jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)))
    if not isinstance(stored, dict):
        raise ModelFolderError(f"{tree_source}: no encoder tree, which the encoder "
                               f"in {meta_source} needs")
    variables = {name: stored.get(name) for name in ("params", "batch_stats")}
    check_tree(variables, dict(expected), tree_source, f"the encoder in {meta_source}")
    encoder = clip_rn50.ModifiedResNet(arch, dtype=dtype)
    return HighLevelTower(
        arch, lambda variables, pixels: encoder.apply(variables, pixels, train=False),
        variables, clip_rn50.MIN_SIDE)


# metadata["encoder"] -> the builder of that tower.
HIGH_LEVEL_TOWERS = {"clip_vit": _vit_tower, "clip_rn50": _rn50_tower}


class HighLevelEncoder:
    """A CLIP image tower (ViT or RN50) in inference mode and the prompt embeddings."""

    def __init__(self, tower: HighLevelTower, prompt_embeddings: np.ndarray,
                 metadata: dict):
        self.arch, self.metadata, self.min_side = tower.arch, metadata, tower.min_side
        self.prompt_embeddings = np.asarray(prompt_embeddings, np.float32)
        mean = np.asarray(metadata["mean"], np.float32)
        std = np.asarray(metadata["std"], np.float32)

        def embed(variables, images):
            return tower.apply(variables, (images - mean) / std)

        self._variables = jax.device_put(tower.variables)
        self._embed = jax.jit(embed)

    @classmethod
    def from_export(cls, directory) -> "HighLevelEncoder":
        """From a `checkpoint.write_export` folder of the high-level pathway."""
        tree, metadata, source = read_checked_export(directory, "high_level")
        return cls.from_tree(tree, metadata, source=source)

    @classmethod
    def from_tree(cls, tree: dict, metadata: dict,
                  source: str = "export") -> "HighLevelEncoder":
        """From `checkpoint.read_export`'s (tree, metadata), checked; source names it."""
        meta_source = str(checkpoint.export_metadata(source))
        tree_source = f"{source}/{EXPORT_TREE}"
        kind = _check_high_level_metadata(metadata, meta_source)
        tower = HIGH_LEVEL_TOWERS[kind](metadata, tree.get("encoder"), meta_source,
                                        tree_source, DTYPES[metadata["dtype"]])
        prompts = _check_prompt_embeddings(tree.get("prompt_embeddings", np.zeros(0)),
                                           tower.arch.embed_dim, tree_source)
        return cls(tower, prompts, metadata)

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) in [0, 1], H and W >= min_side -> (B, D) unnormalised
        image embeddings."""
        out = self._embed(self._variables, jnp.asarray(images, jnp.float32))
        return np.asarray(out, np.float32)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(B, D) -> (B,) sigmoid(10 (s_good - s_bad)) in (0, 1)."""
        return zero_shot.high_level_score(embeddings, self.prompt_embeddings)
