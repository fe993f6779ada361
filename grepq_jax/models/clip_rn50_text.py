"""The text tower of OpenAI's CLIP (RN50's, or any OpenAI CLIP's) as HF's Flax CLIP text model.

OpenAI's text transformer is the one Hugging Face's CLIP text model
implements: pre-LayerNorm blocks, QuickGELU, a causal mask, the final
LayerNorm taken at the end-of-text token, then a bias-free projection. RN50's:
width 512, 12 layers, 8 heads, context 77, vocabulary 49408, projection to
1024. `formats/pytorch/clip_rn50_keys.convert_openai_text` turns OpenAI's state dict into
this module's params; the prompt embeddings are then those of
`clip.encode_prompts`, since a `TextTower` has the fields it reads.

OpenAI's BPE (`bpe_simple_vocab_16e6.txt.gz`) is the HF CLIP tokenizer's:
`tokenizer_from_openai_bpe` builds one from that file alone. The file ships
in this package (clip_bpe/, with OpenAI's MIT licence), so converting needs
no download and no other package.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict
from transformers import CLIPTextConfig, CLIPTokenizerFast
from transformers.models.clip.modeling_flax_clip import FlaxCLIPTextModelWithProjectionModule
from transformers.models.clip.tokenization_clip import bytes_to_unicode

from grepq_jax.models import clip

START, END = "<|startoftext|>", "<|endoftext|>"
# OpenAI's tokenizer reads the first 49152 - 256 - 2 merges of its file: with
# 256 bytes, 256 end-of-word bytes and 2 specials, a 49408-token vocabulary.
OPENAI_MERGES = 49152 - 256 - 2
OPENAI_BPE = importlib.resources.files(__package__).joinpath(
    "clip_bpe", "bpe_simple_vocab_16e6.txt.gz")


@dataclasses.dataclass(frozen=True)
class TextArch:
    """Shape of an OpenAI CLIP text tower; the defaults are RN50's."""

    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8  # OpenAI: width // 64
    context_length: int = 77
    embed_dim: int = 1024
    hidden_act: str = "quick_gelu"  # OpenAI's; open_clip's non-"quickgelu" models use "gelu"

    def __post_init__(self):
        if self.heads < 1 or self.width % self.heads:
            raise ValueError(f"text heads={self.heads} must divide the width {self.width}")
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ValueError(f"hidden_act must be 'quick_gelu' or 'gelu', got {self.hidden_act!r}")

    def hf_config(self) -> CLIPTextConfig:
        # OpenAI's end-of-text token is the last id, its start token the one before.
        eos = self.vocab_size - 1
        return CLIPTextConfig(
            vocab_size=self.vocab_size, hidden_size=self.width, intermediate_size=4 * self.width,
            num_hidden_layers=self.layers, num_attention_heads=self.heads,
            max_position_embeddings=self.context_length, hidden_act=self.hidden_act,
            layer_norm_eps=1e-5, projection_dim=self.embed_dim,
            bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos)


@dataclasses.dataclass(frozen=True)
class TextTower:
    """A frozen text tower with its tokenizer: what `clip.encode_prompts` reads."""

    text_module: nn.Module  # FlaxCLIPTextModelWithProjectionModule
    text_params: dict  # {"text_model": ..., "text_projection": {"kernel": (W, D)}}
    tokenizer: Any
    max_text_len: int


def text_module(arch: TextArch) -> nn.Module:
    """HF's Flax text model + projection for `arch` (params from convert_openai_text)."""
    return FlaxCLIPTextModelWithProjectionModule(arch.hf_config())


def param_shapes(arch: TextArch) -> dict:
    """{param path tuple: ShapeDtypeStruct} of text_module(arch), computed abstractly."""
    ids = jax.ShapeDtypeStruct((1, arch.context_length), jnp.int32)
    shapes = jax.eval_shape(lambda i: text_module(arch).init(jax.random.key(0), i, i, i), ids)
    return flatten_dict(shapes["params"])


def text_tower(arch: TextArch, params: dict, tokenizer) -> TextTower:
    return TextTower(text_module(arch), jax.tree.map(jnp.asarray, params), tokenizer,
                     arch.context_length)


def encode_prompts(tower: TextTower, pairs: Sequence[tuple[str, str]]) -> jax.Array:
    """(P, 2, D) float32 L2-normalised embeddings of (good, bad) prompt pairs.

    OpenAI pads every prompt to 77 tokens; under the causal mask the tokens
    after the end-of-text one cannot change its output, so shorter padding
    gives the same embeddings.
    """
    return clip.encode_prompts(tower, pairs)


def openai_merges(bpe_path=OPENAI_BPE) -> list[str]:
    """The merges ("a b") OpenAI's tokenizer uses from its gzipped BPE file."""
    # A str or path; or the package's resource, which need not be on the file system.
    path = pathlib.Path(bpe_path) if isinstance(bpe_path, (str, os.PathLike)) else bpe_path
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not OpenAI's gzipped BPE merges file ({err})") from None
    # The first line is a version header, as in HF's merges.txt.
    merges = [line for line in lines[1:OPENAI_MERGES + 1] if line]
    malformed = next((m for m in merges if len(m.split()) != 2), None)
    if malformed is not None:
        raise ValueError(f"{path}: not OpenAI's BPE merges file: line {malformed!r}")
    return merges


def tokenizer_from_openai_bpe(bpe_path=OPENAI_BPE, context_length: int = 77
                              ) -> CLIPTokenizerFast:
    """An HF CLIP tokenizer from OpenAI's `bpe_simple_vocab_16e6.txt.gz` alone
    (by default the copy shipped in the package).

    The vocabulary is OpenAI's: the 256 byte symbols, the same with "</w>",
    each merge's result in file order, then START and END (the last id).
    """
    merges = openai_merges(bpe_path)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens + [START, END]))}
    with tempfile.TemporaryDirectory() as directory:
        vocab_file = pathlib.Path(directory, "vocab.json")
        merges_file = pathlib.Path(directory, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizerFast(str(vocab_file), str(merges_file), model_max_length=context_length)
