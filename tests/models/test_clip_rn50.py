"""CLIP RN50: the ModifiedResNet image tower, OpenAI's text tower, weight conversion and files.

Parity against OpenAI's PyTorch code (clip/model.py) two ways: a stored
output of a tiny CLIP on seeded random weights (tests/fixtures/
make_rn50_reference.py, no torch needed), and live, at full RN50 size, where
torch and the `clip` package (clip-anytorch) are installed.
"""
import dataclasses
import functools
import gzip
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from transformers.models.clip.tokenization_clip import bytes_to_unicode

from grepq_jax import errors
from grepq_jax.formats import encoder_export
from grepq_jax.models import clip_rn50, clip_rn50_text
from grepq_jax.formats.pytorch import clip_export
from grepq_jax.formats.pytorch import clip_weights
from grepq_jax.formats.pytorch.clip_rn50_keys import convert_modified_resnet, convert_openai_clip, convert_openai_text

_FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("make_rn50_reference",
                                               _FIXTURES / "make_rn50_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

# Absolute error on outputs of size O(1). Two float32 implementations (oneDNN
# vs XLA) summing in other orders: measured 1e-6 on the tiny model (2e-6 in
# train mode); a wrong pool placement, eps, transpose or head split costs > 1e-2.
TINY_ATOL = 1e-5
FULL_ATOL = 1e-4  # full size, longer sums: measured 9e-7 (image), 4e-6 (text tower)


@functools.cache
def _apply(model, train: bool):
    """Jitted model.apply, so that each model and mode compiles once."""
    if train:
        return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@functools.cache
def _stored():
    stored = dict(np.load(_FIXTURES / "rn50_reference.npz"))
    assert reference.checksum(reference.random_clip_state_dict(int(stored["seed"]))) == pytest.approx(
        float(stored["checksum"]), rel=1e-12), (
        "the weight generator changed; rerun tests/fixtures/make_rn50_reference.py")
    return stored


@functools.cache
def _tiny():
    """The tiny CLIP of the fixture, converted: ClipWeights."""
    return convert_openai_clip(reference.random_clip_state_dict(), source="tiny.pt",
                               text_heads=reference.TEXT_HEADS)


def _model(position_embedding="resize", arch=None):
    arch = arch or _tiny().image_arch
    return clip_rn50.ModifiedResNet(dataclasses.replace(arch, position_embedding=position_embedding))


def _nhwc(images):
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def _text_features(arch, params, tokens):
    """OpenAI-style call: the whole context, no padding mask (the causal mask suffices)."""
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    module = clip_rn50_text.text_module(arch)
    return jax.jit(lambda p, t: module.apply({"params": p}, t, jnp.ones_like(t), positions,
                                             return_dict=False)[0])(params, tokens)


# --- structure -------------------------------------------------------------------

def test_variables_mirror_openai_keys_and_shapes():
    """Every OpenAI tensor (written out independently in the fixture script) has
    exactly one Flax variable of its size, and nothing else exists."""
    shapes = reference.modified_resnet_shapes()
    variables = _tiny().image_variables
    openai_sizes = sorted(int(np.prod(s)) for k, s in shapes.items()
                          if not k.endswith("num_batches_tracked"))
    flax_sizes = sorted(int(np.prod(v.shape)) for v in flatten_dict(variables).values())
    assert flax_sizes == openai_sizes
    assert sorted(variables["params"]) == sorted(
        ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1_0", "layer1_1", "layer2_0",
         "layer3_0", "layer4_0", "attnpool"])
    assert "downsample_conv" in variables["params"]["layer1_0"]  # 8 -> 32 channels
    assert "downsample_conv" not in variables["params"]["layer1_1"]
    assert _tiny().image_arch == clip_rn50.ModifiedResNetArch(
        layers=(2, 1, 1, 1), width=8, heads=4, embed_dim=32, image_size=64)


def test_default_arch_is_openai_rn50_with_its_parameter_count():
    arch = clip_rn50.ModifiedResNetArch()
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(
        lambda x: clip_rn50.ModifiedResNet(arch).init(jax.random.key(0), x, train=False), images)
    # sum(p.numel() for p in clip.load("RN50")[0].visual.parameters()), OpenAI's RN50.
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["params"])) == 38_316_896
    assert (arch.feature_dim, arch.grid, arch.heads) == (2048, 7, 32)
    assert clip_rn50.feature_grid(224, 224) == (7, 7) and clip_rn50.feature_grid(384, 512) == (12, 16)


@pytest.mark.parametrize("fields, message", [
    (dict(layers=(3, 4, 6)), "layers"), (dict(width=63), "width"),
    (dict(heads=5), "heads"), (dict(position_embedding="bicubic"), "position_embedding")])
def test_arch_rejects_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        clip_rn50.ModifiedResNetArch(**fields)


def test_arch_round_trips_through_json_fields():
    arch = _tiny().image_arch
    assert clip_rn50.ModifiedResNetArch.from_dict(
        {**dataclasses.asdict(arch), "layers": list(arch.layers)}) == arch
    hash(arch)  # a static jit argument must hash


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="30x64 pixels are below the 31x31"):
        _model().apply(_tiny().image_variables, np.zeros((1, 30, 64, 3), np.float32), train=False)


# --- image tower vs OpenAI (stored) ------------------------------------------------

def test_native_size_matches_openai():
    features = _apply(_model(), False)(_tiny().image_variables, _nhwc(reference.reference_images()))
    np.testing.assert_allclose(features, _stored()["image_native"], rtol=0, atol=TINY_ATOL)


def test_other_size_without_positions_matches_openai_with_that_line_removed():
    images = _nhwc(reference.reference_images(reference.OTHER_SIZE))
    features = _apply(_model("none"), False)(_tiny().image_variables, images)
    np.testing.assert_allclose(features, _stored()["image_none"], rtol=0, atol=TINY_ATOL)


def test_odd_sides_are_floored_as_in_openai():
    images = _nhwc(reference.reference_images(reference.ODD_SIZE))
    features = _apply(_model("none"), False)(_tiny().image_variables, images)
    np.testing.assert_allclose(features, _stored()["image_odd"], rtol=0, atol=TINY_ATOL)
    for size in [(31, 31), (63, 64), (75, 100), (384, 512), (97, 33)]:
        assert clip_rn50.feature_grid(*size) == reference.feature_grid(size)


def test_other_size_with_resized_positions_matches_torch_bicubic():
    images = _nhwc(reference.reference_images(reference.OTHER_SIZE))
    features = _apply(_model(), False)(_tiny().image_variables, images)
    np.testing.assert_allclose(features, _stored()["image_resized"], rtol=0, atol=TINY_ATOL)
    # The choice matters: the two modes are far apart (outputs O(1)).
    assert np.abs(features - _stored()["image_none"]).max() > 0.05


def test_train_mode_matches_openai_batch_statistics_and_running_updates():
    variables = _tiny().image_variables
    features, updated = _apply(_model(), True)(variables, _nhwc(reference.reference_images()))
    # Train mode normalises 2x2 grids at layer4 with 16 values a channel: rounding grows.
    np.testing.assert_allclose(features, _stored()["image_train"], rtol=0, atol=2 * TINY_ATOL)

    state = {k.removeprefix("visual."): v for k, v in reference.random_clip_state_dict().items()
             if k.startswith("visual.")}
    state.update({k.removeprefix("stats/"): v for k, v in _stored().items() if k.startswith("stats/")})
    expected = convert_modified_resnet(state, source="stored")[1]["batch_stats"]
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 updated["batch_stats"], expected)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                           updated["batch_stats"])
    assert all(jax.tree.leaves(changed)), "every BatchNorm must update its statistics"


def test_gradients_reach_every_parameter_in_train_mode():
    model = _model()
    images = _nhwc(reference.reference_images())

    @jax.jit
    def grads(params, batch_stats):
        def loss(p):
            out, _ = model.apply({"params": p, "batch_stats": batch_stats}, images, train=True,
                                 mutable=["batch_stats"])
            return jnp.sum(jnp.tanh(out) ** 2)
        return jax.grad(loss)(params)

    variables = _tiny().image_variables
    g = grads(variables["params"], variables["batch_stats"])
    magnitudes = {"/".join(k): float(jnp.abs(v).max()) for k, v in flatten_dict(g).items()}
    assert all(np.isfinite(m) for m in magnitudes.values())
    assert [k for k, m in magnitudes.items() if m == 0] == []


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    variables = _tiny().image_variables
    images = _nhwc(reference.reference_images())
    model = clip_rn50.ModifiedResNet(_tiny().image_arch, dtype=jnp.bfloat16)
    features = _apply(model, False)(variables, images)
    assert features.dtype == jnp.bfloat16
    assert np.abs(np.asarray(features, np.float32) - _stored()["image_native"]).max() < 0.1


# --- text tower vs OpenAI (stored) -------------------------------------------------

def test_text_features_match_openai_encode_text():
    weights = _tiny()
    features = _text_features(weights.text_arch, weights.text_params, reference.reference_tokens())
    np.testing.assert_allclose(features, _stored()["text"], rtol=0, atol=TINY_ATOL)


def _write_tiny_bpe(path, words=("a", "good", "bad", "photo", "sharp")):
    """A gzipped BPE file in OpenAI's layout (version line, then merges) for `words`."""
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    path.write_bytes(gzip.compress(("bpe_simple_vocab_16e6.txt#version: 0.2\n"
                                    + "\n".join(dict.fromkeys(merges)) + "\n").encode()))
    return path


def test_tokenizer_from_openai_bpe_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_tiny_bpe(Path("tiny_bpe.txt.gz"))
    tokenizer = clip_rn50_text.tokenizer_from_openai_bpe("tiny_bpe.txt.gz")
    ids = tokenizer("A Good photo.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "good</w>", "photo</w>", ".</w>", "<|endoftext|>"]
    # OpenAI's layout: bytes, bytes + "</w>", merges, then the two specials last.
    assert ids[1] == 256 + list(bytes_to_unicode().values()).index("a")
    assert ids[-1] == len(tokenizer) - 1 and ids[0] == len(tokenizer) - 2


def test_a_file_that_is_not_a_bpe_file_is_named(tmp_path):
    (tmp_path / "vocab.txt.gz").write_text("plain text")
    with pytest.raises(ValueError, match="vocab.txt.gz: not OpenAI's gzipped BPE"):
        clip_rn50_text.tokenizer_from_openai_bpe(tmp_path / "vocab.txt.gz")


def test_prompt_embeddings_equal_openai_style_zero_padded_calls(tmp_path):
    tokenizer = clip_rn50_text.tokenizer_from_openai_bpe(_write_tiny_bpe(tmp_path / "bpe.gz"),
                                                        reference.CONTEXT)
    shapes = reference.text_shapes(vocab=len(tokenizer))
    arch, params = convert_openai_text(reference.random_state_dict(shapes, seed=3), source="t",
                                       heads=reference.TEXT_HEADS)
    tower = clip_rn50_text.text_tower(arch, params, tokenizer)
    pairs = [("a good photo.", "a bad photo."), ("a sharp photo", "a photo")]
    embeddings = clip_rn50_text.encode_prompts(tower, pairs)
    assert embeddings.shape == (2, 2, reference.EMBED_DIM)

    # OpenAI's clip.tokenize layout: every prompt padded with zeros to the context.
    texts = [t for pair in pairs for t in pair]
    tokens = np.zeros((4, reference.CONTEXT), np.int32)
    for row, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]
        tokens[row, :len(ids)] = ids
    expected = np.array(_text_features(arch, params, tokens))
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(embeddings.reshape(4, -1), expected, rtol=0, atol=1e-6)
    assert np.abs(embeddings[:, 0] - embeddings[:, 1]).max() > 1e-2


# --- conversion errors ---------------------------------------------------------------

def _bare_state():
    return {k.removeprefix("visual."): v for k, v in reference.random_clip_state_dict().items()
            if k.startswith("visual.")}


def _missing(state):
    del state["layer1.1.bn3.running_var"]
    return "missing|lacks", "layer1.1.bn3.running_var"


def _unexpected(state):
    state["layer4.0.conv4.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    return "unexpected", "layer4.0.conv4.weight"


def _misshapen(state):
    state["attnpool.k_proj.weight"] = state["attnpool.k_proj.weight"][:, :8]
    return "shape", "attnpool.k_proj.weight"


@pytest.mark.parametrize("corrupt", [_missing, _unexpected, _misshapen])
def test_image_conversion_errors_name_the_file_and_key(corrupt):
    state = _bare_state()
    what, key = corrupt(state)
    with pytest.raises(errors.InputError, match=r"^weights\.pth: ") as error:
        convert_modified_resnet(state, source="weights.pth")
    assert key in str(error.value) and re.search(what, str(error.value))


def test_text_conversion_errors_name_the_file_and_key():
    state = reference.random_clip_state_dict()
    state["transformer.resblocks.1.attn.in_proj_bias"] = np.zeros(5, np.float32)
    with pytest.raises(errors.InputError, match=r"^RN50\.pt: 'transformer\.resblocks\.1\.attn\.in_proj_bias' "
                                           r"has shape \(5,\), expected \(96,\)"):
        convert_openai_clip(state, source="RN50.pt", text_heads=4)
    state = reference.random_clip_state_dict()
    del state["ln_final.bias"]
    with pytest.raises(errors.InputError, match="RN50.pt: missing key 'ln_final.bias'"):
        convert_openai_clip(state, source="RN50.pt", text_heads=4)
    state = reference.random_clip_state_dict()
    state["transformer.resblocks.0.attn.bias_k"] = np.zeros(32, np.float32)
    with pytest.raises(errors.InputError, match=r"RN50.pt: unexpected keys \['transformer.resblocks.0.attn.bias_k'\]"):
        convert_openai_clip(state, source="RN50.pt", text_heads=4)


@pytest.mark.parametrize("state, hint", [
    ({"encoder.resnet18.0.weight": np.zeros((8, 3, 7, 7))}, "GRepQ's low-level model"),
    ({"visual.proj": np.zeros((8, 4)), "visual.conv1.weight": np.zeros((8, 3, 4, 4))}, "ViT"),
    ({"fc.weight": np.zeros((10, 8))}, "not a CLIP ModifiedResNet"),
])
def test_wrong_files_are_named_with_what_they_are(state, hint):
    with pytest.raises(errors.InputError, match=f"^other.pth: missing key .*{hint}"):
        convert_modified_resnet(state, source="other.pth")


def test_a_whole_clip_and_a_bare_tower_are_told_apart():
    with pytest.raises(errors.InputError, match="a whole CLIP: read it with"):
        convert_modified_resnet(reference.random_clip_state_dict(), source="RN50.pt")
    with pytest.raises(errors.InputError, match="no 'visual.\\*' keys.*GRepQ's high-level weights"):
        convert_openai_clip(_bare_state(), source="high_level_model_weights.pth")


def test_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.InputError, match="^no_such.pth: no such file"):
        clip_weights.read_state_dict("no_such.pth")
    Path("weights.pth").write_bytes(b"x")
    with pytest.raises(errors.InputError, match="^weights.pth: not a PyTorch file"):
        clip_weights.load_grepq_high_level("weights.pth")


@pytest.mark.slow
def test_the_package_never_imports_torch():
    code = ("import sys, grepq_jax.formats.pytorch.clip_weights, grepq_jax.models.clip_rn50_text, "
            "grepq_jax.commands.convert, grepq_jax.released.packaging; sys.exit('torch' in sys.modules)")
    env = {**os.environ, "USE_TORCH": "0", "PYTHONPATH": str(Path(__file__).parents[2])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_the_shipped_vocabulary_is_openais():
    # OpenAI's published file's SHA-256 (github.com/openai/CLIP, clip/).
    import hashlib
    digest = hashlib.sha256(clip_rn50_text.OPENAI_BPE.read_bytes()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert "Copyright (c) 2021 OpenAI" in clip_rn50_text.OPENAI_BPE.with_name(
        "LICENSE").read_text()
    tokenizer = clip_rn50_text.tokenizer_from_openai_bpe()
    assert len(tokenizer) == 49408
    # What OpenAI's clip.tokenize gives for GRepQ's prompts (checked live below).
    assert tokenizer("A good photo.")["input_ids"] == [49406, 320, 886, 1125, 269, 49407]
    assert tokenizer("A bad photo.")["input_ids"] == [49406, 320, 2103, 1125, 269, 49407]


# --- live, against torch and OpenAI's clip package -----------------------------------

@pytest.fixture(scope="module")
def openai():
    torch = pytest.importorskip("torch")
    model = pytest.importorskip("clip.model")
    torch.set_num_threads(2)
    return torch, model


def _full_rn50_state(seed=11):
    shapes = reference.modified_resnet_shapes((3, 4, 6, 3), 64, 1024, 224)
    return reference.random_state_dict(shapes, seed)


@pytest.mark.slow
@pytest.mark.parametrize("size, position_embedding", [((224, 224), "resize"), ((256, 192), "none")])
def test_full_rn50_matches_openai_live(openai, size, position_embedding):
    torch, model = openai
    state = _full_rn50_state()
    visual = model.ModifiedResNet((3, 4, 6, 3), 1024, 32, 224, 64)
    visual.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    if position_embedding == "none":  # what GRepQ's commented-out line amounts to
        grid = reference.feature_grid(size)
        visual.attnpool.positional_embedding = torch.nn.Parameter(
            torch.zeros(1 + grid[0] * grid[1], 2048))
    images = np.random.RandomState(12).normal(size=(2, 3, *size)).astype(np.float32)
    with torch.no_grad():
        expected = visual.eval()(torch.from_numpy(images)).numpy()
    arch, variables = convert_modified_resnet(state, source="full", position_embedding=position_embedding)
    features = _apply(clip_rn50.ModifiedResNet(arch), False)(variables, _nhwc(images))
    error = np.abs(np.asarray(features) - expected).max()
    print(f"full RN50 {size} {position_embedding}: max abs error {error:.2e}, "
          f"max |feature| {np.abs(expected).max():.2f}")
    assert error <= FULL_ATOL


@pytest.mark.slow
def test_full_text_tower_matches_openai_encode_text_live(openai):
    torch, model = openai
    # A tiny image tower beside RN50's text tower (the CLIP class builds both).
    shapes = {**{f"visual.{k}": v for k, v in reference.modified_resnet_shapes(embed_dim=1024).items()},
              **reference.text_shapes(49408, 512, 12, 77, 1024), "logit_scale": ()}
    state = reference.random_state_dict(shapes, seed=13)
    clip_model = model.CLIP(1024, 64, (2, 1, 1, 1), 8, None, 77, 49408, 512, 8, 12)
    clip_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    tokens = np.zeros((3, 77), np.int64)
    rng = np.random.RandomState(14)
    for row, words in enumerate((3, 20, 75)):
        tokens[row, :words + 2] = [49406, *rng.randint(1, 49406, words), 49407]
    with torch.no_grad():
        expected = clip_model.eval().encode_text(torch.from_numpy(tokens)).numpy()
    weights = convert_openai_clip(state, source="full")
    assert weights.text_arch == clip_rn50_text.TextArch()  # RN50's shape, read from the weights
    features = _text_features(weights.text_arch, weights.text_params, tokens)
    error = np.abs(np.asarray(features) - expected).max()
    print(f"full text tower: max abs error {error:.2e}, max |feature| {np.abs(expected).max():.2f}")
    assert error <= FULL_ATOL


def test_tokenizer_matches_openai_tokenize_live(openai):
    clip = pytest.importorskip("clip")
    tokenizer = clip_rn50_text.tokenizer_from_openai_bpe()  # the shipped vocabulary
    texts = ["a Good photo.", "A bad photo.", "a photo of a cat, taken at night!",
             "JPEG-compressed, blurry   image", "colour-saturated HDR photo: 100% natural?"]
    expected = clip.tokenize(texts).numpy()
    for text, row in zip(texts, expected):
        ids = tokenizer(text)["input_ids"]
        np.testing.assert_array_equal(ids, row[:len(ids)], err_msg=text)
        assert not row[len(ids):].any()
    assert len(tokenizer) == 49408


def _tiny_torch_clip(torch, model):
    state = reference.random_clip_state_dict()
    tiny = model.CLIP(reference.EMBED_DIM, reference.IMAGE_SIZE, reference.LAYERS, reference.WIDTH,
                      None, reference.CONTEXT, reference.VOCAB, reference.TEXT_WIDTH,
                      reference.TEXT_HEADS, reference.TEXT_LAYERS)
    tiny.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return tiny.eval(), state


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_openai_torchscript_archive_reads_in_float32_without_torch_live(openai, tmp_path,
                                                                        monkeypatch):
    torch, model = openai
    tiny, state = _tiny_torch_clip(torch, model)
    model.convert_weights(tiny)  # fp16, as OpenAI ships it
    images = torch.zeros(1, 3, reference.IMAGE_SIZE, reference.IMAGE_SIZE, dtype=torch.float16)
    traced = torch.jit.trace(tiny, (images, torch.from_numpy(reference.reference_tokens()[:1])),
                             check_trace=False)
    monkeypatch.chdir(tmp_path)
    traced.save("RN50.pt")
    weights = clip_weights.load_clip_rn50("RN50.pt")
    fp16 = {k for k, v in tiny.state_dict().items() if v.dtype == torch.float16}
    assert "visual.attnpool.q_proj.weight" in fp16
    halved = {k: v.astype(np.float16).astype(np.float32) if k in fp16 else v
              for k, v in state.items()}
    expected = convert_openai_clip(halved, source="x", text_heads=reference.TEXT_HEADS)
    assert weights.image_arch == expected.image_arch
    _assert_trees_equal(weights.image_variables, expected.image_variables)
    _assert_trees_equal(weights.text_params, expected.text_params)  # float32, from fp16
    # Heads are not in the weights: OpenAI's rule gives width // 64, at least 1.
    assert weights.text_arch.heads == 1


def test_open_clip_and_grepq_files_read_live(openai, tmp_path, monkeypatch):
    torch, model = openai
    tiny, _ = _tiny_torch_clip(torch, model)
    monkeypatch.chdir(tmp_path)
    # open_clip's training checkpoint: DataParallel names inside "state_dict".
    torch.save({"epoch": 3, "name": "RN50", "state_dict": {f"module.{k}": v for k, v in
                                                          tiny.state_dict().items()}}, "epoch_3.pt")
    weights = clip_weights.load_clip_rn50("epoch_3.pt")
    _assert_trees_equal(weights.image_variables, _tiny().image_variables)
    # GRepQ's release: the visual tower's own state dict, positions left out.
    torch.save(tiny.visual.state_dict(), "high_level_model_weights.pth")
    arch, variables = clip_weights.load_grepq_high_level("high_level_model_weights.pth")
    assert arch == dataclasses.replace(_tiny().image_arch, position_embedding="none")
    _assert_trees_equal(variables, _tiny().image_variables)
    with pytest.raises(errors.InputError, match="^high_level_model_weights.pth: no 'visual"):
        clip_weights.load_clip_rn50("high_level_model_weights.pth")
    with pytest.raises(errors.InputError, match="^epoch_3.pt: missing key .*a whole CLIP"):
        clip_weights.load_grepq_high_level("epoch_3.pt")
    Path("notes.pth").write_text("not weights")
    with pytest.raises(errors.InputError, match="^notes.pth: not a PyTorch file"):
        clip_weights.load_grepq_high_level("notes.pth")


# --- the convert command -------------------------------------------------------------

def _convert_argv(**flags):
    return ["grepq_jax.convert"] + [f"--{k}={v}" for k, v in flags.items()]


def test_convert_names_the_first_missing_input_in_the_usage_lines_order(tmp_path,
                                                                       monkeypatch, capsys):
    from grepq_jax.commands import cli, convert

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)
    cases = [  # (flags, the one line expected)
        (dict(clip="missing.pt", bpe="missing.gz", prompts="missing.txt"),
         "missing.pt: no such file (--clip)"),
        (dict(clip="RN50.pt", grepq_high_level="gone.pth", bpe="missing.gz"),
         "gone.pth: no such file (--grepq_high_level)"),
        (dict(clip="RN50.pt", bpe="missing.gz", prompts="missing.txt"),
         "missing.gz: no such file (--bpe)"),
        (dict(clip="RN50.pt", prompts="missing.txt"),
         "--prompts=missing.txt: no such file, and not 'GOOD|BAD'"),
        (dict(grepq_low_level="low.tar", grepq_high_level="gone.pth", clip="missing.pt"),
         "low.tar: no such file (--grepq_low_level)"),
        (dict(clip="RN50.pt"), "RN50.pt: not a PyTorch file (neither a zip nor torch's "
         "legacy layout)"),
    ]
    Path("RN50.pt").write_bytes(b"x")
    for flags, expected in cases:
        assert convert.main(cli.parse(convert.FLAGS, _convert_argv(**flags, out="out"))) == 2
        assert capsys.readouterr().err.splitlines() == [f"convert failed: {expected}"], flags
    assert not Path("out").exists()


def test_prompt_pairs_from_the_flag_or_a_file(tmp_path, monkeypatch):
    from grepq_jax.commands.convert import prompt_pairs

    monkeypatch.chdir(tmp_path)
    assert prompt_pairs("A good photo.|A bad photo.") == (("A good photo.", "A bad photo."),)
    Path("prompts.txt").write_text("a sharp photo. | a blurry photo.\n\nHigh quality|Low quality\n")
    assert prompt_pairs("prompts.txt") == (("a sharp photo.", "a blurry photo."),
                                           ("High quality", "Low quality"))
    Path("bad.txt").write_text("good|bad\njust one prompt\n")
    with pytest.raises(ValueError, match="^bad.txt:2: expected 'GOOD|BAD'"):
        prompt_pairs("bad.txt")
    with pytest.raises(ValueError, match=r"^--prompts=a\|b\|c: expected 'GOOD\|BAD'"):
        prompt_pairs("a|b|c")
    Path("empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="^empty.txt: no prompt pairs"):
        prompt_pairs("empty.txt")


def test_convert_writes_a_high_level_export_live(openai, tmp_path, monkeypatch):
    torch, _ = openai
    from grepq_jax.commands import cli, convert

    monkeypatch.chdir(tmp_path)
    tokenizer = clip_rn50_text.tokenizer_from_openai_bpe(_write_tiny_bpe(Path("bpe.gz")))
    shapes = {**reference.clip_shapes(), **reference.text_shapes(vocab=len(tokenizer))}
    state = reference.random_state_dict(shapes, seed=15)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, "clip.pt")
    grepq = {k.removeprefix("visual."): v for k, v in reference.random_clip_state_dict().items()
             if k.startswith("visual.")}
    torch.save({k: torch.from_numpy(v) for k, v in grepq.items()}, "grepq.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # converting needs no torch
    argv = _convert_argv(clip="clip.pt", grepq_high_level="grepq.pth", bpe="bpe.gz", out="export")
    assert convert.main(cli.parse(convert.FLAGS, argv)) == 0

    tree, metadata = encoder_export.read(str(Path("export").absolute()))
    assert (metadata["pathway"], metadata["encoder"]) == ("high_level", "clip_rn50")
    arch = clip_rn50.ModifiedResNetArch.from_dict(metadata["arch"])
    assert arch == dataclasses.replace(_tiny().image_arch, position_embedding="none")
    _assert_trees_equal(jax.tree.map(np.asarray, tree["encoder"]), _tiny().image_variables)
    text_arch, text_params = convert_openai_text(
        {k: v for k, v in state.items() if not k.startswith("visual.") and k != "logit_scale"},
        source="clip.pt")
    expected = clip_rn50_text.encode_prompts(
        clip_rn50_text.text_tower(text_arch, text_params, tokenizer), clip_export.GREPQ_PROMPTS)
    np.testing.assert_allclose(tree["prompt_embeddings"], expected, rtol=0, atol=1e-6)
    # A second run refuses the used folder.
    assert convert.main(cli.parse(convert.FLAGS, argv)) == 2
    # Any antonym pair, from the command line.
    pair = (("A sharp photo.", "A bad photo."),)
    argv = _convert_argv(clip="clip.pt", bpe="bpe.gz", out="sharp",
                         prompts="A sharp photo.|A bad photo.")
    assert convert.main(cli.parse(convert.FLAGS, argv)) == 0
    tree, metadata = encoder_export.read(str(Path("sharp").absolute()))
    assert metadata["prompts"] == [list(pair[0])]
    expected = clip_rn50_text.encode_prompts(
        clip_rn50_text.text_tower(text_arch, text_params, tokenizer), pair)
    np.testing.assert_allclose(tree["prompt_embeddings"], expected, rtol=0, atol=1e-6)
