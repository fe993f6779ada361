"""A CLIP RN50 high-level export (what `grepq convert` writes) through the use side:
export, score, create_scorer, evaluate, and the checks when a folder is opened.

A tiny ModifiedResNet (layers (1, 1, 1, 1), width 8) with random parameters
AND random BatchNorm statistics, so that inference mode is what is checked.
"""
import dataclasses
import json
import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from grepq_jax.formats import encoder_export
from grepq_jax.scoring import api
from grepq_jax.scoring import packing
from grepq_jax.commands import cli, evaluate, export
from grepq_jax.released import packaging
from grepq_jax.scoring import pristine
from grepq_jax.scoring import zero_shot
from grepq_jax.models import clip, clip_rn50
from support.model_fixtures import _random_like, low_level_export  # noqa: F401
from support.evaluation_data import write_csv_dataset

ARCH = clip_rn50.ModifiedResNetArch(layers=(1, 1, 1, 1), width=8, heads=2, embed_dim=16,
                                    image_size=64, position_embedding="none")


def _variables(seed=0):
    abstract = jax.eval_shape(lambda: clip_rn50.ModifiedResNet(ARCH).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    return _random_like(abstract, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def rn50_export(tmp_path_factory):
    directory = tmp_path_factory.mktemp("exports") / "rn50"
    prompts = np.random.default_rng(1).standard_normal((1, 2, 16)).astype(np.float32)
    encoder_export.write(str(directory), {"encoder": _variables(), "prompt_embeddings": prompts}, {
        "pathway": "high_level", "encoder": "clip_rn50",
        "arch": {**dataclasses.asdict(ARCH), "layers": list(ARCH.layers)},
        "mean": list(clip.OPENAI_MEAN), "std": list(clip.OPENAI_STD),
        "prompts": [["a good photo.", "a bad photo."]], "dtype": "float32", "step": 0})
    return directory


@pytest.fixture(scope="module")
def rn50_folder(tmp_path_factory, rn50_export, low_level_export):  # noqa: F811
    folder = tmp_path_factory.mktemp("models") / "rn50"
    packing.export_model(folder, low_level=str(low_level_export), high_level=str(rn50_export))
    return folder


def _expected_high_level(image):
    """Our ModifiedResNet in eval mode on the whole normalised image, nothing cropped."""
    pixels = (image - np.float32(clip.OPENAI_MEAN)) / np.float32(clip.OPENAI_STD)
    emb = clip_rn50.ModifiedResNet(ARCH).apply(_variables(), pixels[None], train=False)
    prompts = np.random.default_rng(1).standard_normal((1, 2, 16)).astype(np.float32)
    return float(zero_shot.high_level_score(np.asarray(emb), prompts)[0])


@pytest.mark.slow
def test_an_rn50_folder_scores_whole_images_in_inference_mode(rn50_folder, tmp_path):
    scorer = api.create_scorer(rn50_folder, mode="zero_shot_high")
    assert scorer.model.high_level.min_side == clip_rn50.MIN_SIDE
    # 75 x 101: odd sides, not multiples of 32; a ViT path would crop them.
    image = np.random.default_rng(2).uniform(size=(75, 101, 3)).astype(np.float32)
    result = next(scorer.score_many([image]))
    assert result.error is None
    assert result.parts["high_level"] == pytest.approx(_expected_high_level(image), abs=1e-6)
    cropped = _expected_high_level(image[:64, :96])
    assert abs(result.parts["high_level"] - cropped) > 1e-4  # nothing was cropped


def test_an_image_below_rn50s_minimum_gets_an_error_row(rn50_folder, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(small)
    scorer = api.create_scorer(rn50_folder, mode="zero_shot_high")
    result = next(scorer.score_many([str(small)]))
    assert result.score is None
    assert result.error == ("image of 20x40 (HxW) is smaller than the high-level "
                            "encoder's minimum (31 px)")


@pytest.mark.slow
def test_evaluate_runs_on_an_rn50_folder(rn50_folder, tmp_path):
    root = write_csv_dataset(tmp_path / "dataset", 12, 0)
    out = tmp_path / "out"
    argv = ["evaluate", f"--model={rn50_folder}", "--dataset=csv", f"--root={root}",
            f"--out={out}", "--num_train=6", "--splits=2"]
    assert evaluate.main(cli.parse(evaluate.FLAGS, argv)) == 0
    features = np.load(out / "features_csv.npz")
    assert features["array_high_level_embedding"].shape == (12, 16)  # the RN50's
    assert np.isfinite(features["array_high_level_score"]).all()
    assert "zero_shot,high_level" in (out / "results.csv").read_text()


def _damaged(rn50_export, tmp_path, change_metadata=None, change_tree=None):
    target = tmp_path / "damaged"
    tree, metadata = encoder_export.read(str(rn50_export))
    if change_metadata:
        change_metadata(metadata)
    if change_tree:
        change_tree(tree)
    encoder_export.write(str(target), tree, metadata)
    return target


DAMAGES = [
    ("width", lambda m: m["arch"].update(width=16), None,
     "params", "but the encoder in"),
    ("kind", lambda m: m.update(encoder="clip_rn99"), None,
     "encoder.json", "encoder must be one of ['clip_rn50', 'clip_vit'], got 'clip_rn99'"),
    ("position", lambda m: m["arch"].update(position_embedding="add"), None,
     "encoder.json", "cannot build the architecture it describes"),
    ("layers", lambda m: m["arch"].update(layers=["1", 1, 1, 1]), None,
     "encoder.json", "layers must be integers"),
    ("batch_stats", None, lambda t: t["encoder"].pop("batch_stats"),
     "params", "no array batch_stats/"),
    ("prompts", None, lambda t: t.update(prompt_embeddings=np.ones((1, 2, 8), np.float32)),
     "params", "prompt_embeddings must be (pairs, 2, 16), got [1, 2, 8]"),
]


@pytest.mark.parametrize("case, metadata, tree, file, message", DAMAGES,
                         ids=[d[0] for d in DAMAGES])
def test_a_damaged_rn50_export_is_refused_naming_file_and_key(
        case, metadata, tree, file, message, rn50_export, tmp_path):
    damaged = _damaged(rn50_export, tmp_path, metadata, tree)
    with pytest.raises(ValueError) as error:
        packing.export_model(tmp_path / "model", high_level=str(damaged))
    assert f"{damaged}/{file}" in str(error.value) and message in str(error.value)
    assert not (tmp_path / "model").exists()


# The original's pristine patch file ----------------------------------------------

def _patch_file(path, data, name="data"):
    with h5py.File(path, "w") as file:
        file.create_dataset(name, data=data)
    return path


def _features(patches):
    return patches.reshape(len(patches), -1)[:, :4] * [1, 2, 3, 4]


def test_the_patch_file_gives_the_gaussian_of_its_patches(tmp_path):
    data = np.random.default_rng(0).uniform(size=(10, 3, 8, 8)).astype(np.float32)
    path = _patch_file(tmp_path / "pristine_patches_008_0.70_0.90.hdf5", data)
    stats = pristine.patch_file_statistics(path, _features, chunk=3)
    mu, cov = pristine.fit_gaussian(_features(data.transpose(0, 2, 3, 1)).astype(np.float32))
    np.testing.assert_array_equal(stats.mu, mu)
    np.testing.assert_array_equal(stats.cov, cov)
    assert (stats.num_patches, stats.patch_size, stats.sharpness_fraction,
            stats.colourfulness_fraction) == (10, 8, 0.7, 0.9)


@pytest.mark.parametrize("name, data, dataset, message", [
    ("p.hdf5", np.zeros((4, 3, 8, 8), np.float32), "patches", "dataset 'data' is missing"),
    ("p.hdf5", np.zeros((4, 8, 8, 3), np.float32), "data",
     "must be (N >= 2, 3, P, P) float patches, got float32 of shape [4, 8, 8, 3]"),
    ("p.hdf5", np.full((4, 3, 8, 8), 2, np.float32), "data",
     "patches 0 to 3 hold values outside [0, 1]"),
    ("pristine_patches_096_0.75_0.80.hdf5", np.zeros((4, 3, 8, 8), np.float32), "data",
     "the name says 96 px patches, 'data' holds 8 px ones"),
])
def test_a_bad_patch_file_is_refused_naming_it_and_the_dataset(tmp_path, name, data,
                                                              dataset, message):
    path = _patch_file(tmp_path / name, data, dataset)
    with pytest.raises(ValueError, match="^" + str(path).replace(".", r"\.")) as error:
        pristine.patch_file_statistics(path, _features)
    assert message in str(error.value)


def test_export_takes_the_patch_file_and_its_patch_size(tmp_path, low_level_export,  # noqa: F811
                                                       monkeypatch):
    data = np.random.default_rng(0).uniform(size=(20, 3, 64, 64)).astype(np.float32)
    _patch_file(tmp_path / "pristine_patches_064_0.75_0.80.hdf5", data)
    monkeypatch.chdir(tmp_path)
    argv = ["export", f"--low_level={low_level_export}", "--out=model",
            "--pristine_patches=pristine_patches_064_0.75_0.80.hdf5"]
    assert export.main(cli.parse(export.FLAGS, argv)) == 0
    description = json.loads((tmp_path / "model" / "model.json").read_text())
    assert description["zero_shot"] == {"patch_size": 64, "stride": 32}
    assert description["pristine"] == {
        "source": str(tmp_path / "pristine_patches_064_0.75_0.80.hdf5"),
        "num_patches": 20, "skipped_images": []}
    assert api.create_scorer("model").model.pristine_stats.patch_size == 64


# Packaging the released files -------------------------------------------------------

def test_a_bad_released_file_leaves_no_output(tmp_path, rn50_export):
    (tmp_path / "low_level_model_weights.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="low_level_model_weights.tar: not a PyTorch file"):
        packaging.package_released_grepq(
            tmp_path / "out", low_level=str(tmp_path / "low_level_model_weights.tar"),
            high_level=str(rn50_export))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["low_level_model_weights.tar"]


@pytest.mark.slow
def test_the_released_high_level_export_packages_alone(tmp_path, rn50_export):
    (tmp_path / "out").mkdir()  # an empty folder is taken, as export takes it
    description = packaging.package_released_grepq(tmp_path / "out",
                                                  high_level=str(rn50_export))
    assert (description["low_level"], description["high_level"]) == (False, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert api.create_scorer(tmp_path / "out").mode == "zero_shot_high"


def test_a_used_output_folder_is_refused_untouched(tmp_path, rn50_export):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an empty folder"):
        packaging.package_released_grepq(tmp_path / "out", high_level=str(rn50_export))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    shutil.rmtree(tmp_path / "out")
