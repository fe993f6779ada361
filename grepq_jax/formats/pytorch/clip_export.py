"""OpenAI / open_clip CLIP RN50 weights (and GRepQ's fine-tuned image tower) -> a high-level export.

The image tower comes from the CLIP file, or from GRepQ's high-level weights
when given; the prompt embeddings from the CLIP file's text tower, computed
once here, so scoring never needs the text tower.
"""
import pathlib

from grepq_jax.formats import high_level_export
from grepq_jax.formats.paths import absolute
from grepq_jax.formats.pytorch import clip_weights
from grepq_jax.models import clip, clip_rn50_text

GREPQ_PROMPTS = (("a good photo.", "a bad photo."),)  # GRepQ's, lower-cased as the tokenizer does


def convert_high_level(out, *, clip_file, grepq_high_level=None, bpe=None,
                       position_embedding=None, hidden_act="quick_gelu",
                       prompts=GREPQ_PROMPTS) -> dict:
    """Writes the export (high_level_export's format) into `out`; returns its metadata.

    Raises errors.InputError / ValueError / OSError naming the bad file, before
    anything is written.
    """
    out = pathlib.Path(absolute(str(out)))
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose a new folder")
    if position_embedding is None:
        position_embedding = "none" if grepq_high_level else "resize"
    weights = clip_weights.load_clip_rn50(clip_file, position_embedding=position_embedding,
                                           hidden_act=hidden_act)
    arch, variables = weights.image_arch, weights.image_variables
    if grepq_high_level:
        arch, variables = clip_weights.load_grepq_high_level(
            grepq_high_level, position_embedding=position_embedding)
    if arch.embed_dim != weights.text_arch.embed_dim:
        raise ValueError(f"{grepq_high_level}: embeds in {arch.embed_dim} dimensions, the text "
                         f"tower of {clip_file} in {weights.text_arch.embed_dim}")
    tokenizer = clip_rn50_text.tokenizer_from_openai_bpe(bpe or clip_rn50_text.OPENAI_BPE)
    tower = clip_rn50_text.text_tower(weights.text_arch, weights.text_params, tokenizer)
    return high_level_export.write(
        str(out), encoder="clip_rn50", arch=arch, variables=variables,
        prompt_embeddings=clip_rn50_text.encode_prompts(tower, prompts),
        mean=clip.OPENAI_MEAN, std=clip.OPENAI_STD, prompts=prompts, dtype="float32", step=0,
        converted_from={
            "clip": absolute(str(clip_file)),
            "grepq_high_level": grepq_high_level and absolute(str(grepq_high_level))})
