"""The Python API: `create_scorer(model_folder)` and the Scorer it returns.

A Scorer scores paths, PIL images or arrays, one (`score`) or many
(`score_many`, streaming in batches), and draws quality maps. Each image
that cannot be scored gets its error in its result; the others go on.
"""
import dataclasses
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from grepq_jax.scoring.model_folder import load_model
from grepq_jax.formats import images, model_cache
from grepq_jax.scoring import quality_model as qm, zero_shot

MODES = {  # mode -> what QualityModel.analyse computes for it
    "zero_shot": frozenset({qm.Need.LOW_LEVEL_SCORE, qm.Need.HIGH_LEVEL}),
    "zero_shot_low": frozenset({qm.Need.LOW_LEVEL_SCORE}),
    "zero_shot_high": frozenset({qm.Need.HIGH_LEVEL}),
    "regressor": None,  # the regressor's parts: QualityModel.regression_needs()
}
SCORE_RANGES = {"zero_shot": (0.0, 1.5), "zero_shot_low": (0.0, 0.5),
                "zero_shot_high": (0.0, 1.0)}
_SCORE_COLUMN = {"zero_shot": "combined", "zero_shot_low": "low_level",
                 "zero_shot_high": "high_level"}  # which part .score() returns
ZERO_SHOT_COLUMNS = ("path", "low_level", "high_level", "combined", "error")
REGRESSOR_COLUMNS = ("path", "prediction", "error")
PATH_TYPES = (str, bytes, os.PathLike)


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """One scored image: `score` (None on error) and its parts by column name."""
    source: Any
    score: float | None
    parts: dict[str, float]
    error: str | None = None


# A file name's bytes that are not UTF-8 reach Python as lone surrogates
# (surrogate escapes), which no output encoding accepts.
_SURROGATES = re.compile("[\ud800-\udfff]")


def printable(text: str | bytes | os.PathLike) -> str:
    """A path (or a message holding one) as text any UTF-8 output takes.

    os.fsdecode, then each byte that is not UTF-8 (a surrogate escape) is
    written as the four characters \\xNN: the name b"a_\\xff.png" prints
    as a_\\xff.png.
    """
    def escape(match):
        code = ord(match[0])
        return f"\\x{code - 0xDC00:02x}" if code >= 0xDC80 else f"\\u{code:04x}"
    return _SURROGATES.sub(escape, os.fsdecode(text))


def default_mode(model: qm.QualityModel) -> str:
    """zero_shot with both encoders, else the zero-shot mode of the one present."""
    if model.low_level and model.high_level:
        return "zero_shot"
    return "zero_shot_low" if model.low_level else "zero_shot_high"


def as_pixels(image, *, max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """A path, PIL image or array -> pixels as `formats.images.read_pixels` gives them.

    Paths: str, bytes or os.PathLike. Arrays: (H, W, 3) floating point in
    [0, 1], or uint8 (H, W, 3) / (H, W). PIL images get their EXIF
    orientation applied, as files do. More than `max_pixels` pixels is an
    error. Raises ValueError (UnusableImageError for files) saying why.
    """
    if isinstance(image, PATH_TYPES):
        return images.read_pixels(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        images.check_pixel_count(*image.size, max_pixels)
        try:
            return images.pil_to_pixels(ImageOps.exif_transpose(image))
        except OSError as error:  # A lazily opened image that fails to decode.
            raise images.UnusableImageError(f"cannot decode ({error})") from error
    array = np.asarray(image)
    if array.size == 0:
        raise ValueError(f"an empty image (an array of shape {array.shape})")
    if array.ndim in (2, 3):
        images.check_pixel_count(array.shape[1], array.shape[0], max_pixels)
    if array.dtype == np.uint8:
        if array.ndim == 2:
            return images.grey_to_rgb(array)
        if array.ndim == 3 and array.shape[-1] == 3:
            return array
    elif np.issubdtype(array.dtype, np.floating) and array.ndim == 3 and array.shape[-1] == 3:
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ValueError("a float image must hold finite values in [0, 1], got "
                             f"[{array.min()}, {array.max()}]")
        return array.astype(np.float32, copy=False)
    raise ValueError(f"expected an (H, W, 3) RGB array in [0, 1] (or uint8), got "
                     f"{array.dtype} of shape {array.shape}")


class Scorer:
    """Scores images with a model folder; see the module docstring for modes.

    score_range: (low, high) of the scores (nominal for the regressor);
    higher_is_better: always True.
    """
    higher_is_better = True

    def __init__(self, model: qm.QualityModel, mode: str | None = None, *,
                 batch_size: int = 8, batch_pixels: int = qm.BATCH_PIXELS,
                 max_pixels: int = images.MAX_PIXELS):
        mode = mode or default_mode(model)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
        if mode == "regressor":
            if model.regressor is None:
                raise ValueError("this model folder has no regressor: fit one with "
                                 "python -m grepq_jax.evaluate --fit_regressor_into_model")
            self.needs = model.regression_needs()
            self.score_range = tuple(model.regressor_info["score_range"])
        else:
            self.needs = model.check_needs(MODES[mode])
            self.score_range = SCORE_RANGES[mode]
        for name, value in (("batch_size", batch_size), ("batch_pixels", batch_pixels),
                            ("max_pixels", max_pixels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.model, self.mode = model, mode
        self.batch_size, self.batch_pixels, self.max_pixels = (batch_size, batch_pixels,
                                                               max_pixels)
        self.columns = REGRESSOR_COLUMNS if mode == "regressor" else ZERO_SHOT_COLUMNS

    def score(self, image) -> float:
        """The score of one path, PIL image or (H, W, 3) array in [0, 1].

        Raises ValueError (UnusableImageError for an unreadable file) if it
        cannot be scored.
        """
        result = next(self.score_many([image]))
        if result.error is not None:
            raise ValueError(f"{describe(image)}: {result.error}")
        return result.score

    def quality_map(self, image) -> np.ndarray:
        """Where one path, PIL image or array looks damaged: (H, W) float64, at
        each pixel the mean distance of the low-level patches covering it to
        the pristine Gaussian (higher is worse; NaN at the uncovered right and
        bottom edges). Raises ValueError if it cannot be made (no low-level
        encoder, an unreadable or too small image).
        """
        try:
            return self.model.quality_map(as_pixels(image, max_pixels=self.max_pixels))
        except ValueError as error:
            raise ValueError(f"{describe(image)}: {error}") from error

    def score_many(self, sources: Iterable) -> Iterator[ScoreResult]:
        """ScoreResult per source, in order, reading each lazily (bounded memory).

        A source that cannot be read or scored gets a result with `error`.
        """
        analyses = self.model.analyse(self._read_lazily(sources), needs=self.needs,
                                      batch_size=self.batch_size,
                                      batch_pixels=self.batch_pixels)
        return (self._result(source, analysis) for source, analysis in analyses)

    def _read_lazily(self, sources: Iterable) -> Iterator[tuple[Any, Any]]:
        for source in sources:
            try:
                yield source, as_pixels(source, max_pixels=self.max_pixels)
            except ValueError as error:
                yield source, error

    def _result(self, source, analysis) -> ScoreResult:
        if isinstance(analysis, Exception):
            return ScoreResult(source, None, {},
                               printable(str(analysis) or type(analysis).__name__))
        if self.mode == "regressor":
            kind = self.model.regressor_info["features"]
            features = self.model.regression_features(analysis, kind)[None]
            parts = {"prediction": float(self.model.regressor.predict(features)[0])}
        else:
            parts = {name: value for name, value in (
                ("low_level", analysis.low_level_score),
                ("high_level", analysis.high_level_score)) if value is not None}
            if self.mode == "zero_shot":
                parts["combined"] = float(zero_shot.combined_score(parts["low_level"],
                                                                   parts["high_level"]))
        if not all(np.isfinite(value) for value in parts.values()):
            return ScoreResult(source, None, {}, f"the model gave a non-finite score "
                               f"{parts}; its folder is damaged")
        column = "prediction" if self.mode == "regressor" else _SCORE_COLUMN[self.mode]
        return ScoreResult(source, parts[column], parts)


def describe(source) -> str:
    """A path as printable text; anything else by its type."""
    if isinstance(source, PATH_TYPES):
        return printable(source)
    return f"{type(source).__name__} image"


def create_scorer(model_folder, mode: str | None = None, *, batch_size: int = 8,
                  chunk: int = 64, batch_pixels: int = qm.BATCH_PIXELS,
                  max_pixels: int = images.MAX_PIXELS) -> Scorer:
    """A Scorer for the model folder written by `python -m grepq_jax.export`.

    mode: "zero_shot", "zero_shot_low", "zero_shot_high" or "regressor";
    None picks zero_shot, or the zero-shot mode of the one encoder present.
    batch_size and batch_pixels: at most this many same-size images, and
    pixels, through the whole-image encoders at once; chunk: low-level
    patches at once. None of these changes a score (the low-level score is
    bit-identical; whole-image outputs agree to float32 rounding).
    max_pixels: larger images are refused, each with its error. Raises
    errors.InputError (a ValueError) naming the file when the folder is
    damaged. `model_folder` may be a name `grepq download` wrote ("grepq"),
    found in its cache unless a folder of that name is here.
    """
    model_folder = model_cache.resolve(model_folder)
    return Scorer(load_model(model_folder, chunk=chunk), mode,
                  batch_size=batch_size, batch_pixels=batch_pixels,
                  max_pixels=max_pixels)
