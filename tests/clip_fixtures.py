"""A tiny random CLIP, tokenizer and image processor saved with `save_pretrained`.

Reuse from another test file (tests/ is on sys.path under pytest):

    from clip_fixtures import tiny_clip_dir  # noqa: F401  (a pytest fixture)

or call `save_tiny_clip(directory)` directly. Offline and a few seconds.
"""
import json
import pathlib

import jax
import numpy as np
import pytest
from transformers import CLIPConfig, CLIPTokenizerFast, FlaxCLIPModel
from transformers.models.clip.tokenization_clip import bytes_to_unicode

# Words the prompts of our tests use; each becomes one BPE token.
WORDS = ("a", "good", "bad", "photo", "blurry", "sharp", "clean", "noisy", ".")
IMAGE_SIZE, PATCH_SIZE = 32, 8
# Deliberately not OpenAI's, to show they are read from the saved processor.
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _write_bpe(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, int, int]:
    """CLIP-style byte-level vocab.json + merges.txt covering WORDS (and any text, by bytes)."""
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in WORDS:
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


def tiny_clip_config(vocab_size: int, eos_id: int) -> CLIPConfig:
    """Width 32, 2 layers, 2 heads, 32x32 images in 8x8 patches, D = 16."""
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(common, vocab_size=vocab_size, max_position_embeddings=16,
                bos_token_id=eos_id - 1, eos_token_id=eos_id, pad_token_id=eos_id)
    vision = dict(common, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
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
    """Saves model (Flax msgpack), tokenizer and image-processor config into `directory`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file, vocab_size, eos_id = _write_bpe(directory)
    model = FlaxCLIPModel(tiny_clip_config(vocab_size, eos_id), _do_init=False)
    model.save_pretrained(directory, params=_random_params(model, seed))
    CLIPTokenizerFast(str(vocab_file), str(merges_file)).save_pretrained(directory)
    # What CLIPImageProcessor.save_pretrained writes, minus the TensorFlow import
    # (~4 s) that importing the image processor costs here.
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_center_crop": True,
        "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": IMAGE_SIZE}, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "image_mean": list(MEAN), "image_std": list(STD),
    }))
    return directory


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> pathlib.Path:
    """A directory holding `save_tiny_clip`'s output, built once per session."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))
