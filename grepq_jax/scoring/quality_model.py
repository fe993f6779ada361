"""A scoring model's computation: the features and scores of images, given its
encoders, pristine statistics and optional regressor (model_folder.load_model
reads and checks a folder into one).

Every image is used whole at its own resolution, in inference mode, so its
result does not depend on the rest of its batch (the low-level score is
bit-identical; whole-image outputs may differ in the last float32 bits
between sub-batch sizes). Pixels stay in their file's depth and become
float32 a chunk of patches or a bounded batch at a time, and batches come in
power-of-two sizes, so a handful of compiled programs serve any mix of sizes.
"""
import collections
import dataclasses
import enum
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from grepq_jax.formats import images as image_files
from grepq_jax.scoring import patches, pristine, quality_map, zero_shot
from grepq_jax.scoring.encoders import HighLevelEncoder, LowLevelEncoder
from grepq_jax.scoring.ridge import RidgeRegressor

# Low-level whole-image outputs: "projection" (the 128-d head output the
# paper's code uses) or "pooled" (the 512-d pooled encoder features).
LOW_LEVEL_FEATURES = {"projection": "projection", "pooled": "features"}

_MIN_LOW_LEVEL_SIDE = 32  # LowLevelModel's documented minimum.


class Need(enum.StrEnum):
    """What `QualityModel.analyse` can compute for an image. A StrEnum, so
    that the names as strings ("low_level_score") are read as these."""
    LOW_LEVEL_SCORE = "low_level_score"  # the zero-shot low-level score
    HIGH_LEVEL = "high_level"  # the high-level embedding and zero-shot score
    LOW_LEVEL_FEATURES = "low_level_features"  # whole-image low-level features


NEEDS = frozenset(Need)
# What needs the whole image as float32 (the rest goes a chunk of patches at a time).
WHOLE_IMAGE_NEEDS = frozenset({Need.HIGH_LEVEL, Need.LOW_LEVEL_FEATURES})
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

    def arrays(self) -> dict[str, np.ndarray]:
        """The parts computed, by name: "low_level_score", "high_level_score",
        "high_level_embedding", "low_level_projection", "low_level_pooled"."""
        out = {}
        if self.low_level_score is not None:
            out["low_level_score"] = np.float64(self.low_level_score)
        if self.high_level_score is not None:
            out["high_level_score"] = np.float64(self.high_level_score)
            out["high_level_embedding"] = self.high_level_embedding
        for kind, value in (self.low_level_features or {}).items():
            out[f"low_level_{kind}"] = value
        return out

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
        `formats.images.read_pixels` gives them, or float32 in [0, 1]."""
        stats = self.pristine_stats
        return zero_shot.image_low_level_score(
            image, self.low_level.patch_features, stats, patch_size=stats.patch_size,
            stride=self.stride, chunk=self.low_level.chunk)

    def quality_map(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float64 map of one image: at each pixel the mean distance to the
        pristine Gaussian of the patches covering it (larger is worse; NaN at
        the edges no patch covers). Pixels as `low_level_score` takes them.
        Raises ValueError without a low-level encoder or for a too small image.
        """
        if self.low_level is None:
            raise ValueError("a quality map needs a low-level encoder; this model has "
                             f"only {self.parts}")
        stats = self.pristine_stats
        distances = quality_map.patch_distances(
            image, self.low_level.patch_features, stats, stride=self.stride,
            chunk=self.low_level.chunk)
        return quality_map.pixel_map(distances, image.shape[0], image.shape[1],
                                     size=stats.patch_size, stride=self.stride)

    def check_size(self, shape: Sequence[int], needs: Iterable[str]) -> None:
        """Raises ValueError, naming the size, if an image is too small."""
        height, width = shape[:2]
        sides = []
        if Need.HIGH_LEVEL in needs:
            sides.append((self.high_level.min_side, "the high-level encoder's minimum"))
        if Need.LOW_LEVEL_FEATURES in needs:
            sides.append((_MIN_LOW_LEVEL_SIDE, "the low-level encoder's minimum"))
        if Need.LOW_LEVEL_SCORE in needs:
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

    def check_needs(self, needs: Iterable[Need | str]) -> frozenset[Need]:
        """`needs` as Needs, if this model has the encoders for them; else ValueError."""
        needs = frozenset(needs)
        if not needs or not needs <= NEEDS:
            raise ValueError(f"needs must be a non-empty subset of "
                             f"{sorted(map(str, NEEDS))}, got {sorted(map(str, needs))}")
        needs = frozenset(map(Need, needs))
        encoder = {Need.LOW_LEVEL_SCORE: self.low_level, Need.HIGH_LEVEL: self.high_level,
                   Need.LOW_LEVEL_FEATURES: self.low_level}
        absent = sorted(str(need) for need in needs if encoder[need] is None)
        if absent:
            raise ValueError(f"this model has no encoder for {absent}; it holds "
                             f"{self.parts or 'no encoder'}")
        return needs

    def analyse(self, items: Iterable[tuple[Any, np.ndarray | Exception]], *,
                needs: Iterable[str], batch_size: int = 8,
                batch_pixels: int = BATCH_PIXELS,
                ) -> Iterator[tuple[Any, ImageAnalysis | Exception]]:
        """(key, image or the error reading it) -> (key, analysis or error), in order.

        Images: (H, W, 3 or 4) pixels as `formats.images.read_pixels` gives
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
                if Need.LOW_LEVEL_SCORE in needs:
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
        if Need.HIGH_LEVEL in needs:
            embeddings = self.high_level.embeddings(batch)
            for analysis, emb, score in zip(analyses, embeddings,
                                            self.high_level.scores(embeddings)):
                analysis.high_level_embedding, analysis.high_level_score = emb, float(score)
        if Need.LOW_LEVEL_FEATURES in needs:
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
        arrays = analysis.arrays()
        names = regression_feature_names(self.parts, kind)
        return np.concatenate([arrays[name] for name in names]).astype(np.float32)

    def regression_needs(self) -> frozenset[Need]:
        """What `analyse` must compute for `regression_features`."""
        needs = set()
        if self.high_level:
            needs.add(Need.HIGH_LEVEL)
        if self.low_level:
            needs.add(Need.LOW_LEVEL_FEATURES)
        return frozenset(needs)


def regression_feature_names(parts: Iterable[str], kind: str) -> list[str]:
    """The `ImageAnalysis.arrays()` a regressor reads, in its order: the
    high-level embedding, then the low-level `kind` features (the paper's code
    concatenates high then low); only those of `parts`."""
    names = {"high_level": "high_level_embedding", "low_level": f"low_level_{kind}"}
    return [names[part] for part in ("high_level", "low_level") if part in parts]


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
