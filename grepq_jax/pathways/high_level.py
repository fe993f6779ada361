"""High-level pathway: CLIP image tower, in-batch pseudo-labels, group loss."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections

from grepq_jax import checkpoint
from grepq_jax import losses
from grepq_jax import pseudo_labels
from grepq_jax.data import high_level as high_level_data
from grepq_jax.models import clip
from grepq_jax.pathways import DTYPES, Pathway


def load_checkpoint(
    model_config: ml_collections.ConfigDict, workdir: str
) -> clip.ClipBundle:
    """The configured CLIP; `clip.TINY_RANDOM` writes a tiny one first."""
    name = model_config.clip
    if name == clip.TINY_RANDOM:
        if "://" in workdir:
            raise ValueError("the tiny random CLIP needs a local workdir")
        name = str(clip.save_tiny_clip(os.path.join(workdir, "tiny_clip")))
    return clip.load_clip(name, dtype=DTYPES[model_config.dtype])


def build(config: ml_collections.ConfigDict, workdir: str) -> Pathway:
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
    bundle = load_checkpoint(config.model, workdir)
    dataset = high_level_data.create_high_level_dataset(
        config.data,
        seed=config.seed,
        image_size=bundle.image_size,
        mean=bundle.mean,
        std=bundle.std,
    )
    # Computed once: the text tower is frozen, so these are constants.
    prompt_embeddings = clip.encode_prompts(bundle, config.model.prompts)
    head = clip.ProjectionHead(features=config.model.head_dim)

    def init_variables(rng):
        head_params = jax.jit(head.init)(rng, jnp.zeros((1, bundle.embed_dim)))[
            "params"
        ]
        return {"params": {"encoder": bundle.params, "head": head_params}}

    def export(state, directory):
        checkpoint.write_export(
            directory,
            {
                "encoder": state.params["encoder"],
                "prompt_embeddings": prompt_embeddings,
            },
            {
                "pathway": "high_level",
                "arch": dataclasses.asdict(bundle.encoder.arch),
                "mean": list(bundle.mean),
                "std": list(bundle.std),
                "prompts": [list(p) for p in config.model.prompts],
                "dtype": config.model.dtype,
                "step": int(state.step),
            },
        )

    return Pathway(
        dataset=dataset,
        num_examples=dataset.num_images,
        images_per_example=1,
        init_variables=init_variables,
        objective=functools.partial(
            group_contrastive_objective,
            encoder=bundle.encoder,
            head=head,
            prompt_embeddings=prompt_embeddings,
            group_size=config.loss.group_size,
            label_temperature=config.loss.label_temperature,
            temperature=config.loss.temperature,
            train_head=config.model.train_head,
        ),
        export=export,
    )


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
    features the group-contrastive loss pulls apart.
    """
    embeddings = encoder.apply({"params": params["encoder"]}, batch["image"])
    embeddings = embeddings.astype(jnp.float32)
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
