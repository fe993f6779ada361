"""The scoring model folder's format: its file names, reading them checked,
and adding a regressor. `grepq export` (scoring/packing.py) packages a folder;
`load_model` reads one, checked, into a QualityModel (quality_model.py).

A model folder (written by `grepq_jax.commands.export`) holds:

    model.json               {"format_version", "low_level", "high_level",
                              "regressor"}: what is present; "zero_shot":
                             {"patch_size", "stride"}; "pristine": {"source",
                             "num_patches", "skipped_images"}
    low_level/               an encoder export (formats/encoder_export.py:
                             params/ and encoder.json) of {"params",
                             "batch_stats"} and {"pathway", "model", "step"}
    high_level/              an encoder export of {"encoder",
                             "prompt_embeddings" (P, 2, D)} and {"pathway",
                             "encoder" ("clip_vit" if absent, or "clip_rn50":
                             then tree["encoder"] is {"params",
                             "batch_stats"}), "arch", "mean", "std",
                             "prompts", "dtype", "step"}
    pristine_statistics.npz  PristineStatistics.to_arrays() (with low_level/)
    regressor.npz            RidgeRegressor.to_arrays() (optional)
    regressor.json           what the regressor reads and predicts (optional)
    .grepq-export-unfinished only while grepq export fills the folder (or
                             after it was stopped): the folder is not usable

Folders packaged before the encoders' metadata was named encoder.json hold
low_level/model.json and high_level/model.json instead; checkpoint reads
either name.
"""
import io
import json
import math
import os

from etils import epath
import numpy as np

from grepq_jax import errors
from grepq_jax.formats import encoder_export
from grepq_jax.formats import output_files
from grepq_jax.formats.paths import absolute
from grepq_jax.scoring import pristine
from grepq_jax.formats.encoder_export import read_json, require
from grepq_jax.scoring.encoders import HighLevelEncoder, LowLevelEncoder
from grepq_jax.scoring.quality_model import LOW_LEVEL_FEATURES, QualityModel
from grepq_jax.scoring.ridge import RidgeRegressor

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
LOW_LEVEL_DIR = "low_level"
HIGH_LEVEL_DIR = "high_level"
PRISTINE_FILE = "pristine_statistics.npz"
REGRESSOR_FILE = "regressor.npz"
REGRESSOR_JSON = "regressor.json"
# Written first into a folder `grepq export` is filling and removed once
# model.json is in place: a folder holding it is an export that stopped.
UNFINISHED_MARKER = ".grepq-export-unfinished"



# Reading and checking the folder's files -------------------------------------------

def _raise_encoder_export(folder: epath.Path, metadata: dict):
    """A training run's WORKDIR/export given where a model folder belongs: a
    common slip, answered with the command that packages it."""
    pathway = metadata.get("pathway", "low_level") if isinstance(metadata, dict) else "low_level"
    raise errors.InputError(
        f"{folder} is a training run's encoder export, not a model folder: package "
        f"it first with python -m grepq_jax.export --{pathway}={folder} --out=MODEL_FOLDER")


def load_model(folder, *, chunk: int = 64) -> QualityModel:
    """The quality model `grepq export` wrote into `folder`, checked completely.

    chunk: at most this many low-level patches go through at once (bounds
    memory on very large images; does not change scores). Raises
    errors.InputError naming the file and what is wrong.
    """
    folder = epath.Path(absolute(os.fspath(folder)))  # Orbax wants absolute paths; gs:// too.
    description = read_description(folder)
    low = high = stats = None
    if description["low_level"]:
        low = LowLevelEncoder.from_export(folder / LOW_LEVEL_DIR, chunk=chunk)
        stats = read_pristine_statistics(folder, low, description)
    if description["high_level"]:
        high = HighLevelEncoder.from_export(folder / HIGH_LEVEL_DIR)
    model = QualityModel(low_level=low, high_level=high, pristine_stats=stats,
                         stride=description["zero_shot"]["stride"] if low else None)
    if description["regressor"]:
        model.regressor_info = read_regressor_info(folder, model.parts)
        model.regressor = read_regressor(
            folder, model.feature_width(model.regressor_info["features"]))
    return model


def read_description(folder) -> dict:
    """model.json of a model folder, checked; errors.InputError otherwise.

    Also checks that every file it lists is present.
    """
    folder = epath.Path(folder)
    path = folder / MODEL_JSON
    if (folder / UNFINISHED_MARKER).exists():
        raise errors.InputError(f"{folder} is an unfinished model folder (grepq export "
                               "stopped before finishing it): run the export again with "
                                "the same --out, which replaces it")
    if not path.is_file():
        if (folder / encoder_export.METADATA).is_file():
            _raise_encoder_export(folder, read_json(folder / encoder_export.METADATA))
        raise errors.InputError(f"{folder} is not a model folder: no {MODEL_JSON} "
                                "(write one with python -m grepq_jax.export)")
    description, source = read_json(path), str(path)
    version = require(description, "format_version", int, source)
    if version != FORMAT_VERSION:
        raise errors.InputError(f"{path}: format_version {version!r}; this code "
                                f"reads {FORMAT_VERSION}")
    for key in ("low_level", "high_level", "regressor"):
        require(description, key, bool, source)
    if not (description["low_level"] or description["high_level"]):
        raise errors.InputError(f"{path}: lists no encoder (low_level and high_level "
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
                raise errors.InputError(f"{path} lists {part}, but {folder / name} "
                                        "is missing")
    return description


def _read_npz(path: epath.Path, reader):
    """reader(np.load(path)), with any failure as a errors.InputError naming path."""
    try:
        with path.open("rb") as file, np.load(io.BytesIO(file.read()),
                                                allow_pickle=False) as arrays:
            return reader(arrays)
    except errors.InputError:
        raise
    except Exception as error:  # zipfile, numpy and our own checks' errors.
        raise errors.InputError(f"{path}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """Our checks' messages as they are; a reader's failure with its type."""
    if type(error) is ValueError:
        return str(error)
    return f"cannot read it ({type(error).__name__}: {error})"


def read_pristine_statistics(folder: epath.Path, low: LowLevelEncoder,
                             description: dict) -> pristine.PristineStatistics:
    """The statistics, checked against the encoder and model.json."""
    path = folder / PRISTINE_FILE
    stats = _read_npz(path, pristine.PristineStatistics.from_arrays)
    width = low.widths["projection"]
    if len(stats.mu) != width:
        raise errors.InputError(f"{path}: mu has {len(stats.mu)} features, but the "
                                f"low-level encoder gives {width}")
    if stats.patch_size != description["zero_shot"]["patch_size"]:
        raise errors.InputError(
            f"{path}: patch_size {stats.patch_size} differs from {folder / MODEL_JSON}'s "
            f"zero_shot.patch_size {description['zero_shot']['patch_size']}")
    return stats


def read_regressor_info(folder: epath.Path, parts: list[str]) -> dict:
    """regressor.json, checked: features, parts (equal to the model's), score_range."""
    path = folder / REGRESSOR_JSON
    info, source = read_json(path), str(path)
    if require(info, "features", str, source) not in LOW_LEVEL_FEATURES:
        raise errors.InputError(f"{path}: features must be one of "
                                f"{sorted(LOW_LEVEL_FEATURES)}, got {info['features']!r}")
    if require(info, "parts", list, source) != parts:
        raise errors.InputError(f"{path}: the regressor reads {info['parts']}, but the "
                                f"model holds {parts}")
    low, high = (require(info, "score_range", list, source) + [None, None])[:2]
    if not (len(info["score_range"]) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in (low, high)) and low < high):
        raise errors.InputError(f"{path}: score_range must be [low, high], two finite "
                                f"numbers with low < high, got {info['score_range']!r}")
    return info


def read_regressor(folder: epath.Path, width: int) -> RidgeRegressor:
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


def write_regressor(folder, regressor: RidgeRegressor, info: dict) -> None:
    """Adds (or replaces) the regressor of an existing model folder.

    info: JSON-able; what the regressor reads and predicts (see evaluate.py).
    """
    folder = epath.Path(absolute(os.fspath(folder)))
    description = read_description(folder)
    # Each file complete or not at all, model.json last: a failure leaves the
    # folder as it was or with an unlisted regressor, never a listed broken one.
    output_files.write_npz(folder / REGRESSOR_FILE, regressor.to_arrays())
    output_files.write_text(folder / REGRESSOR_JSON, json.dumps(info, indent=2))
    description["regressor"] = True
    output_files.write_text(folder / MODEL_JSON, json.dumps(description, indent=2))
