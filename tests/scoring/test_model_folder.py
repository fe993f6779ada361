"""Damaged model folders are refused when opened: one line naming the file and
key, exit 2, before any image is read or any output written.

Each case copies the tiny model folder of model_fixtures.py (both encoders,
plus a regressor) and damages one thing, as a truncated download, a hand
edit or a mismatched export would.
"""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from grepq_jax.scoring.model_folder import load_model
from grepq_jax.formats import encoder_export
from grepq_jax import errors
from grepq_jax.scoring import api
from grepq_jax.commands import cli, score
from grepq_jax.evaluation import regression
from grepq_jax.scoring.model_folder import write_regressor
from support.model_fixtures import high_level_export, low_level_export, model_folder  # noqa: F401

FEATURES = 16 + 32  # CLIP embedding + width-4 ResNet-18 pooled features


@pytest.fixture(scope="module")
def regressor_folder(tmp_path_factory, model_folder):
    """The model folder with a regressor on the pooled features."""
    folder = tmp_path_factory.mktemp("with_regressor") / "model"
    shutil.copytree(model_folder, folder)
    ridge = regression.RidgeRegressor(
        mean=np.zeros(FEATURES), scale=np.ones(FEATURES),
        weights=np.linspace(-1, 1, FEATURES), intercept=3.0, alpha=1.0)
    write_regressor(folder, ridge, {"features": "pooled",
                                    "parts": ["high_level", "low_level"],
                                    "score_range": [1.0, 5.0]})
    return folder


def _json(name, change):
    def damage(folder):
        path = folder / name
        value = json.loads(path.read_text())
        path.write_text(json.dumps(change(value)))
    return damage


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return data
    return change


def _drop(key):
    return lambda data: {k: v for k, v in data.items() if k != key}


def _npz(name, change):
    def damage(folder):
        with np.load(folder / name) as stored:
            arrays = dict(stored)
        change(arrays)
        np.savez(folder / name, **arrays)
    return damage


def _write(name, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _truncate(name):
    def damage(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2])
    return damage


def _remove(name):
    def damage(folder):
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def _damage_params(name, how):
    """Truncates or scrambles every stored file of an export's parameters."""
    def damage(folder):
        for path in (folder / name / "params").rglob("*"):
            if path.is_file() and path.stat().st_size > 64:
                data = bytearray(path.read_bytes())
                if how == "truncate":
                    data = data[:len(data) // 2]
                else:
                    data[100::7] = bytes(b ^ 0xFF for b in data[100::7])
                path.write_bytes(bytes(data))
    return damage


def _rewrite_export(name, change):
    """Reads an export, changes its tree, and writes it back."""
    def damage(folder):
        tree, metadata = encoder_export.read(str(folder / name))
        tree = change(dict(tree))
        shutil.rmtree(folder / name)
        encoder_export.write(str(folder / name), tree, metadata)
    return damage


def _nan_first_kernel(tree):
    kernel = np.array(tree["params"]["encoder"]["conv1"]["kernel"])
    kernel[0, 0, 0, 0] = np.nan
    tree["params"]["encoder"]["conv1"]["kernel"] = kernel
    return tree


def _short_prompts(tree):
    tree["prompt_embeddings"] = np.ones((1, 2, 8), np.float32)
    return tree


def _pop(key):
    return lambda arrays: arrays.pop(key)


def _put(key, value):
    return lambda arrays: arrays.__setitem__(key, value(arrays))


def _nan_at_0(name):
    def value(arrays):
        array = arrays[name].astype(np.float64)
        array.flat[0] = np.nan
        return array
    return value


def _asymmetric(arrays):
    cov = arrays["cov"].copy()
    cov[0, 1] += 1.0
    return cov


# (case, damage, the file the message names, what it says)
DAMAGES = [
    ("model.json a list", _json("model.json", lambda d: [d]),
     "model.json", "expected a JSON object, got list"),
    ("model.json no key", _json("model.json", _drop("high_level")),
     "model.json", "no key 'high_level'"),
    ("model.json not JSON", _write("model.json", b'{"format_version": 1,'),
     "model.json", "not readable JSON"),
    ("format_version 2", _json("model.json", _set("format_version", 2)),
     "model.json", "format_version 2; this code reads 1"),
    ("no encoder", _json("model.json", lambda d: d | {"low_level": False,
                                                      "high_level": False}),
     "model.json", "lists no encoder"),
    ("stride 0", _json("model.json", _set("zero_shot", "stride", 0)),
     "model.json", "stride must be a positive int, got 0"),
    ("patch_size text", _json("model.json", _set("zero_shot", "patch_size", "96")),
     "model.json", "patch_size must be a positive int, got '96'"),
    ("pristine empty", _write("pristine_statistics.npz", b""),
     "pristine_statistics.npz", "cannot read it (EOFError"),
    ("pristine truncated", _truncate("pristine_statistics.npz"),
     "pristine_statistics.npz", "cannot read it (BadZipFile"),
    ("pristine no cov", _npz("pristine_statistics.npz", _pop("cov")),
     "pristine_statistics.npz", "no array 'cov'"),
    ("pristine NaN mu", _npz("pristine_statistics.npz", _put("mu", _nan_at_0("mu"))),
     "pristine_statistics.npz", "mu holds NaN or infinite values"),
    ("pristine mu shape", _npz("pristine_statistics.npz",
                               _put("mu", lambda a: np.zeros(9))),
     "pristine_statistics.npz", "cov must be (9, 9) like mu, got shape [8, 8]"),
    ("pristine width", _npz("pristine_statistics.npz", lambda a: a.update(
        mu=np.zeros(9), cov=np.eye(9))),
     "pristine_statistics.npz", "mu has 9 features, but the low-level encoder gives 8"),
    ("pristine asymmetric", _npz("pristine_statistics.npz", _put("cov", _asymmetric)),
     "pristine_statistics.npz", "cov is not symmetric"),
    ("pristine patch size", _npz("pristine_statistics.npz",
                                 _put("patch_size", lambda a: np.array(64))),
     "pristine_statistics.npz", "patch_size 64 differs from"),
    ("low metadata missing", _remove("low_level/encoder.json"),
     "low_level/encoder.json", "is missing"),
    ("low params missing", _remove("low_level/params"),
     "low_level/params", "is missing or empty"),
    ("low params truncated", _damage_params("low_level", "truncate"),
     "low_level/params", "cannot read the parameters"),
    ("low params scrambled", _damage_params("low_level", "scramble"),
     "low_level/params", "cannot read the parameters"),
    ("low width changed", _json("low_level/encoder.json", _set("model", "width", 8)),
     "low_level/params", "batch_stats/encoder/bn1/mean is float32[4], but the model in"),
    ("low unknown encoder", _json("low_level/encoder.json",
                                  _set("model", "encoder", "resnet99")),
     "low_level/encoder.json", "cannot build the model it describes (KeyError"),
    ("low no model key", _json("low_level/encoder.json", _drop("model")),
     "low_level/encoder.json", "no key 'model'"),
    ("low wrong pathway", _json("low_level/encoder.json", _set("pathway", "high_level")),
     "low_level/encoder.json", "expected a low_level export, got pathway 'high_level'"),
    ("low NaN parameter", _rewrite_export("low_level", _nan_first_kernel),
     "low_level/params", "params/encoder/conv1/kernel holds NaN or infinite values"),
    ("high width changed", _json("high_level/encoder.json", _set("arch", "width", 64)),
     "high_level/params", "but the encoder in"),
    ("high mean", _json("high_level/encoder.json", _set("mean", [0.5, 0.5])),
     "high_level/encoder.json", "mean must be 3 finite numbers"),
    ("high dtype", _json("high_level/encoder.json", _set("dtype", "float16")),
     "high_level/encoder.json", "dtype must be one of ['bfloat16', 'float32']"),
    ("high prompts", _rewrite_export("high_level", _short_prompts),
     "high_level/params", "prompt_embeddings must be (pairs, 2, 16), got [1, 2, 8]"),
    ("regressor parts", _json("regressor.json", _set("parts", ["low_level"])),
     "regressor.json", "the regressor reads ['low_level'], but the model holds"),
    ("regressor range", _json("regressor.json", _set("score_range", [5, 1])),
     "regressor.json", "score_range must be [low, high]"),
    ("regressor missing", _remove("regressor.json"),
     "model.json", "lists regressor, but"),
    ("regressor width", _npz("regressor.npz", _put("weights", lambda a: np.ones(47))),
     "regressor.npz", "weights has shape [47], expected [48]"),
    ("regressor NaN", _npz("regressor.npz", _put("intercept", lambda a: np.array(np.nan))),
     "regressor.npz", "intercept must hold finite numbers"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, damage, file, message", DAMAGES,
                         ids=[case[0] for case in DAMAGES])
def test_a_damaged_model_folder_is_refused_at_open(case, damage, file, message,
                                                   regressor_folder, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(regressor_folder, folder)
    damage(folder)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((150, 150, 3), np.uint8)).save(image)
    out = tmp_path / "scores.csv"
    argv = ["score", f"--model={folder}", f"--output={out}", str(image)]
    assert score.main(cli.parse(score.FLAGS, argv)) == 2, case
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # One line.
    assert err.startswith(f"cannot score with {folder}: "), err
    assert f"{folder / file}" in err and message in err, err
    assert not out.exists()  # Refused before any output was written.


def test_the_undamaged_folder_loads_with_its_regressor(regressor_folder):
    model = load_model(regressor_folder)
    assert model.parts == ["high_level", "low_level"] and model.stride == 48
    assert model.feature_width("pooled") == FEATURES == len(model.regressor.weights)
    assert model.feature_width("projection") == 16 + 8


@pytest.mark.slow
def test_damaged_parameters_end_the_command_in_one_line(regressor_folder, tmp_path):
    """As a user runs it: no traceback from Orbax's threads at shutdown either."""
    folder = tmp_path / "model"
    shutil.copytree(regressor_folder, folder)
    _damage_params("low_level", "scramble")(folder)
    done = subprocess.run(
        [sys.executable, "-m", "grepq_jax.score", f"--model={folder}", "image.png"],
        cwd=pathlib.Path(__file__).parents[2], capture_output=True, text=True,
        check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"cannot score with {folder}: {folder}/low_level/params: "
                                  "cannot read the parameters"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_an_encoder_without_encoder_json_is_refused_naming_the_file(regressor_folder,
                                                                  tmp_path):
    """An encoder folder without encoder.json (its metadata under another
    name) is not an export: one error naming the missing file."""
    folder = tmp_path / "folder"
    shutil.copytree(regressor_folder, folder)
    (folder / "low_level" / encoder_export.METADATA).rename(
        folder / "low_level" / "model.json")
    with pytest.raises(errors.InputError) as raised:
        api.create_scorer(folder)
    assert str(raised.value) == f"{folder / 'low_level' / encoder_export.METADATA} is missing"


@pytest.mark.slow
@pytest.mark.parametrize("pathway", ["low_level", "high_level"])
def test_a_training_export_given_as_the_model_says_how_to_package_it(
        request, tmp_path, pathway):
    """`score --model=runs/x/export` (the encoder a run exports, of either
    pathway) is a usage error naming the command that makes a folder."""
    export = tmp_path / "runs" / pathway / "export"
    shutil.copytree(request.getfixturevalue(f"{pathway}_export"), export)
    done = subprocess.run(
        [sys.executable, "-m", "grepq_jax.score", f"--model=runs/{pathway}/export",
         "image.png"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (  # the folder made absolute: the hint runs from anywhere
        f"cannot score with runs/{pathway}/export: {export} is a training run's "
        "encoder export, not a model folder: package it first with python -m "
        f"grepq_jax.export --{pathway}={export} --out=MODEL_FOLDER\n")
