"""The high-level pathway end to end, with a tiny random CLIP."""

import jax
import numpy as np
import pytest
from PIL import Image

from support.clip_fixtures import tiny_clip_dir  # noqa: F401  (a pytest fixture)
from configs import high_level as high_level_config
from grepq_jax.formats import encoder_export
from grepq_jax.training import losses
from grepq_jax.training import trainer
from grepq_jax.training.data import high_level_pipeline as high_level_data
from grepq_jax.models import clip, heads
from grepq_jax.training.pathways import high_level as high_level_pathway
from conftest import params_of, read_scalars


def tiny_config(folder, clip_dir, **overrides):
    config = high_level_config.get_config("tiny")
    config.data.path = str(folder)
    config.model.clip = str(clip_dir)
    config.update_from_flattened_dict(overrides)
    return config


def flat_image(path, height, width, value):
    pixels = np.full((height, width, 3), value, np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("workers", [2, -1])
def test_crops_are_normalised_deterministic_and_cover_small_images(tmp_path, workers):
    flat_image(tmp_path / "a.png", 20, 40, 128)  # smaller than the crop
    flat_image(tmp_path / "b.png", 50, 60, 255)
    config = high_level_config.get_config("tiny").data
    config.path, config.min_side = str(tmp_path), 8
    dataset = high_level_data.create_high_level_dataset(
        config, seed=0, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    batch = dataset.batch(3, 4)["image"]
    assert batch.shape == (4, 32, 32, 3)
    values = sorted(set(np.unique(batch).round(4)))
    assert values == [round((128 / 255 - 0.5) / 0.25, 4), 2.0]
    np.testing.assert_array_equal(batch, dataset.batch(3, 4)["image"])
    halves = [
        dataset.batch(3, 4, process_index=i, process_count=2)["image"]
        for i in (0, 1)
    ]
    np.testing.assert_array_equal(np.concatenate(halves), batch)
    # Worker processes (-1: one per core but one) make the same batches.
    made = list(dataset.iterate(3, 2, 4, workers=workers))
    assert [step for step, _ in made] == [3, 4]
    for step, made_batch in made:
        np.testing.assert_array_equal(
            made_batch["image"], dataset.batch(step, 4)["image"]
        )


def test_predistorted_layout_reads_the_ref_file(tmp_path):
    for name, value in (("img1", 10), ("img2", 200)):
        (tmp_path / name).mkdir()
        flat_image(tmp_path / name / f"{name}_REF.png", 40, 40, value)
        flat_image(tmp_path / name / "d1.png", 40, 40, 0)
    (tmp_path / "no_ref").mkdir()
    flat_image(tmp_path / "no_ref" / "x.png", 40, 40, 0)
    config = high_level_config.get_config("tiny").data
    config.path, config.layout = str(tmp_path), "predistorted"
    dataset = high_level_data.create_high_level_dataset(
        config, seed=0, image_size=32, mean=(0,) * 3, std=(1,) * 3
    )
    assert dataset.num_images == 2
    assert [s[0] for s in dataset.skipped] == [str(tmp_path / "no_ref")]
    crops = dataset.batch(0, 2)["image"]
    assert sorted(set(np.unique(crops).round(4))) == [
        round(10 / 255, 4),
        round(200 / 255, 4),
    ]


@pytest.mark.slow
def test_objective_groups_by_prompt_similarity(tiny_clip_dir):
    """The loss uses exactly the images the prompts rank best and worst."""
    bundle = clip.load_clip(str(tiny_clip_dir))
    prompts = clip.encode_prompts(bundle, [("a good photo.", "a bad photo.")])
    head = heads.ProjectionHead(features=8)
    head_params = head.init(jax.random.key(0), np.zeros((1, bundle.embed_dim)))[
        "params"
    ]
    params = {"encoder": bundle.params, "head": head_params}
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
    kwargs = dict(
        encoder=bundle.encoder,
        head=head,
        prompt_embeddings=prompts,
        group_size=2,
        label_temperature=0.1,
        temperature=0.5,
        train_head=False,
    )

    def objective(p):
        return high_level_pathway.group_contrastive_objective(
            p, {}, {"image": images}, **kwargs
        )

    loss, (_, metrics) = objective(params)
    # Independent ranking: the cosine margin to the two prompts, in NumPy.
    emb = np.asarray(bundle.encoder.apply({"params": bundle.params}, images))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    good, bad = np.asarray(prompts[0])
    order = np.argsort(unit @ good - unit @ bad)
    z = np.asarray(head.apply({"params": head_params}, emb))
    expected = losses.group_contrastive_loss(z[order[-2:]], z[order[:2]])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert metrics["pseudo_label_gap"] > 0
    # The paper's code never optimises the head: no gradient reaches it.
    grads = jax.grad(lambda p: objective(p)[0])(params)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["head"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads["encoder"]))


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_resumes_and_exports(
    photo_folder, tiny_clip_dir, tmp_path
):
    config = tiny_config(
        photo_folder, tiny_clip_dir, num_epochs=6, batch_size=8, num_devices=8
    )
    config.optim.warmup_epochs = 0.5
    state = trainer.train_and_evaluate(config, str(tmp_path))
    loss = read_scalars(tmp_path / "tensorboard", "loss")
    assert len(loss) == 6 and np.all(np.isfinite(loss))
    assert np.mean(loss[-2:]) < np.mean(loss[:2]), loss
    # Running a finished job again restores it and exports the same state.
    again = trainer.train_and_evaluate(config, str(tmp_path))
    jax.tree.map(
        np.testing.assert_array_equal, params_of(again), params_of(state)
    )
    tree, meta = encoder_export.read(str(tmp_path / "export"))
    assert meta["pathway"] == "high_level" and meta["step"] == 6
    assert set(tree) == {"encoder", "prompt_embeddings"}  # the head is dropped
    assert tree["prompt_embeddings"].shape == (1, 2, 16)
    jax.tree.map(
        np.testing.assert_array_equal,
        tree["encoder"],
        params_of(state)["encoder"],
    )


def test_unreachable_checkpoint_fails_with_advice(
    photo_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tiny_config(photo_folder, "no-such-org/no-such-clip")
    with pytest.raises(clip.ClipLoadError, match="--config.model.clip="):
        trainer.train_and_evaluate(config, str(tmp_path))
