"""The high-level pathway with CLIP's RN50 tower: one step against the PyTorch
original, training through the one trainer, the export and resuming.

The step is checked against a stored step of GRepQ's train_hlm.py restated in
PyTorch (tests/fixtures/make_rn50_step_reference.py, no torch needed here).
"""
import functools
import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from conftest import params_of, read_scalars
from configs import high_level as high_level_config
from grepq_jax.formats import encoder_export
from grepq_jax.formats import high_level_export
from grepq_jax import errors
from grepq_jax.scoring import api
from grepq_jax.scoring import packing
from grepq_jax.training import pseudo_labels, trainer
from grepq_jax.scoring import zero_shot
from grepq_jax.models import clip, clip_rn50, heads
from grepq_jax.formats.pytorch.clip_rn50_keys import convert_modified_resnet
from grepq_jax.training.pathways import high_level as high_level_pathway
from grepq_jax.training.stand_ins import tiny_clip_rn50
from support.model_fixtures import write_high_level_export as write_vit_export

_FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_rn50_step_reference", _FIXTURES / "make_rn50_step_reference.py")
step_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_reference)

PROMPTS = (("a good photo.", "a bad photo."),)


def tiny_rn50_config(folder, **overrides):
    config = high_level_config.get_config("tiny_rn50")
    config.data.path = str(folder)
    config.update_from_flattened_dict(overrides)
    return config


# --- one step against the PyTorch original ----------------------------------------

@functools.cache
def _stored():
    return dict(np.load(_FIXTURES / "rn50_step_reference.npz"))


def _ours(state, data):
    """The pathway's objective on the fixture's tower, head and prompts: loss,
    gradients and updated batch statistics."""
    arch, variables = convert_modified_resnet(state, source="fixture", heads=step_reference.HEADS)
    head = heads.ProjectionHead(features=step_reference.HEAD_DIM)
    params = {"encoder": variables["params"],
              "head": {"Dense_0": {"kernel": data["head_weight"].T, "bias": data["head_bias"]}}}
    objective = functools.partial(
        high_level_pathway.group_contrastive_objective,
        encoder=clip_rn50.ModifiedResNet(arch), head=head,
        # OpenAI's text features, normalised as the original's pseudo_labels does.
        prompt_embeddings=(data["text_features"] / np.linalg.norm(
            data["text_features"], axis=1, keepdims=True))[None],
        group_size=step_reference.GROUP_SIZE, label_temperature=0.1, temperature=0.5,
        train_head=False)
    batch = {"image": np.ascontiguousarray(data["crops"].transpose(0, 2, 3, 1))}
    grad_fn = jax.jit(jax.value_and_grad(objective, has_aux=True))
    (loss, (batch_stats, metrics)), grads = grad_fn(
        params, {"encoder": variables["batch_stats"]}, batch)
    embeddings, _ = high_level_pathway.tower_embeddings(
        objective.keywords["encoder"], params["encoder"], {"encoder": variables["batch_stats"]},
        batch["image"])
    quality = pseudo_labels.quality_pseudo_labels(embeddings, objective.keywords["prompt_embeddings"])
    metrics["best"], metrics["worst"] = pseudo_labels.split_quality_groups(
        quality, step_reference.GROUP_SIZE)
    return loss, grads, batch_stats["encoder"], metrics


@pytest.mark.slow
def test_step_matches_the_pytorch_original():
    stored, data = _stored(), step_reference.inputs()
    state = step_reference.visual_state()
    loss, grads, batch_stats, metrics = _ours(state, data)
    # Same float32 arithmetic in another order (oneDNN vs XLA): measured 1e-7.
    np.testing.assert_allclose(loss, stored["loss"], rtol=0, atol=1e-5)
    assert metrics["pseudo_label_gap"] > 0
    order = stored["order"]  # the original's ranking, lowest first
    best, worst = metrics["best"], metrics["worst"]
    np.testing.assert_array_equal(worst, order[:step_reference.GROUP_SIZE])
    np.testing.assert_array_equal(best, order[::-1][:step_reference.GROUP_SIZE])

    # The torch gradients and statistics, in Flax's layout through the weight
    # converter (kernels transposed, BatchNorm names mapped).
    torch_side = {k.split("/", 1)[1]: v for k, v in stored.items() if k.startswith(("grad/", "stats/"))}
    _, expected = convert_modified_resnet(torch_side, source="stored", heads=step_reference.HEADS)
    ours_flat = flatten_dict(grads["encoder"])
    assert ours_flat.keys() == flatten_dict(expected["params"]).keys()
    for path, want in flatten_dict(expected["params"]).items():
        # Relative to each tensor's largest gradient: measured 1.7e-5. The
        # absolute term: k_proj's bias has no gradient in theory (softmax ignores
        # a shift common to all keys), both sides hold 1e-8 of rounding.
        scale = np.abs(want).max()
        error = np.abs(np.asarray(ours_flat[path]) - want).max()
        assert error <= 1e-4 * scale + 1e-7, ("/".join(path), error, scale)
    assert all(np.abs(g).max() > 0 for g in ours_flat.values())
    # The head is never optimised, as in the original.
    assert all(not np.any(g) for g in jax.tree.leaves(grads["head"]))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 batch_stats, expected["batch_stats"])


# --- training through the one trainer ----------------------------------------------

def _tree_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.mark.slow
def test_tiny_rn50_trains_updates_statistics_exports_and_resumes(photo_folder, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative workdirs, as users type them
    config = tiny_rn50_config(photo_folder, num_epochs=4, batch_size=8, num_devices=8)
    state = trainer.train_and_evaluate(config, "run")
    loss = read_scalars("run/tensorboard", "loss")
    assert len(loss) == 4 and np.all(np.isfinite(loss)), loss

    # Every BatchNorm's running statistics moved from the tiny RN50's.
    initial = high_level_export.read("run/tiny_clip_rn50")
    trained = jax.device_get(state.batch_stats["encoder"])
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), initial.variables["batch_stats"],
                         trained)
    assert min(jax.tree.leaves(moved)) > 1e-4, moved
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(initial.variables["params"]),
                                               jax.tree.leaves(params_of(state)["encoder"])))

    # The export: convert.py's format, the trained weights and statistics.
    tree, metadata = encoder_export.read("run/export")
    assert set(tree) == {"encoder", "prompt_embeddings"}
    assert set(tree["encoder"]) == {"params", "batch_stats"}
    assert {k: metadata[k] for k in ("pathway", "encoder", "step", "dtype", "prompts")} == {
        "pathway": "high_level", "encoder": "clip_rn50", "step": 4, "dtype": "float32",
        "prompts": [list(p) for p in PROMPTS]}
    assert clip_rn50.ModifiedResNetArch.from_dict(metadata["arch"]) == tiny_clip_rn50.IMAGE_ARCH
    assert metadata["mean"] == list(clip.OPENAI_MEAN) and metadata["std"] == list(clip.OPENAI_STD)
    _tree_equal(tree["encoder"]["params"], params_of(state)["encoder"])
    _tree_equal(tree["encoder"]["batch_stats"], trained)
    _tree_equal(tree["prompt_embeddings"], initial.prompt_embeddings)

    # Scoring packages it and scores in inference mode with the trained statistics.
    packing.export_model("model", high_level="run/export")
    scorer = api.create_scorer("model", mode="zero_shot_high")
    image = np.random.default_rng(0).uniform(size=(64, 80, 3)).astype(np.float32)
    pixels = (image - np.float32(clip.OPENAI_MEAN)) / np.float32(clip.OPENAI_STD)
    embedding = clip_rn50.ModifiedResNet(tiny_clip_rn50.IMAGE_ARCH).apply(
        {"params": tree["encoder"]["params"], "batch_stats": trained}, pixels[None], train=False)
    expected = zero_shot.high_level_score(np.asarray(embedding), tree["prompt_embeddings"])[0]
    assert next(scorer.score_many([image])).parts["high_level"] == pytest.approx(expected, abs=1e-6)

    # Stopped after 2 steps and run again for 4, it ends where the run above did.
    trainer.train_and_evaluate(tiny_rn50_config(photo_folder, num_epochs=2, batch_size=8,
                                              num_devices=8), "resumed")
    resumed = trainer.train_and_evaluate(config, "resumed")
    assert read_scalars("resumed/tensorboard", "loss") == loss
    _tree_equal(params_of(resumed), params_of(state))
    _tree_equal(resumed.batch_stats, state.batch_stats)


# --- the export, and loading errors ------------------------------------------------

@pytest.mark.slow
def test_the_export_reader_loads_both_towers_in_inference_mode(tmp_path):
    tiny = high_level_pathway.write_tiny_rn50(str(tmp_path / "rn50"), PROMPTS)
    exported = high_level_export.read(tiny)
    assert (exported.encoder, exported.arch, exported.prompts) == (
        "clip_rn50", tiny_clip_rn50.IMAGE_ARCH, PROMPTS)
    images = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype(np.float32)
    embed = jax.jit(exported.inference_fn())
    together = np.asarray(embed(exported.variables, images))
    alone = np.concatenate([embed(exported.variables, images[i:i + 1]) for i in range(3)])
    # Stored statistics: an image's embedding does not depend on its batch.
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert together.shape == (3, 16) and np.abs(together[0] - together[1]).max() > 1e-3
    # A damaged or mismatched export is refused, naming the array.
    tree = {"encoder": jax.tree.map(np.asarray, exported.variables),
            "prompt_embeddings": exported.prompt_embeddings}
    del tree["encoder"]["batch_stats"]["layer2_0"]["bn3"]["var"]
    with pytest.raises(errors.InputError,
                       match="^rn50/params: no array batch_stats/layer2_0/bn3/var "
                             r"\(1 missing\), which the encoder in rn50/encoder.json needs$"):
        high_level_export.from_tree(tree, exported.metadata, source="rn50")
    tree["encoder"] = jax.tree.map(np.asarray, exported.variables)
    metadata = {**exported.metadata, "arch": {**exported.metadata["arch"], "width": 16}}
    with pytest.raises(errors.InputError, match=r"^rn50/params: batch_stats/bn1/mean is "
                                                r"float32\[4\], but the encoder in "
                                                r"rn50/encoder.json needs float32\[8\]$"):
        high_level_export.from_tree(tree, metadata, source="rn50")
    vit = high_level_export.read(str(write_vit_export(tmp_path / "vit")))
    assert vit.encoder == "clip_vit" and set(vit.variables) == {"params"}


def test_rn50_config_errors_name_the_fix(photo_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = high_level_config.get_config("paper")
    config.data.path = str(photo_folder)
    with pytest.raises(errors.UsageError, match=r"exports/openai_rn50 is not an export.*"
                                                r"grepq convert --clip=RN50.pt"):
        trainer.train_and_evaluate(config, "run")
    write_vit_export(tmp_path / "vit")
    config.model.clip = "vit"
    with pytest.raises(errors.UsageError, match="vit holds a clip_vit tower, not the clip_rn50"):
        trainer.train_and_evaluate(config, "run")
    high_level_pathway.write_tiny_rn50("rn50", PROMPTS)
    config = tiny_rn50_config(photo_folder)
    config.model.clip = "rn50"
    config.model.prompts = (("a sharp photo.", "a blurry photo."),)
    with pytest.raises(errors.UsageError, match=r"holds the embeddings of \(\('a good photo."):
        trainer.train_and_evaluate(config, "run")
    config = tiny_rn50_config(photo_folder)
    config.model.position_embedding = "bicubic"
    with pytest.raises(errors.UsageError, match="config.model.position_embedding: .*'bicubic'"):
        trainer.train_and_evaluate(config, "run")
    config.model.encoder = "clip_rn101"
    with pytest.raises(errors.UsageError, match="config.model.encoder: unknown 'clip_rn101'"):
        trainer.train_and_evaluate(config, "run")


def test_paper_config_is_the_papers_rn50_setting():
    config = high_level_config.get_config("paper")
    assert (config.model.encoder, config.data.crop, config.data.crop_size) == (
        "clip_rn50", "center", 224)
    assert (config.batch_size, config.loss.group_size, config.optim.learning_rate,
            config.optim.warmup_epochs, config.model.train_head) == (128, 4, 1e-6, 2.5, False)
    # The default stays the ViT.
    assert high_level_config.get_config().model.encoder == "clip_vit"
