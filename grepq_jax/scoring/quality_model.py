"""A scoring model folder: loading and checking it, and the features and scores of images.

A model folder (written by `grepq_jax.export`) holds:

    model.json               {"format_version", "low_level", "high_level",
                              "regressor"}: what is present; "zero_shot":
                             {"patch_size", "stride"}; "pristine": {"source",
                             "num_patches", "skipped_images"}
    low_level/               checkpoint.write_export of {"params",
                             "batch_stats"} and {"pathway", "model", "step"}
    high_level/              checkpoint.write_export of {"encoder",
                             "prompt_embeddings" (P, 2, D)} and {"pathway",
                             "encoder" ("clip_vit" if absent, or "clip_rn50":
                             then tree["encoder"] is {"params",
                             "batch_stats"}), "arch", "mean", "std",
                             "prompts", "dtype", "step"}
    pristine_statistics.npz  PristineStatistics.to_arrays() (with low_level/)
    regressor.npz            RidgeRegressor.to_arrays() (optional)
    regressor.json           what the regressor reads and predicts (optional)

Either encoder may be absent; the model then scores with what is there. It
loads with neither the training config nor network access: both encoders
are rebuilt from their stored metadata. `QualityModel.load` checks all of it
before returning (every file readable, every array of the shape, dtype and
finiteness the metadata implies, every key present and sane, the widths of
the statistics and the regressor equal to what the encoders give) and
raises one ModelFolderError naming the file and key otherwise.

Every image is used whole at its own resolution, never resized, and both
encoders run in inference mode (BatchNorm's stored statistics), so an image's
result does not depend on the other images in its batch: the low-level
zero-shot score is bit-identical (each image's patches go through on their
own), whole-image outputs may differ in the last float32 bits between
sub-batch sizes (another compiled program).

Memory: images arrive as pixels in their file's depth (uint8 mostly) and
are made float32 only a chunk of patches at a time (low-level score) or a
bounded batch at a time (whole-image paths: at most `batch_size` images and
`batch_pixels` pixels, or one image alone if larger).

Compiled programs are reused: the low-level zero-shot path feeds patches in
chunks whose sizes are powers of two up to `chunk` (a handful of programs
for any mix of image sizes); whole-image paths batch same-size images in
power-of-two sub-batches, so they compile once per distinct image size and
sub-batch size (inherent: the encoders see the image at its own size).
"""
import collections
import dataclasses
import math
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from grepq_jax.data import images as image_files
from grepq_jax.scoring import patches, pristine, zero_shot
from grepq_jax.scoring.encoders import (HighLevelEncoder, LowLevelEncoder,  # noqa: F401
                                        ModelFolderError, read_json, require)
from grepq_jax.scoring.ridge import RidgeRegressor

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

# What `analyse` can compute, and which of it needs whole images as float32.
NEEDS = frozenset({"low_level_score", "high_level", "low_level_features"})
WHOLE_IMAGE_NEEDS = frozenset({"high_level", "low_level_features"})
# Pixels per whole-image batch: 16.8 MP, 200 MB as float32; a larger
# image goes alone.
BATCH_PIXELS = 1 << 24


def _power_of_two_parts(count: int) -> list[int]:
    """count as descending powers of two: 7 -> [4, 2, 1]."""
    return [1 << bit for bit in reversed(range(count.bit_length()))
            if count >> bit & 1]


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

    def non_finite(self) -> str | None:
        """The name of the first part holding NaN or inf, or None."""
        parts = {"low_level": self.low_level_score, "high_level": self.high_level_score,
                 "high_level embedding": self.high_level_embedding,
                 **{f"low_level {kind}": value
                    for kind, value in (self.low_level_features or {}).items()}}
        for name, value in parts.items():
            if value is not None and not np.isfinite(value).all():
                return name
        return None


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
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    @classmethod
    def load(cls, folder, *, chunk: int = 64) -> "QualityModel":
        """Rebuilds the model written by `grepq_jax.export` into `folder`, checked.

        chunk: at most this many low-level patches go through at once
        (bounds memory on very large images; does not change scores).
        Raises ModelFolderError naming the file and what is wrong.
        """
        folder = pathlib.Path(folder).absolute()  # Orbax wants absolute paths.
        description = read_description(folder)
        low = high = stats = None
        if description["low_level"]:
            low = LowLevelEncoder.from_export(folder / LOW_LEVEL_DIR, chunk=chunk)
            stats = read_pristine_statistics(folder, low, description)
        if description["high_level"]:
            high = HighLevelEncoder.from_export(folder / HIGH_LEVEL_DIR)
        model = cls(low_level=low, high_level=high, pristine_stats=stats,
                    stride=description["zero_shot"]["stride"] if low else None)
        if description["regressor"]:
            model.regressor_info = read_regressor_info(folder, model.parts)
            model.regressor = read_regressor(
                folder, model.feature_width(model.regressor_info["features"]))
        return model

    @property
    def parts(self) -> list[str]:
        """The encoders present, in feature order: "high_level", "low_level"."""
        return [name for name, part in (("high_level", self.high_level),
                                        ("low_level", self.low_level)) if part]

    def feature_width(self, kind: str) -> int:
        """The width of `regression_features(..., kind)`."""
        width = self.high_level.arch.embed_dim if self.high_level else 0
        if self.low_level:
            width += self.low_level.widths[LOW_LEVEL_FEATURES[kind]]
        return width

    def low_level_score(self, image: np.ndarray) -> float:
        """Zero-shot low-level score of one image: (H, W, 3 or 4) pixels as
        `data.images.read_pixels` gives them, or float32 in [0, 1]."""
        stats = self.pristine_stats
        return zero_shot.image_low_level_score(
            image, self.low_level.patch_features, stats, patch_size=stats.patch_size,
            stride=self.stride, chunk=self.low_level.chunk)

    def check_size(self, shape: Sequence[int], needs: Iterable[str]) -> None:
        """Raises ValueError, naming the size, if an image is too small."""
        height, width = shape[:2]
        sides = []
        if "high_level" in needs:
            sides.append((self.high_level.min_side, "the high-level encoder's minimum"))
        if "low_level_features" in needs:
            sides.append((_MIN_LOW_LEVEL_SIDE, "the low-level encoder's minimum"))
        if "low_level_score" in needs:
            size = self.pristine_stats.patch_size
            rows, cols = patches.patch_grid(height, width, size, self.stride)
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
                batch_pixels: int = BATCH_PIXELS,
                ) -> Iterator[tuple[Any, ImageAnalysis | Exception]]:
        """(key, image or the error reading it) -> (key, analysis or error), in order.

        Images: (H, W, 3 or 4) pixels as `data.images.read_pixels` gives
        them, or (H, W, 3) float32 in [0, 1]. With only "low_level_score"
        needed, each image is analysed as it arrives (one held at a time).
        Otherwise items are gathered until `batch_size` images or
        `batch_pixels` pixels (an image larger than that goes alone), and
        same-size images go through the whole-image encoders together. An
        image that is too small, fails in an encoder or gives a non-finite
        result, or an error passed in, yields its exception (a ValueError or
        RuntimeError) and the rest go on. needs: a subset of NEEDS.
        """
        needs = self.check_needs(needs)
        if batch_size < 1 or batch_pixels < 1:
            raise ValueError(f"batch_size and batch_pixels must be >= 1, got "
                             f"{batch_size} and {batch_pixels}")
        one_at_a_time = not needs & WHOLE_IMAGE_NEEDS
        buffer, pixels = [], 0
        for item in items:
            count = _pixel_count(item[1])
            if buffer and pixels + count > batch_pixels:
                yield from self._analyse_buffer(buffer, needs)
                buffer, pixels = [], 0
            buffer.append(item)
            pixels += count
            if one_at_a_time or len(buffer) >= batch_size or pixels >= batch_pixels:
                yield from self._analyse_buffer(buffer, needs)
                buffer, pixels = [], 0
            del item  # Else it holds this image while the next one is decoded.
        if buffer:
            yield from self._analyse_buffer(buffer, needs)

    def _analyse_buffer(self, buffer, needs):
        results: dict[int, ImageAnalysis | Exception] = {}
        by_size = collections.defaultdict(list)
        for index, (_, image) in enumerate(buffer):
            if isinstance(image, Exception):
                results[index] = image
                continue
            try:
                self.check_size(image.shape, needs)
            except ValueError as error:
                results[index] = error
                continue
            by_size[image.shape[:2]].append(index)
        for indices in by_size.values():
            for start, size in _sub_batches(len(indices)):
                chosen = indices[start:start + size]
                analyses = self._analyse_batch([buffer[i][1] for i in chosen], needs)
                results.update(zip(chosen, analyses))
        return [(key, results[index]) for index, (key, _) in enumerate(buffer)]

    def _analyse_batch(self, pixels: list[np.ndarray],
                       needs) -> list[ImageAnalysis | Exception]:
        """Same-size images -> an analysis or the error, per image."""
        try:
            analyses = self._whole_image_outputs(pixels, needs)
        except (RuntimeError, MemoryError, ValueError) as error:  # e.g. out of memory
            return [_one_line(error, "the whole-image encoders failed")] * len(pixels)
        results: list[ImageAnalysis | Exception] = []
        for analysis, image in zip(analyses, pixels):
            try:
                if "low_level_score" in needs:
                    analysis.low_level_score = self.low_level_score(image)
                bad = analysis.non_finite()
                if bad:
                    raise ValueError(f"the model gave a non-finite {bad} result (NaN "
                                     "or inf); its parameters or statistics are damaged")
                results.append(analysis)
            except (RuntimeError, MemoryError, ValueError) as error:
                results.append(_one_line(error, "the low-level encoder failed"))
        return results

    def _whole_image_outputs(self, pixels: list[np.ndarray], needs) -> list[ImageAnalysis]:
        analyses = [ImageAnalysis() for _ in pixels]
        if not needs & WHOLE_IMAGE_NEEDS:
            return analyses
        # float32 only now, for this bounded batch (a view for one image).
        batch = (image_files.to_float(pixels[0])[None] if len(pixels) == 1 else
                 np.stack([image_files.to_float(image) for image in pixels]))
        if "high_level" in needs:
            embeddings = self.high_level.embeddings(batch)
            for analysis, emb, score in zip(analyses, embeddings,
                                            self.high_level.scores(embeddings)):
                analysis.high_level_embedding, analysis.high_level_score = emb, float(score)
        if "low_level_features" in needs:
            out = self.low_level.image_features(batch)
            for i, analysis in enumerate(analyses):
                analysis.low_level_features = {
                    kind: out[key][i] for kind, key in LOW_LEVEL_FEATURES.items()}
        return analyses

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


def _pixel_count(image) -> int:
    return 0 if isinstance(image, Exception) else image.shape[0] * image.shape[1]


def _one_line(error: Exception, what: str) -> Exception:
    """`error` itself if its message is one line, else `what` and its first line."""
    text = str(error).strip()
    if text and "\n" not in text:
        return error
    first = text.splitlines()[0][:200] if text else ""
    return RuntimeError(f"{what} ({type(error).__name__}: {first})")


def _sub_batches(count: int) -> list[tuple[int, int]]:
    """(start, size) of count items split into descending powers of two."""
    out, start = [], 0
    for size in _power_of_two_parts(count):
        out.append((start, size))
        start += size
    return out


# Reading and checking the folder's files -------------------------------------------

def read_description(folder) -> dict:
    """model.json of a model folder, checked; ModelFolderError otherwise.

    Also checks that every file it lists is present.
    """
    folder = pathlib.Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: no {MODEL_JSON} "
                               "(write one with python -m grepq_jax.export)")
    description, source = read_json(path), str(path)
    version = require(description, "format_version", int, source)
    if version != FORMAT_VERSION:
        raise ModelFolderError(f"{path}: format_version {version!r}; this code "
                               f"reads {FORMAT_VERSION}")
    for key in ("low_level", "high_level", "regressor"):
        require(description, key, bool, source)
    if not (description["low_level"] or description["high_level"]):
        raise ModelFolderError(f"{path}: lists no encoder (low_level and high_level "
                               "are both false)")
    if description["low_level"]:
        settings = require(description, "zero_shot", dict, source)
        for key in ("patch_size", "stride"):
            require(settings, key, int, f"{source} (zero_shot)", positive=True)
    expected = {"low_level": [LOW_LEVEL_DIR, PRISTINE_FILE],
                "high_level": [HIGH_LEVEL_DIR],
                "regressor": [REGRESSOR_FILE, REGRESSOR_JSON]}
    for part, names in expected.items():
        for name in names if description[part] else []:
            if not (folder / name).exists():
                raise ModelFolderError(f"{path} lists {part}, but {folder / name} "
                                       "is missing")
    return description


def _read_npz(path: pathlib.Path, reader):
    """reader(np.load(path)), with any failure as a ModelFolderError naming path."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return reader(arrays)
    except ModelFolderError:
        raise
    except Exception as error:  # zipfile, numpy and our own checks' errors.
        raise ModelFolderError(f"{path}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """Our checks' messages as they are; a reader's failure with its type."""
    if type(error) is ValueError:
        return str(error)
    return f"cannot read it ({type(error).__name__}: {error})"


def read_pristine_statistics(folder: pathlib.Path, low: LowLevelEncoder,
                             description: dict) -> pristine.PristineStatistics:
    """The statistics, checked against the encoder and model.json."""
    path = folder / PRISTINE_FILE
    stats = _read_npz(path, pristine.PristineStatistics.from_arrays)
    width = low.widths["projection"]
    if len(stats.mu) != width:
        raise ModelFolderError(f"{path}: mu has {len(stats.mu)} features, but the "
                               f"low-level encoder gives {width}")
    if stats.patch_size != description["zero_shot"]["patch_size"]:
        raise ModelFolderError(
            f"{path}: patch_size {stats.patch_size} differs from {folder / MODEL_JSON}'s "
            f"zero_shot.patch_size {description['zero_shot']['patch_size']}")
    return stats


def read_regressor_info(folder: pathlib.Path, parts: list[str]) -> dict:
    """regressor.json, checked: features, parts (equal to the model's), score_range."""
    path = folder / REGRESSOR_JSON
    info, source = read_json(path), str(path)
    if require(info, "features", str, source) not in LOW_LEVEL_FEATURES:
        raise ModelFolderError(f"{path}: features must be one of "
                               f"{sorted(LOW_LEVEL_FEATURES)}, got {info['features']!r}")
    if require(info, "parts", list, source) != parts:
        raise ModelFolderError(f"{path}: the regressor reads {info['parts']}, but the "
                               f"model holds {parts}")
    low, high = (require(info, "score_range", list, source) + [None, None])[:2]
    if not (len(info["score_range"]) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in (low, high)) and low < high):
        raise ModelFolderError(f"{path}: score_range must be [low, high], two finite "
                               f"numbers with low < high, got {info['score_range']!r}")
    return info


def read_regressor(folder: pathlib.Path, width: int) -> RidgeRegressor:
    """regressor.npz, checked: finite, (width,) vectors, positive scales."""
    def check(arrays) -> RidgeRegressor:
        for key in ("mean", "scale", "weights", "intercept", "alpha"):
            if key not in arrays:
                raise ValueError(f"no array {key!r}")
            value = np.asarray(arrays[key])
            if value.dtype.kind not in "fiu" or not np.isfinite(value).all():
                raise ValueError(f"{key} must hold finite numbers")
            shape = () if key in ("intercept", "alpha") else (width,)
            if value.shape != shape:
                raise ValueError(f"{key} has shape {list(value.shape)}, expected "
                                 f"{list(shape)} (the encoders give {width} features)")
        if not (np.asarray(arrays["scale"]) > 0).all():
            raise ValueError("scale must be positive")
        return RidgeRegressor.from_arrays(arrays)
    return _read_npz(folder / REGRESSOR_FILE, check)
