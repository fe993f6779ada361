"""CLIP image tower, prompt embeddings and in-batch pseudo-labels, on a tiny saved CLIP.

Parity with PyTorch transformers (the position-embedding resize every
whole-image score goes through, image features at other sizes, prompt
embeddings) is checked against stored outputs
(tests/fixtures/make_clip_reference.py, no torch needed) and live when torch
is installed.
"""
import importlib.util
import pathlib
import shutil
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.clip_fixtures import IMAGE_SIZE, MEAN, PATCH_SIZE, STD, tiny_clip_dir  # noqa: F401
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from transformers import FlaxCLIPModel

from grepq_jax.models import clip, heads
from grepq_jax.training.pseudo_labels import quality_pseudo_labels, split_quality_groups

_FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("make_clip_reference",
                                               _FIXTURES / "make_clip_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

PAIRS = [list(pair) for pair in reference.PROMPT_PAIRS]
# Against PyTorch, float32 both sides (oneDNN vs XLA) on O(1) values, with about
# 8x headroom over what was measured: image features (resized or not) 2.4e-7,
# prompt embeddings 1.2e-7; the resize alone, values up to ~3 summed from 16
# terms in another order, 1.9e-6. A bicubic kernel with a = -0.5 instead of
# -0.75 moves the resize by 0.13-0.2 and resized features by 2.5e-4-1e-3.
TORCH_ATOL = 2e-6
RESIZE_ATOL = 1.5e-5


def _ids(shape):
    return f"{shape[0]}x{shape[1]}"


@pytest.fixture(scope="session")
def bundle(tiny_clip_dir):  # noqa: F811
    return clip.load_clip(str(tiny_clip_dir))


@pytest.fixture(scope="session")
def hf_flax(tiny_clip_dir):  # noqa: F811
    """HF's own Flax CLIP on the same weights: (model, params). No eager re-init (slow)."""
    return FlaxCLIPModel.from_pretrained(str(tiny_clip_dir), _do_init=False)


def _pixels(seed, height, width, batch=2):
    return jax.random.normal(jax.random.key(seed), (batch, height, width, 3))


def _embed(bundle, pixels, params=None):
    return bundle.encoder.apply({"params": bundle.params if params is None else params}, pixels)


# --- loading -----------------------------------------------------------------

def test_load_reads_architecture_normalisation_and_params(bundle, hf_flax):
    assert (bundle.image_size, bundle.patch_size, bundle.embed_dim) == (IMAGE_SIZE, PATCH_SIZE, 16)
    np.testing.assert_allclose(bundle.mean, MEAN)
    np.testing.assert_allclose(bundle.std, STD)
    expected = clip.vision_params_from_pretrained(hf_flax[1])
    assert jax.tree.structure(bundle.params) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, bundle.params, expected)
    hash(bundle.encoder)  # a static jit argument / TrainState.apply_fn must hash


def test_normalisation_defaults_to_openai_without_processor_config(tiny_clip_dir, tmp_path):  # noqa: F811
    bare = shutil.copytree(tiny_clip_dir, tmp_path / "bare")
    (bare / "preprocessor_config.json").unlink()
    loaded = clip.load_clip(str(bare))
    assert (loaded.mean, loaded.std) == (clip.OPENAI_MEAN, clip.OPENAI_STD)


@pytest.mark.parametrize("name", ["/no/such/clip_dir", "./no_such_clip_dir", "no-such-org/no-such-clip"])
def test_unreachable_checkpoint_fails_fast_and_says_what_to_do(name, monkeypatch):
    """Fast means never waiting on the network: no name lookup, no connection
    (what a clock would measure, without depending on the machine's load)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test forbids network access")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(clip.ClipLoadError) as err:
        clip.load_clip(name)
    assert attempts == []
    assert repr(name) in str(err.value) and "--config.model.clip=" in str(err.value)


def test_directory_without_weights_is_a_load_error(tmp_path):
    with pytest.raises(clip.ClipLoadError, match="flax_model.msgpack"):
        clip.load_clip(str(tmp_path))


# --- prompts -----------------------------------------------------------------

def test_prompt_embeddings_are_normalised_constants(bundle):
    emb = clip.encode_prompts(bundle, PAIRS)
    assert emb.shape == (2, 2, bundle.embed_dim) and emb.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(emb, clip.encode_prompts(bundle, PAIRS))
    # Each prompt lands in its own slot: the first pair alone gives row 0.
    np.testing.assert_allclose(clip.encode_prompts(bundle, PAIRS[:1])[0], emb[0], atol=1e-6)
    assert float(jnp.abs(emb[:, 0] - emb[:, 1]).max()) > 1e-2


@pytest.mark.parametrize("pairs", [[], [("only one",)]])
def test_prompt_pairs_must_be_pairs(bundle, pairs):
    with pytest.raises(ValueError, match="pairs"):
        clip.encode_prompts(bundle, pairs)


# --- image tower -------------------------------------------------------------

def test_native_size_matches_hf_flax_and_leaves_positions_untouched(bundle, hf_flax):
    pos = bundle.params["vision_model"]["embeddings"]["position_embedding"]["embedding"]
    grid = IMAGE_SIZE // PATCH_SIZE
    assert clip.resize_position_embedding(pos, (grid, grid)) is pos
    np.testing.assert_array_equal(clip._bicubic_matrix(grid, grid), np.eye(grid))
    pixels = _pixels(0, IMAGE_SIZE, IMAGE_SIZE)
    model, params = hf_flax
    reference = model.get_image_features(jnp.transpose(pixels, (0, 3, 1, 2)), params=params)  # NCHW
    ours = _embed(bundle, pixels)
    assert ours.shape == (2, bundle.embed_dim)
    # Same ops in the same order; 1e-6 leaves room for XLA fusion differences.
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_other_sizes_are_finite_and_drop_the_remainder(bundle):
    pixels = _pixels(1, 53, 45)  # 6x5 patches of 8, plus 5 rows and 5 columns
    emb = _embed(bundle, pixels)
    assert emb.shape == (2, bundle.embed_dim) and bool(jnp.isfinite(emb).all())
    np.testing.assert_array_equal(emb, _embed(bundle, pixels[:, :48, :40]))
    native = _embed(bundle, jax.image.resize(pixels[:, :48, :40], (2, 32, 32, 3), "linear"))
    assert float(jnp.abs(emb - native).max()) > 1e-3  # the grid really changed
    with pytest.raises(ValueError, match="smaller than one"):
        _embed(bundle, _pixels(2, 7, 40))


def test_bicubic_rows_are_partitions_of_unity():
    for n_in, n_out in [(4, 6), (4, 2), (7, 3), (2, 9)]:
        np.testing.assert_allclose(clip._bicubic_matrix(n_in, n_out).sum(axis=1), 1.0, atol=1e-6)


def test_gradients_are_finite_under_jit_at_a_new_size(bundle):
    pixels = _pixels(3, 48, 40)

    @jax.jit
    def grads(params):
        return jax.grad(lambda p: jnp.sum(jnp.tanh(_embed(bundle, pixels, p)) ** 2))(params)

    g = grads(bundle.params)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))
    emb = g["vision_model"]["embeddings"]
    # The resize is differentiable: the stored native grid receives gradient.
    assert float(jnp.abs(emb["position_embedding"]["embedding"][1:]).max()) > 0
    assert float(jnp.abs(g["visual_projection"]["kernel"]).max()) > 0


def test_projection_head_is_dense_relu():
    head = heads.ProjectionHead()
    x = jax.random.normal(jax.random.key(0), (5, 16))
    params = head.init(jax.random.key(1), x)["params"]
    out = head.apply({"params": params}, x)
    assert out.shape == (5, 128)
    np.testing.assert_allclose(out, np.maximum(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0),
                               atol=1e-5)


# --- pseudo-labels -----------------------------------------------------------

def _constructed_batch():
    """Images whose cosine margin good-bad is known: margin_i = sin(a_i) - cos(a_i)."""
    angles = np.array([0.3, 1.4, 0.1, 0.9, 1.2, 0.5, 0.7, 1.0])  # best: 1, 4; worst: 2, 0
    image = np.stack([np.cos(angles), np.sin(angles), np.zeros(8)], axis=1) * np.arange(1, 9)[:, None]
    prompts = np.array([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])  # good = e1, bad = e0
    return jnp.asarray(image, jnp.float32), jnp.asarray(prompts, jnp.float32), np.sin(angles) - np.cos(angles)


def test_pseudo_labels_are_the_papers_sigmoid_of_the_cosine_margin():
    image, prompts, margin = _constructed_batch()
    q = jax.jit(quality_pseudo_labels)(image, prompts)
    np.testing.assert_allclose(q, 1 / (1 + np.exp(-margin / 0.1)), rtol=1e-5)
    # Several pairs: margins are averaged before the sigmoid.
    other = jnp.asarray([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])  # margin_i = -cos(a_i)
    both = quality_pseudo_labels(image, jnp.concatenate([prompts, other]), temperature=0.2)
    expected_margin = (margin - np.cos(np.array([0.3, 1.4, 0.1, 0.9, 1.2, 0.5, 0.7, 1.0]))) / 2
    np.testing.assert_allclose(both, 1 / (1 + np.exp(-expected_margin / 0.2)), rtol=1e-5)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_groups_pick_the_known_best_and_worst_on_a_sharded_batch(axis_type):
    image, prompts, _ = _constructed_batch()
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(axis_type,))
    image = jax.device_put(image, NamedSharding(mesh, PartitionSpec("data")))

    @jax.jit
    def groups(image):
        return split_quality_groups(quality_pseudo_labels(image, prompts), 2)

    hi, lo = groups(image)
    np.testing.assert_array_equal(hi, [1, 4])
    np.testing.assert_array_equal(lo, [2, 0])


def test_group_ties_follow_the_original_stable_argsort():
    hi, lo = split_quality_groups(jnp.array([0.5, 0.2, 0.5, 0.2, 0.9, 0.5]), 2)
    np.testing.assert_array_equal(hi, [4, 5])  # among equal q, the higher index first
    np.testing.assert_array_equal(lo, [1, 3])  # among equal q, the lower index first
    with pytest.raises(ValueError, match="group_size"):
        split_quality_groups(jnp.zeros(6), 4)


# --- parity with PyTorch transformers: stored -----------------------------------

@pytest.fixture(scope="module")
def stored_torch(hf_flax):
    """clip_reference.npz, checked to come from these tiny-CLIP weights."""
    stored = np.load(_FIXTURES / "clip_reference.npz")
    assert reference.checksum(hf_flax[1]) == pytest.approx(float(stored["checksum"]), rel=1e-12), (
        "save_tiny_clip's weights changed; rerun tests/fixtures/make_clip_reference.py")
    return stored


def _resized(grid):
    pos = jnp.asarray(reference.position_grid())
    return clip.resize_position_embedding(pos, grid)[1:].reshape(*grid, 3)


@pytest.mark.parametrize("grid", reference.GRIDS, ids=_ids)
def test_resize_matches_stored_torch_bicubic(stored_torch, grid):
    expected = stored_torch[reference.size_key("resized", grid)]
    np.testing.assert_allclose(_resized(grid), expected, rtol=0, atol=RESIZE_ATOL)


@pytest.mark.parametrize("size", reference.SIZES, ids=_ids)
def test_image_features_match_stored_pytorch(bundle, stored_torch, size):
    assert sum(s != (IMAGE_SIZE, IMAGE_SIZE) for s in reference.SIZES) >= 2
    expected = stored_torch[reference.size_key("features", size)]
    ours = _embed(bundle, jnp.asarray(reference.pixels(*size)))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TORCH_ATOL)


def test_prompt_embeddings_match_stored_pytorch(bundle, stored_torch):
    np.testing.assert_allclose(clip.encode_prompts(bundle, PAIRS), stored_torch["prompts"],
                               rtol=0, atol=TORCH_ATOL)


# --- parity with PyTorch transformers: live, where torch is installed ---------

@pytest.fixture(scope="module")
def torch_clip(tiny_clip_dir):  # noqa: F811
    torch = pytest.importorskip("torch")
    return torch, reference._torch_clip(tiny_clip_dir)[0]


@pytest.mark.parametrize("grid", reference.GRIDS, ids=_ids)
def test_resize_matches_torch_bicubic(torch_clip, grid):
    torch, _ = torch_clip
    pos = reference.position_grid()
    grid_nchw = torch.from_numpy(pos[1:].reshape(1, reference.GRID_IN, reference.GRID_IN, 3))
    theirs = torch.nn.functional.interpolate(grid_nchw.permute(0, 3, 1, 2), size=grid,
                                             mode="bicubic", align_corners=False)
    np.testing.assert_allclose(_resized(grid), theirs[0].permute(1, 2, 0).numpy(), rtol=0,
                               atol=RESIZE_ATOL)


@pytest.mark.parametrize("size", reference.SIZES, ids=_ids)
def test_image_features_match_pytorch(bundle, torch_clip, size):
    torch, model = torch_clip
    pixels = reference.pixels(*size)
    with torch.no_grad():
        theirs = model.get_image_features(
            torch.from_numpy(pixels).permute(0, 3, 1, 2), interpolate_pos_encoding=size != (IMAGE_SIZE, IMAGE_SIZE)
        ).numpy()
    np.testing.assert_allclose(_embed(bundle, jnp.asarray(pixels)), theirs, rtol=0, atol=TORCH_ATOL)


def test_prompt_embeddings_match_pytorch(bundle, torch_clip):
    torch, model = torch_clip
    texts = [t for pair in PAIRS for t in pair]
    tokens = bundle.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model.get_text_features(**tokens)
    theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy().reshape(2, 2, -1)
    np.testing.assert_allclose(clip.encode_prompts(bundle, PAIRS), theirs, rtol=0, atol=TORCH_ATOL)
