"""A tiny random CLIP (HF's Flax CLIP: ViT image tower, text tower) that
stands in for a real checkpoint in tests and offline smoke runs
(`configs/high_level.py:tiny`). Not a quality model.

Written as a checkpoint folder, with its tokenizer and image-processor
config, that `models.clip.load_clip` reads like any other.
"""
from __future__ import annotations

import json
import pathlib
import tempfile

import jax
import numpy as np
from transformers import CLIPConfig, CLIPTokenizerFast, FlaxCLIPModel
from transformers.models.clip.tokenization_clip import bytes_to_unicode

# The checkpoint name configs use (config.model.clip) to ask for
# `save_tiny_clip` in the workdir.
TINY_RANDOM = "tiny-random"
# Words the tiny tokenizer knows as single tokens (any text still encodes, by bytes).
TINY_WORDS = ("a", "good", "bad", "photo", "blurry", "sharp", "clean", "noisy", ".")
TINY_IMAGE_SIZE, TINY_PATCH_SIZE = 32, 8
# Deliberately not OpenAI's, to show they are read from the saved processor.
TINY_MEAN, TINY_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _write_bpe(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, int, int]:
    """CLIP-style byte-level vocab.json + merges.txt covering TINY_WORDS (and any text, by bytes)."""
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in TINY_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.append(pieces[0])
    # Specials last: CLIP pools at the end-of-text token, the highest id.
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab_ids))
    merges_file.write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return vocab_file, merges_file, len(vocab_ids), vocab_ids["<|endoftext|>"]


def tiny_tokenizer() -> CLIPTokenizerFast:
    """The tiny CLIP's tokenizer (TINY_WORDS as single tokens, the specials
    last), built in memory: for tiny text towers of other shapes too."""
    with tempfile.TemporaryDirectory() as directory:
        vocab_file, merges_file, _, _ = _write_bpe(pathlib.Path(directory))
        return CLIPTokenizerFast(str(vocab_file), str(merges_file))


def _tiny_clip_config(vocab_size: int, eos_id: int) -> CLIPConfig:
    """Width 32, 2 layers, 2 heads, 32x32 images in 8x8 patches, D = 16."""
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(common, vocab_size=vocab_size, max_position_embeddings=16,
                bos_token_id=eos_id - 1, eos_token_id=eos_id, pad_token_id=eos_id)
    vision = dict(common, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def _random_params(model: FlaxCLIPModel, seed: int) -> dict:
    """Params of the right tree and shapes, drawn with NumPy.

    HF's own init takes ~15 s eagerly on CPU; and its LayerNorms (1, 0) and
    tiny position embeddings would let a mis-wired param hide in a parity test.
    """
    config = model.config
    shape = ((1, 1), (1, config.vision_config.image_size, config.vision_config.image_size, 3))
    abstract = jax.eval_shape(lambda rng: model.init_weights(rng, shape), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
        return noise + 1.0 if path[-1].key == "scale" else noise

    return jax.tree_util.tree_map_with_path(draw, abstract)


def save_tiny_clip(directory, seed: int = 0) -> pathlib.Path:
    """Saves a tiny random CLIP (Flax msgpack), its tokenizer and image-processor
    config into `directory`, for smoke runs and tests: offline, a few seconds,
    loadable by `load_clip` like any checkpoint. Not a quality model."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file, vocab_size, eos_id = _write_bpe(directory)
    model = FlaxCLIPModel(_tiny_clip_config(vocab_size, eos_id), _do_init=False)
    model.save_pretrained(directory, params=_random_params(model, seed))
    CLIPTokenizerFast(str(vocab_file), str(merges_file)).save_pretrained(directory)
    # What CLIPImageProcessor.save_pretrained writes, minus the TensorFlow import
    # (~4 s) that importing the image processor costs here.
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_center_crop": True,
        "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": TINY_IMAGE_SIZE}, "crop_size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        "image_mean": list(TINY_MEAN), "image_std": list(TINY_STD),
    }))
    return directory
