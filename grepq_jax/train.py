"""The one trainer shared by both GRepQ pathways.

What differs between the low- and high-level encoders (data, model, loss,
export) comes from a `Pathway` picked by `config.pathway`; everything else (the
train state, the pure `train_step`, data parallelism, checkpoints, metrics) is
here and is the same for both.
"""
import functools
import math
import os
from typing import Any

from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from grepq_jax import checkpoint
from grepq_jax import metrics
from grepq_jax.pathways import low_level

PATHWAYS = {"low_level": low_level.build}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
                              objective, optimizer: optax.GradientTransformation):
    """One optimisation step; returns the new state and scalar metrics.

    `objective(params, batch_stats, batch) -> (loss, (batch_stats, metrics))`
    sees the global batch: under `jax.jit` with a sharded batch, BatchNorm
    statistics and in-batch groupings cover every device's examples.
    """
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (loss, (batch_stats, step_metrics)), grads = grad_fn(
            state.params, state.batch_stats, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    grad_norm = optax.global_norm(grads)
    new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats, opt_state=opt_state)
    return new_state, dict(step_metrics, loss=loss, grad_norm=grad_norm)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
    """AdamW with a cosine decay to `end_learning_rate`, or the config's rule."""
    schedule = optim_schedule(optim, total_steps)
    if optim.name == "adamw":
        return optax.adamw(schedule, weight_decay=optim.weight_decay), schedule
    if optim.name == "adam":
        return optax.adam(schedule), schedule
    raise ValueError(f"config.optim.name: unknown optimizer {optim.name!r}")


def optim_schedule(optim: ml_collections.ConfigDict, total_steps: int):
    if optim.schedule == "cosine":
        return optax.cosine_decay_schedule(
                optim.learning_rate, decay_steps=max(total_steps, 1),
                alpha=optim.end_learning_rate / optim.learning_rate)
    if optim.schedule == "warmup_constant":
        return optax.linear_schedule(0.0, optim.learning_rate,
                                                                  max(optim.warmup_steps, 1))
    raise ValueError(f"config.optim.schedule: unknown {optim.schedule!r}")


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
    """A 1-D `data` mesh over the first `num_devices` devices (0: all)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"config.num_devices={num_devices} but only "
                                              f"{len(devices)} devices are visible")
        devices = devices[:num_devices]
    # Auto axes: the compiler propagates shardings through the global-view step
  # (jax 0.10 defaults to Explicit, where e.g. a sort over the batch fails).
  return jax.make_mesh((len(devices),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def create_train_state(init_variables, optimizer, rng,
                                              replicated: NamedSharding) -> TrainState:
    """Initialises parameters and optimizer state, replicated on the mesh."""

    def init(rng):
        variables = init_variables(rng)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                            batch_stats=variables.get("batch_stats", {}),
                                            opt_state=optimizer.init(params))

    return jax.jit(init, out_shardings=replicated)(rng)


def global_batch(local_batch: dict[str, np.ndarray],
                                  sharding: NamedSharding) -> dict[str, jax.Array]:
    """Each process's rows, assembled into arrays sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(sharding, v)
                    for k, v in local_batch.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains `config.pathway`, resuming from `workdir`, then exports it."""
    workdir = epath.Path(workdir)
    if config.pathway not in PATHWAYS:
        raise ValueError(f"config.pathway: unknown {config.pathway!r}, "
                                          f"expected one of {sorted(PATHWAYS)}")
    # Reading the data first: a bad folder stops the run before any compile.
    pathway = PATHWAYS[config.pathway](config, str(workdir))
    mesh = make_mesh(config.num_devices)
    if config.batch_size % mesh.size:
        raise ValueError(f"config.batch_size={config.batch_size} must be a "
                                          f"multiple of the {mesh.size} devices in use")
    steps_per_epoch = math.ceil(pathway.num_examples / config.batch_size)
    total_steps = config.num_epochs * steps_per_epoch
    optimizer, schedule = make_optimizer(config.optim, total_steps)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    state = create_train_state(pathway.init_variables, optimizer,
                                                          jax.random.key(config.seed), replicated)
    checkpoints = checkpoint.TrainCheckpoints(
            str(workdir / "checkpoints"),
            save_every_steps=config.checkpoint_every_steps,
            keep=config.keep_checkpoints)
    state = checkpoints.restore_latest(state)
    start_step = int(state.step)
    if start_step:
        logging.info("Resuming from step %d of %d.", start_step, total_steps)

    step_fn = jax.jit(
            functools.partial(train_step, objective=pathway.objective,
                                                optimizer=optimizer),
            in_shardings=(replicated, batch_sharding),
            out_shardings=(replicated, replicated), donate_argnums=0)
    reporter = metrics.ProgressReporter(
            str(workdir / "tensorboard"), total_steps=total_steps,
            start_step=start_step,
            images_per_step=config.batch_size * pathway.images_per_example)
    batches = pathway.dataset.iterate(
            start_step, total_steps - start_step, config.batch_size,
      prefetch=config.data.prefetch,
            process_index=jax.process_index(), process_count=jax.process_count())
    last = {}
    for step, local_batch in batches:
        state, step_metrics = step_fn(state, global_batch(local_batch,
                                                                                                            batch_sharding))
        done = step + 1
        scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        if not all(map(math.isfinite, scalars.values())):
            checkpoints.close()
            raise FloatingPointError(
                    f"non-finite loss or gradient at step {done} ({scalars}); the last "
                    f"good checkpoint (step {checkpoints.latest_step}) is kept in "
                    f"{workdir / 'checkpoints'}")
        if done % config.log_every_steps == 0 or done == total_steps:
            scalars["learning_rate"] = float(schedule(step))
            last = reporter.step_done(done, scalars)
        checkpoints.save(done, state, force=done == total_steps)
    reporter.close()
    checkpoints.close()
    export_dir = workdir / "export"
    pathway.export(state, str(export_dir))
    logging.info("Done: %d steps. Checkpoints: %s, TensorBoard logs: %s, "
                              "export for scoring: %s. Last metrics: %s", total_steps,
                              workdir / "checkpoints", workdir / "tensorboard", export_dir,
                              last)
    return state
