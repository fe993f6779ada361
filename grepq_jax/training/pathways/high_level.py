"""High-level pathway: a CLIP image tower, in-batch pseudo-labels, group loss.

Two towers (config.model.encoder, see TOWERS): HF's CLIP ViT, read with
`clip.load_clip`, and OpenAI's CLIP RN50 (`clip_rn50.ModifiedResNet`), read
from a high-level export that `grepq convert` wrote. Like GRepQ's
train_hlm.py, which calls model.train() on CLIP's visual tower, the RN50
trains in train mode: BatchNorm normalises with the global batch's statistics
and updates its running ones, which are exported with the weights.
"""

import dataclasses
import functools
import os
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from grepq_jax.formats import encoder_export, high_level_export
from grepq_jax.training import losses
from grepq_jax.training import pseudo_labels
from grepq_jax.training.data import high_level_pipeline as high_level_data
from grepq_jax.models import clip, heads
from grepq_jax.models import clip_rn50
from grepq_jax.models.dtypes import DTYPES
from grepq_jax.training.pathways.pathway import Pathway
from grepq_jax.training.stand_ins import tiny_clip, tiny_clip_rn50


@dataclasses.dataclass(frozen=True)
class Tower:
    """A trainable image tower, the weights it starts from and its inputs."""

    name: str  # one of high_level_export.ENCODERS
    module: nn.Module  # clip.ClipImageEncoder or clip_rn50.ModifiedResNet
    arch: Any  # its ClipVisionArch or ModifiedResNetArch
    variables: dict  # {"params"[, "batch_stats"]}
    mean: tuple[float, ...]  # per channel, for pixels in [0, 1]
    std: tuple[float, ...]
    prompt_embeddings: jax.Array  # (P, 2, D) of config.model.prompts

    @property
    def embed_dim(self) -> int:
        return self.arch.embed_dim


def _local_dir(workdir: str, name: str) -> str:
    if "://" in workdir:
        raise ValueError("the tiny random CLIP needs a local workdir")
    return os.path.join(workdir, name)


def load_checkpoint(
    model_config: ml_collections.ConfigDict, workdir: str
) -> clip.ClipBundle:
    """The configured CLIP ViT; `tiny_clip.TINY_RANDOM` writes a tiny one first."""
    name = model_config.clip
    if name == tiny_clip.TINY_RANDOM:
        name = str(tiny_clip.save_tiny_clip(_local_dir(workdir, "tiny_clip")))
    return clip.load_clip(name, dtype=DTYPES[model_config.dtype])


def load_vit(model_config: ml_collections.ConfigDict, workdir: str) -> Tower:
    bundle = load_checkpoint(model_config, workdir)
    return Tower(
        name="clip_vit",
        module=bundle.encoder,
        arch=bundle.encoder.arch,
        variables={"params": bundle.params},
        mean=bundle.mean,
        std=bundle.std,
        # Computed once: the text tower is frozen, so these are constants.
        prompt_embeddings=clip.encode_prompts(bundle, model_config.prompts),
    )


def write_tiny_rn50(directory: str, prompts) -> str:
    """Writes `tiny_clip_rn50`'s tiny random CLIP ResNet as a high-level export."""
    arch, variables, prompt_embeddings = tiny_clip_rn50.tiny_clip_rn50(prompts)
    high_level_export.write(
        directory, encoder="clip_rn50", arch=arch, variables=variables,
        prompt_embeddings=prompt_embeddings, mean=clip.OPENAI_MEAN,
        std=clip.OPENAI_STD, prompts=prompts, dtype="float32", step=0,
    )
    return directory


def _read_rn50(source: str) -> high_level_export.HighLevelExport:
    if not (epath.Path(source) / encoder_export.METADATA).exists():
        raise ValueError(
            f"config.model.clip: {source} is not an export (no {encoder_export.METADATA}). "
            f"Convert OpenAI's RN50 once with `grepq convert --clip=RN50.pt --out={source}`, "
            "or point it at a high-level run's workdir/export"
        )
    exported = high_level_export.read(source)
    if exported.encoder != "clip_rn50":
        raise ValueError(
            f"config.model.clip: {source} holds a {exported.encoder} tower, "
            "not the clip_rn50 that config.model.encoder asks for"
        )
    return exported


def load_rn50(model_config: ml_collections.ConfigDict, workdir: str) -> Tower:
    """OpenAI's CLIP RN50 (or another ModifiedResNet) from a high-level export.

    The export holds the prompt embeddings, not the text tower, so the
    configured prompts must be those it was written with.
    """
    prompts = tuple(tuple(pair) for pair in model_config.prompts)
    source = model_config.clip
    if source == tiny_clip.TINY_RANDOM:
        source = write_tiny_rn50(_local_dir(workdir, "tiny_clip_rn50"), prompts)
    exported = _read_rn50(source)
    if exported.prompts != prompts:
        raise ValueError(
            f"config.model.prompts={prompts} but {source} holds the "
            f"embeddings of {exported.prompts} only (no text tower): set the "
            "prompts to those, or convert with yours "
            "(grepq_jax.commands.convert.convert_high_level(prompts=...))"
        )
    try:
        arch = dataclasses.replace(
            exported.arch, position_embedding=model_config.position_embedding
        )
    except ValueError as error:
        raise ValueError(f"config.model.position_embedding: {error}") from None
    return Tower(
        name="clip_rn50",
        module=clip_rn50.ModifiedResNet(arch, dtype=DTYPES[model_config.dtype]),
        arch=arch,
        variables=exported.variables,
        mean=exported.mean,
        std=exported.std,
        prompt_embeddings=exported.prompt_embeddings,
    )


TOWERS = {"clip_vit": load_vit, "clip_rn50": load_rn50}


def _check_config(config: ml_collections.ConfigDict):
    if config.loss.name != "gcl":
        raise ValueError(
            f"config.loss.name: the high-level pathway trains "
            f"with 'gcl', not {config.loss.name!r}"
        )
    if not 0 < 2 * config.loss.group_size <= config.batch_size:
        raise ValueError(
            f"config.loss.group_size={config.loss.group_size} "
            f"needs 2 groups within config.batch_size="
            f"{config.batch_size}"
        )
    if config.model.encoder not in TOWERS:
        raise ValueError(
            f"config.model.encoder: unknown {config.model.encoder!r}, "
            f"expected one of {sorted(TOWERS)}"
        )
    if config.data.crop_size < 0:
        raise ValueError(
            f"config.data.crop_size must be >= 0, got {config.data.crop_size}"
        )


def build(config: ml_collections.ConfigDict, workdir: str) -> Pathway:
    _check_config(config)
    tower = TOWERS[config.model.encoder](config.model, workdir)
    dataset = high_level_data.create_high_level_dataset(
        config.data,
        seed=config.seed,
        image_size=config.data.crop_size or tower.arch.image_size,
        mean=tower.mean,
        std=tower.std,
    )
    head = heads.ProjectionHead(features=config.model.head_dim)

    def init_variables(rng):
        head_params = jax.jit(head.init)(rng, jnp.zeros((1, tower.embed_dim)))[
            "params"
        ]
        variables = {
            "params": {"encoder": tower.variables["params"], "head": head_params}
        }
        if "batch_stats" in tower.variables:
            variables["batch_stats"] = {"encoder": tower.variables["batch_stats"]}
        return variables

    def export(state, directory):
        variables = {"params": state.params["encoder"]}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats["encoder"]
        high_level_export.write(
            directory,
            encoder=tower.name,
            arch=tower.arch,
            variables=variables,
            prompt_embeddings=tower.prompt_embeddings,
            mean=tower.mean,
            std=tower.std,
            prompts=config.model.prompts,
            dtype=config.model.dtype,
            step=int(state.step),
            initialised_from=config.model.clip,
        )

    return Pathway(
        dataset=dataset,
        num_examples=dataset.num_images,
        images_per_example=1,
        init_variables=init_variables,
        objective=functools.partial(
            group_contrastive_objective,
            encoder=tower.module,
            head=head,
            prompt_embeddings=tower.prompt_embeddings,
            group_size=config.loss.group_size,
            label_temperature=config.loss.label_temperature,
            temperature=config.loss.temperature,
            train_head=config.model.train_head,
        ),
        export=export,
    )


def tower_embeddings(encoder, params, batch_stats, images):
    """(B, S, S, 3) normalised crops -> (B, D) float32, and the new batch_stats.

    A ModifiedResNet runs in train mode, as GRepQ's model.train(): BatchNorm
    normalises with this batch's statistics and updates the running ones,
    batch_stats["encoder"]. A ViT has none; batch_stats passes through.
    """
    if isinstance(encoder, clip_rn50.ModifiedResNet):
        embeddings, updates = encoder.apply(
            {"params": params, "batch_stats": batch_stats["encoder"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        batch_stats = {"encoder": updates["batch_stats"]}
    else:
        embeddings = encoder.apply({"params": params}, images)
    return embeddings.astype(jnp.float32), batch_stats


def group_contrastive_objective(
    params,
    batch_stats,
    batch,
    *,
    encoder,
    head,
    prompt_embeddings,
    group_size,
    label_temperature,
    temperature,
    train_head,
):
    """The loss of one batch of crops, batch["image"] (B, S, S, 3) normalised.

    The images are ranked by their pseudo-labels over the whole global batch;
    the `group_size` best and worst form the two groups whose projected
    features the group-contrastive loss pulls apart. Returns (loss,
    (batch_stats, metrics)), the statistics updated for a ModifiedResNet.
    """
    embeddings, batch_stats = tower_embeddings(
        encoder, params["encoder"], batch_stats, batch["image"]
    )
    quality = pseudo_labels.quality_pseudo_labels(
        jax.lax.stop_gradient(embeddings), prompt_embeddings, label_temperature
    )
    best, worst = pseudo_labels.split_quality_groups(quality, group_size)
    head_params = params["head"]
    if not train_head:
        head_params = jax.lax.stop_gradient(head_params)
    projected = head.apply({"params": head_params}, embeddings)
    loss = losses.group_contrastive_loss(
        projected[best], projected[worst], temperature=temperature
    )
    return loss, (
        batch_stats,
        {"pseudo_label_gap": quality[best].mean() - quality[worst].mean()},
    )
