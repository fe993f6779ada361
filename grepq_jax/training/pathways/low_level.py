"""Low-level pathway: ResNet encoder, FSIM-weighted quality-aware loss."""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from grepq_jax.formats import encoder_export
from grepq_jax.training import losses
from grepq_jax.training.data import low_level_pipeline as low_level_data
from grepq_jax.models import low_level as low_level_model
from grepq_jax.training.pathways.pathway import Pathway


def build(config: ml_collections.ConfigDict, workdir: str) -> Pathway:
    if config.loss.name != "qacl":
        raise ValueError(
            f"config.loss.name: the low-level pathway trains with "
            f"'qacl', not {config.loss.name!r}"
        )
    dataset = low_level_data.create_low_level_dataset(
        config.data,
        seed=config.seed,
        cache_dir=f"{workdir}/fsim_cache",
        write_cache=jax.process_index() == 0,
    )
    if dataset.skipped:
        logging.warning(
            "Skipped %d unusable image(s); see the warnings above.",
            len(dataset.skipped),
        )
    model = make_model(config.model)
    side = config.data.fragment_grid * config.data.fragment_size

    def init_variables(rng):
        return jax.jit(model.init, static_argnames="train")(
            rng, jnp.zeros((1, side, side, 3)), train=False
        )

    def export(state, directory):
        encoder_export.write(
            directory,
            {"params": state.params, "batch_stats": state.batch_stats},
            {
                "pathway": "low_level",
                "model": config.model.to_dict(),
                "step": int(state.step),
            },
        )

    return Pathway(
        dataset=dataset,
        num_examples=dataset.num_groups,
        images_per_example=2 * dataset.num_versions,
        init_variables=init_variables,
        objective=functools.partial(
            quality_aware_objective, model=model, tau=config.loss.tau
        ),
        export=export,
    )


make_model = low_level_model.make_low_level_model


def quality_aware_objective(params, batch_stats, batch, *, model, tau):
    """The loss of one batch of groups, and the updated BatchNorm statistics.

    `batch` holds "anchor" and "augment" views, (B, V, H, W, 3) uint8 each,
    and their FSIM matrices "sim", (B, V, V). As in the paper's code the two views go
    through the network in two passes, each normalised by its own statistics.
    """

    def embed(views, stats):
        groups, versions = views.shape[:2]
        images = views.reshape((groups * versions,) + views.shape[2:])
        out, updates = model.apply(
            {"params": params, "batch_stats": stats},
            images.astype(jnp.float32) / 255,
            train=True,
            mutable=["batch_stats"],
        )
        head = out["projection"].astype(jnp.float32)
        return head.reshape(groups, versions, -1), updates["batch_stats"]

    f1, batch_stats = embed(batch["anchor"], batch_stats)
    f2, batch_stats = embed(batch["augment"], batch_stats)
    loss = losses.quality_aware_contrastive_loss(f1, f2, batch["sim"], tau=tau)
    return loss, (batch_stats, {})
