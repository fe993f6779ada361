"""A scoring model folder: loading it, and the features and scores of images.

A model folder (written by `grepq_jax.export`) holds:

    model.json               {"format_version", "low_level", "high_level",
                              "regressor"}: what is present; "zero_shot":
                             {"patch_size", "stride"}; "pristine": {"source",
                             "num_patches", "skipped_images"}
    low_level/               checkpoint.write_export of {"params",
                             "batch_stats"} and {"pathway", "model", "step"}
    high_level/              checkpoint.write_export of {"encoder",
                             "prompt_embeddings" (P, 2, D)} and {"pathway",
                             "arch", "mean", "std", "prompts", "dtype", "step"}
    pristine_statistics.npz  PristineStatistics.to_arrays() (with low_level/)
    regressor.npz            RidgeRegressor.to_arrays() (optional)
    regressor.json           what the regressor reads and predicts (optional)

Either encoder may be absent; the model then scores with what is there. It
loads with neither the training config nor network access: both encoders
are rebuilt from their stored metadata.

Every image is used whole at its own resolution, never resized, and both
encoders run in inference mode (BatchNorm's stored statistics), so an image's
result does not depend on the other images in its batch: the low-level
zero-shot score is bit-identical (each image's patches go through on their
own), whole-image outputs may differ in the last float32 bits between
sub-batch sizes (another compiled program; seen: 2e-8 relative).

Compiled programs are reused: the low-level zero-shot path feeds patches in
chunks whose sizes are powers of two up to `chunk` (a handful of programs
for any mix of image sizes); whole-image paths batch same-size images in
power-of-two sub-batches, so they compile once per distinct image size and
sub-batch size (inherent: the encoders see the image at its own size).
"""
import collections
import dataclasses
import functools
import json
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from grepq_jax import checkpoint, pristine, zero_shot
from grepq_jax.models import clip
from grepq_jax.pathways import DTYPES
from grepq_jax.pathways import low_level as low_level_pathway
from grepq_jax.regression import RidgeRegressor

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
LOW_LEVEL_DIR = "low_level"
HIGH_LEVEL_DIR = "high_level"
PRISTINE_FILE = "pristine_statistics.npz"
REGRESSOR_FILE = "regressor.npz"
REGRESSOR_JSON = "regressor.json"

# Low-level whole-image outputs: "projection" (the 128-d head output the
# paper's code uses) or "pooled" (the 512-d pooled encoder features).
LOW_LEVEL_FEATURES = {"projection": "projection", "pooled": "features"}
_MIN_LOW_LEVEL_SIDE = 32  # LowLevelModel's documented minimum.


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or of another format."""


def _power_of_two_at_most(count: int, limit: int) -> int:
    """The smallest power of two >= count, capped at limit (count <= limit)."""
    return min(limit, 1 << max(0, count - 1).bit_length())


def _power_of_two_parts(count: int) -> list[int]:
    """count as descending powers of two: 7 -> [4, 2, 1]."""
    return [1 << bit for bit in reversed(range(count.bit_length()))
            if count >> bit & 1]


def _check_pathway(metadata: dict, pathway: str, source: str) -> None:
    if metadata.get("pathway") != pathway:
        raise ModelFolderError(f"{source}: expected a {pathway} export, got one of "
                               f"pathway {metadata.get('pathway')!r}")


class LowLevelEncoder:
    """The ResNet low-level model in inference mode, one jit for all calls."""

    def __init__(self, model, variables: dict, metadata: dict, *, chunk: int):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.model, self.metadata, self.chunk = model, metadata, chunk
        self._variables = jax.device_put(variables)
        self._apply = jax.jit(functools.partial(model.apply, train=False))

    @classmethod
    def from_export(cls, directory, *, chunk: int) -> "LowLevelEncoder":
        """From a `checkpoint.write_export` folder of the low-level pathway."""
        directory = pathlib.Path(directory).absolute()  # Orbax wants absolute paths.
        return cls.from_tree(*checkpoint.read_export(str(directory)), chunk=chunk,
                             source=str(directory))

    @classmethod
    def from_tree(cls, tree: dict, metadata: dict, *, chunk: int,
                  source: str = "export") -> "LowLevelEncoder":
        """From `checkpoint.read_export`'s (tree, metadata); source names it."""
        _check_pathway(metadata, "low_level", source)
        model = low_level_pathway.make_model(ml_collections.ConfigDict(metadata["model"]))
        variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
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
    """The CLIP image tower in inference mode and the prompt embeddings."""

    def __init__(self, arch: clip.ClipVisionArch, params: dict,
                 prompt_embeddings: np.ndarray, metadata: dict):
        self.arch, self.metadata = arch, metadata
        self.prompt_embeddings = np.asarray(prompt_embeddings, np.float32)
        encoder = clip.ClipImageEncoder(arch, dtype=DTYPES[metadata["dtype"]])
        mean = np.asarray(metadata["mean"], np.float32)
        std = np.asarray(metadata["std"], np.float32)

        def embed(params, images):
            return encoder.apply({"params": params}, (images - mean) / std)

        self._params = jax.device_put(params)
        self._embed = jax.jit(embed)

    @classmethod
    def from_export(cls, directory) -> "HighLevelEncoder":
        """From a `checkpoint.write_export` folder of the high-level pathway."""
        directory = pathlib.Path(directory).absolute()  # Orbax wants absolute paths.
        return cls.from_tree(*checkpoint.read_export(str(directory)),
                             source=str(directory))

    @classmethod
    def from_tree(cls, tree: dict, metadata: dict,
                  source: str = "export") -> "HighLevelEncoder":
        """From `checkpoint.read_export`'s (tree, metadata); source names it."""
        _check_pathway(metadata, "high_level", source)
        return cls(clip.ClipVisionArch(**metadata["arch"]), tree["encoder"],
                   tree["prompt_embeddings"], metadata)

    @property
    def patch_size(self) -> int:
        return self.arch.patch_size

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) in [0, 1] -> (B, D) unnormalised image embeddings.

        H and W are cropped to multiples of the patch size by the encoder.
        """
        out = self._embed(self._params, jnp.asarray(images, jnp.float32))
        return np.asarray(out, np.float32)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(B, D) -> (B,) sigmoid(10 (s_good - s_bad)) in (0, 1)."""
        return zero_shot.high_level_score(embeddings, self.prompt_embeddings)


@dataclasses.dataclass
class ImageAnalysis:
    """What `QualityModel.analyse` computed for one image (None: not asked).

    low_level_score: zero-shot, in (0, 0.5]; high_level_score: in (0, 1);
    high_level_embedding: (D,); low_level_features: {"projection": (C,),
    "pooled": (F,)} from the whole image.
    """
    low_level_score: float | None = None
    high_level_score: float | None = None
    high_level_embedding: np.ndarray | None = None
    low_level_features: dict[str, np.ndarray] | None = None


# What `analyse` can compute.
NEEDS = frozenset({"low_level_score", "high_level", "low_level_features"})


class QualityModel:
    """The encoders, pristine statistics and optional regressor of a folder."""

    def __init__(self, *, low_level: LowLevelEncoder | None = None,
                 high_level: HighLevelEncoder | None = None,
                 pristine_stats: pristine.PristineStatistics | None = None,
                 regressor: RidgeRegressor | None = None,
                 regressor_info: dict | None = None, stride: int | None = None):
        if low_level is not None and pristine_stats is None:
            raise ValueError("a low-level encoder needs its pristine statistics")
        self.low_level, self.high_level = low_level, high_level
        self.pristine_stats = pristine_stats
        self.regressor, self.regressor_info = regressor, regressor_info
        patch = pristine_stats.patch_size if pristine_stats else None
        self.stride = stride if stride is not None else (patch // 2 if patch else None)

    @classmethod
    def load(cls, folder, *, chunk: int = 64) -> "QualityModel":
        """Rebuilds the model written by `grepq_jax.export` into `folder`.

        chunk: at most this many low-level patches go through at once
        (bounds memory on very large images; does not change scores).
        Raises ModelFolderError naming the folder and what is wrong.
        """
        folder = pathlib.Path(folder).absolute()  # Orbax wants absolute paths.
        description = read_description(folder)
        low = high = stats = regressor = info = None
        if description["low_level"]:
            low = LowLevelEncoder.from_export(folder / LOW_LEVEL_DIR, chunk=chunk)
            with np.load(folder / PRISTINE_FILE, allow_pickle=False) as arrays:
                stats = pristine.PristineStatistics.from_arrays(arrays)
        if description["high_level"]:
            high = HighLevelEncoder.from_export(folder / HIGH_LEVEL_DIR)
        if description["regressor"]:
            with np.load(folder / REGRESSOR_FILE, allow_pickle=False) as arrays:
                regressor = RidgeRegressor.from_arrays(arrays)
            info = json.loads((folder / REGRESSOR_JSON).read_text())
        return cls(low_level=low, high_level=high, pristine_stats=stats,
                   regressor=regressor, regressor_info=info,
                   stride=description["zero_shot"]["stride"])

    @property
    def parts(self) -> list[str]:
        """The encoders present, in feature order: "high_level", "low_level"."""
        return [name for name, part in (("high_level", self.high_level),
                                        ("low_level", self.low_level)) if part]

    def low_level_score(self, image: np.ndarray) -> float:
        """Zero-shot low-level score of one (H, W, 3) image in [0, 1]."""
        stats = self.pristine_stats
        return zero_shot.image_low_level_score(
            image, self.low_level.patch_features, stats, patch_size=stats.patch_size,
            stride=self.stride, chunk=self.low_level.chunk)

    def check_size(self, shape: Sequence[int], needs: Iterable[str]) -> None:
        """Raises ValueError, naming the size, if an image is too small."""
        height, width = shape[:2]
        sides = []
        if "high_level" in needs:
            sides.append((self.high_level.patch_size, "the high-level encoder's patch"))
        if "low_level_features" in needs:
            sides.append((_MIN_LOW_LEVEL_SIDE, "the low-level encoder's minimum"))
        if "low_level_score" in needs:
            size = self.pristine_stats.patch_size
            rows, cols = pristine.patch_grid(height, width, size, self.stride)
            if rows * cols < 2:
                raise ValueError(f"image of {height}x{width} (HxW) gives {rows * cols} "
                                 f"patch of {size}x{size} at stride {self.stride}; "
                                 "the low-level score needs at least 2")
        for side, what in sides:
            if min(height, width) < side:
                raise ValueError(f"image of {height}x{width} (HxW) is smaller than "
                                 f"{what} ({side} px)")

    def check_needs(self, needs: Iterable[str]) -> frozenset[str]:
        needs = frozenset(needs)
        if not needs or not needs <= NEEDS:
            raise ValueError(f"needs must be a non-empty subset of {sorted(NEEDS)}, "
                             f"got {sorted(needs)}")
        missing = {"low_level_score": self.low_level, "high_level": self.high_level,
                   "low_level_features": self.low_level}
        absent = sorted(need for need in needs if missing[need] is None)
        if absent:
            raise ValueError(f"this model has no encoder for {absent}; it holds "
                             f"{self.parts or 'no encoder'}")
        return needs

    def analyse(self, items: Iterable[tuple[Any, np.ndarray | Exception]], *,
                needs: Iterable[str], batch_size: int = 8,
                ) -> Iterator[tuple[Any, ImageAnalysis | Exception]]:
        """(key, image or the error reading it) -> (key, analysis or error), in order.

        Images are (H, W, 3) float32 in [0, 1]. At most `batch_size` items
        are held at a time; within them same-size images go through the
        whole-image encoders together. An image that is too small, or an
        error passed in, yields its exception (a ValueError) and the rest go
        on. needs: a subset of NEEDS.
        """
        needs = self.check_needs(needs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        buffer = []
        for item in items:
            buffer.append(item)
            if len(buffer) == batch_size:
                yield from self._analyse_buffer(buffer, needs)
                buffer = []
        if buffer:
            yield from self._analyse_buffer(buffer, needs)

    def _analyse_buffer(self, buffer, needs):
        results: dict[int, ImageAnalysis | Exception] = {}
        by_shape = collections.defaultdict(list)
        for index, (_, image) in enumerate(buffer):
            if isinstance(image, Exception):
                results[index] = image
                continue
            try:
                self.check_size(image.shape, needs)
            except ValueError as error:
                results[index] = error
                continue
            by_shape[image.shape].append(index)
        for indices in by_shape.values():
            for start, size in _sub_batches(len(indices)):
                chosen = indices[start:start + size]
                images = np.stack([buffer[i][1] for i in chosen])
                results.update(zip(chosen, self._analyse_batch(images, needs)))
        return [(key, results[index]) for index, (key, _) in enumerate(buffer)]

    def _analyse_batch(self, images: np.ndarray, needs) -> list[ImageAnalysis | Exception]:
        analyses = [ImageAnalysis() for _ in images]
        if "high_level" in needs:
            embeddings = self.high_level.embeddings(images)
            for analysis, emb, score in zip(analyses, embeddings,
                                            self.high_level.scores(embeddings)):
                analysis.high_level_embedding, analysis.high_level_score = emb, float(score)
        if "low_level_features" in needs:
            out = self.low_level.image_features(images)
            for i, analysis in enumerate(analyses):
                analysis.low_level_features = {
                    kind: out[key][i] for kind, key in LOW_LEVEL_FEATURES.items()}
        results: list[ImageAnalysis | Exception] = list(analyses)
        if "low_level_score" in needs:
            for i, image in enumerate(images):
                try:
                    analyses[i].low_level_score = self.low_level_score(image)
                except ValueError as error:
                    results[i] = error
        return results

    def regression_features(self, analysis: ImageAnalysis, kind: str) -> np.ndarray:
        """[high-level embedding, low-level `kind` features] of one image -> (C,).

        Holds the parts present, in the order of `parts` (the paper's code
        concatenates high then low).
        """
        if kind not in LOW_LEVEL_FEATURES:
            raise ValueError(f"unknown low-level features {kind!r}; choose one of "
                             f"{sorted(LOW_LEVEL_FEATURES)}")
        pieces = []
        if self.high_level:
            pieces.append(analysis.high_level_embedding)
        if self.low_level:
            pieces.append(analysis.low_level_features[kind])
        return np.concatenate(pieces).astype(np.float32)

    def regression_needs(self) -> frozenset[str]:
        """What `analyse` must compute for `regression_features`."""
        needs = set()
        if self.high_level:
            needs.add("high_level")
        if self.low_level:
            needs.add("low_level_features")
        return frozenset(needs)


def _sub_batches(count: int) -> list[tuple[int, int]]:
    """(start, size) of count items split into descending powers of two."""
    out, start = [], 0
    for size in _power_of_two_parts(count):
        out.append((start, size))
        start += size
    return out


def read_description(folder) -> dict:
    """model.json of a model folder, checked; ModelFolderError otherwise."""
    folder = pathlib.Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: no {MODEL_JSON} "
                               "(write one with python -m grepq_jax.export)")
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{path}: not valid JSON ({error})") from None
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(f"{path}: format_version {version!r}; this code "
                               f"reads {FORMAT_VERSION}")
    expected = {"low_level": [LOW_LEVEL_DIR, PRISTINE_FILE],
                "high_level": [HIGH_LEVEL_DIR],
                "regressor": [REGRESSOR_FILE, REGRESSOR_JSON]}
    for part, names in expected.items():
        for name in names if description.get(part) else []:
            if not (folder / name).exists():
                raise ModelFolderError(f"{path} lists {part}, but {folder / name} "
                                       "is missing")
    return description
