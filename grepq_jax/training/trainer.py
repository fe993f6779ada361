"""The one trainer shared by both GRepQ pathways.

What differs between the low- and high-level encoders (data, model, loss,
export) comes from a `Pathway` picked by `config.pathway`; everything else (the
train state, the pure `train_step`, data parallelism, checkpoints, metrics) is
here and is the same for both.
"""

import contextlib
import functools
import math
from typing import Any

from absl import logging
from etils import epath
import flax
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from grepq_jax.formats import checkpoint
from grepq_jax.training import config_ranges
from grepq_jax.training import distributed
from grepq_jax import errors
from grepq_jax.training import progress
from grepq_jax.training import sharding
from grepq_jax.training import workdir_lock
from grepq_jax.training import xla_options
from grepq_jax.training.pathways import build_pathway


class NonFiniteError(errors.RunFailure, FloatingPointError):
    """A non-finite loss, gradient or parameter; the last good checkpoint is
    kept."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    objective,
    optimizer: optax.GradientTransformation,
):
    """One optimisation step; returns the new state and scalar metrics.

    `objective(params, batch_stats, batch) -> (loss, (batch_stats, metrics))`
    sees the global batch: under `jax.jit` with a sharded batch, BatchNorm
    statistics and in-batch groupings cover every device's examples.
    """
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (loss, (batch_stats, step_metrics)), grads = grad_fn(
        state.params, state.batch_stats, batch
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, dict(
        step_metrics,
        loss=loss,
        grad_norm=optax.tree.norm(grads),
        # Non-finite if any parameter is: the loop then stops before saving.
        param_norm=optax.tree.norm(new_state.params),
    )


def make_optimizer(
    optim: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
):
    """The config's optimizer and learning-rate schedule (step -> rate)."""
    if optim.schedule == "cosine":  # The low-level paper setting.
        schedule = optax.cosine_decay_schedule(
            optim.learning_rate,
            decay_steps=max(total_steps, 1),
            alpha=optim.end_learning_rate / optim.learning_rate,
        )
    elif optim.schedule == "warmup_constant":  # The high-level one.
        warmup = max(round(optim.warmup_epochs * steps_per_epoch), 1)
        schedule = optax.linear_schedule(0.0, optim.learning_rate, warmup)
    else:
        raise ValueError(f"config.optim.schedule: unknown {optim.schedule!r}")
    if optim.name == "adamw":
        return optax.adamw(schedule, weight_decay=optim.weight_decay), schedule
    if optim.name == "adam":
        return optax.adam(schedule), schedule
    raise ValueError(f"config.optim.name: unknown optimizer {optim.name!r}")


def create_train_state(
    variables, optimizer, replicated: NamedSharding
) -> TrainState:
    """The initial state, replicated on the mesh.

    `variables` ({"params", "batch_stats"?}) come in as arrays rather than an
    init function, so that pretrained weights are placed, not baked into a
    compiled program as constants.
    """
    params = sharding.replicate(variables["params"], replicated)
    return TrainState(
        step=sharding.replicate(np.zeros((), np.int32), replicated),
        params=params,
        batch_stats=sharding.replicate(variables.get("batch_stats", {}), replicated),
        opt_state=jax.jit(optimizer.init, out_shardings=replicated)(params),
    )


def make_step_fn(objective, optimizer: optax.GradientTransformation,
                 mesh: jax.sharding.Mesh, *, xla_defaults: bool = False):
    """`train_step` compiled for `mesh`: state replicated, batch sharded on
    `data`, the old state donated. The trainer and the benchmarks share it;
    `xla_defaults` leaves out `xla_options.step_compiler_options()`, for the benchmarks
    that measure XLA's own choices."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        functools.partial(train_step, objective=objective,
                          optimizer=optimizer),
        in_shardings=(replicated, NamedSharding(mesh, P("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=None if xla_defaults else xla_options.step_compiler_options(),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       untrained: bool = False):
    """Trains `config.pathway`, resuming from `workdir`, then exports it.

    On SIGTERM (a preempted TPU VM, a scheduler) it saves at the next step
    boundary and returns that state without exporting; running it again
    resumes there. `untrained` exports the initial encoder without training
    it (a baseline for benchmarks).

    The config's ranges are checked first (UsageError, before any work), then
    the workdir is locked for the run (`workdir_lock`).
    """
    config_ranges.check_ranges(config)
    with workdir_lock.held(str(workdir), holder=jax.process_index() == 0):
        return _train_and_evaluate(config, epath.Path(workdir), untrained)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.Path,
                        untrained: bool):
    try:
        # The data is read first: a bad folder stops the run before any compile.
        pathway = build_pathway(config, str(workdir))
        mesh = sharding.make_mesh(config.num_devices)
        if config.batch_size % mesh.size:
            raise ValueError(
                f"config.batch_size={config.batch_size} must be a "
                f"multiple of the {mesh.size} devices in use"
            )
        steps_per_epoch = math.ceil(pathway.num_examples / config.batch_size)
        total_steps = config.num_epochs * steps_per_epoch
        optimizer, schedule = make_optimizer(
            config.optim, steps_per_epoch, total_steps
        )
    except (ValueError, OSError) as error:  # Config fields, data folders.
        raise errors.UsageError(str(error)) from error
    warn_if_degenerate(config, pathway.num_examples)
    replicated = NamedSharding(mesh, P())
    state = create_train_state(
        pathway.init_variables(jax.random.key(config.seed)),
        optimizer,
        replicated,
    )
    distributed.wait_for_every_process("grepq_data_ready")
    if untrained:
        pathway.export(state, str(workdir / "export"))
        logging.info("Exported the untrained encoder to %s.", workdir / "export")
        return state
    checkpoints = checkpoint.TrainCheckpoints(
        str(workdir / "checkpoints"),
        save_every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
    )
    state = checkpoints.restore_latest(state)
    if int(state.step):
        logging.info(
            "Resuming from step %d of %d.", int(state.step), total_steps
        )
    step_fn = make_step_fn(pathway.objective, optimizer, mesh)
    start = int(state.step)
    stop_signal = distributed.StopSignal()
    try:
        batches = pathway.dataset.iterate(
            start,
            total_steps - start,
            config.batch_size,
            prefetch=config.data.prefetch,
            workers=config.data.workers,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        reporter = progress.ProgressReporter(
            str(workdir / "tensorboard"),
            total_steps=total_steps,
            start_step=start,
            images_per_step=config.batch_size * pathway.images_per_example,
        )
        with contextlib.closing(batches), contextlib.closing(reporter):
            state, finished = run_steps(
                state,
                batches,
                step_fn=step_fn,
                batch_sharding=NamedSharding(mesh, P("data")),
                schedule=schedule,
                checkpoints=checkpoints,
                reporter=reporter,
                stop_signal=stop_signal,
                total_steps=total_steps,
                log_every_steps=config.log_every_steps,
            )
    finally:
        stop_signal.close()
        checkpoints.close()
    if not finished:
        logging.warning(
            "Stopped by SIGTERM after step %d of %d and saved it in %s; "
            "run the same command again to resume.",
            int(state.step),
            total_steps,
            workdir / "checkpoints",
        )
        return state
    pathway.export(state, str(workdir / "export"))
    logging.info("%s", what_next(config, workdir, total_steps))
    return state


def warn_if_degenerate(config: ml_collections.ConfigDict, num_examples: int):
    """Warns about data on which a run says little, without stopping it."""
    if num_examples == 1:
        logging.warning(
            "Only one training example: every batch repeats it, so the loss "
            "has nothing to contrast across examples.")
    elif num_examples < config.batch_size:
        logging.warning(
            "Only %d training examples for batch_size=%d: each batch repeats "
            "examples. Add data (config.data.path) or lower "
            "--config.batch_size.", num_examples, config.batch_size)


def what_next(config: ml_collections.ConfigDict, workdir, total_steps: int) -> str:
    """The closing message: where everything is and the commands that use it."""
    export_dir = workdir / "export"
    flag = "--low_level" if config.pathway == "low_level" else "--high_level"
    model_dir = workdir / "model"  # Beside the run, local or gs:// alike.
    return (
        f"Done: {total_steps} steps. Checkpoints: {workdir / 'checkpoints'}; "
        f"TensorBoard (pip install tensorboard): tensorboard --logdir "
        f"{workdir / 'tensorboard'}\n"
        f"Next, package a scoring model folder and score images:\n"
        f"  grepq export {flag}={export_dir} --out={model_dir}\n"
        f"  grepq score --model={model_dir} IMAGE_OR_FOLDER ..."
    )


def run_steps(
    state: TrainState,
    batches,
    *,
    step_fn,
    batch_sharding: NamedSharding,
    schedule,
    checkpoints: checkpoint.TrainCheckpoints,
    reporter: progress.ProgressReporter,
    stop_signal: distributed.StopSignal,
    total_steps: int,
    log_every_steps: int,
) -> tuple[TrainState, bool]:
    """The loop: one step per `(step, local_batch)` of `batches`, logging and
    saving as due.

    Metrics stay on the device between logs and saves, so the host dispatches
    the next step while the device runs this one; with them comes a flag, also
    kept on the device, that every step since the last check was finite. A
    non-finite step stops the run at the next check, before any save.

    Returns the last state and whether it ran to the end (False: it was asked
    to stop, and saved where it stopped).
    """
    finite, first_unchecked = None, int(state.step) + 1
    for step, local_batch in batches:
        state, step_metrics = step_fn(
            state, sharding.global_batch(local_batch, batch_sharding)
        )
        finite = _all_finite(step_metrics, True if finite is None else finite)
        done = step + 1
        # Called at every step on every process: that is how processes
        # agree on the step at which all of them stop.
        stop = checkpoints.reached_preemption(done) or stop_signal.received
        last = done == total_steps
        log = done % log_every_steps == 0 or last
        if not (log or stop or last or checkpoints.should_save(done)):
            continue
        scalars = _checked_scalars(
            step_metrics, finite, first_unchecked, done, checkpoints
        )
        finite, first_unchecked = None, done + 1
        if log:
            scalars["learning_rate"] = float(schedule(step))
            reporter.step_done(done, scalars)
        checkpoints.save(done, state, force=stop or last)
        if stop and not last:
            return state, False
    return state, True


@jax.jit
def _all_finite(step_metrics, finite_so_far) -> jax.Array:
    """`finite_so_far` and whether every metric of this step is finite."""
    leaves = [jax.numpy.isfinite(v).all() for v in jax.tree.leaves(step_metrics)]
    return functools.reduce(jax.numpy.logical_and, leaves, finite_so_far)


def _checked_scalars(step_metrics, finite, first: int, done: int,
                     checkpoints) -> dict[str, float]:
    """Step `done`'s metrics as floats, fetched with the flag that steps
    `first` to `done` were all finite; NonFiniteError if one was not.

    Raised before the state is saved, so the last good checkpoint stays the
    latest. Every process sees the same replicated values and stops together.
    """
    step_metrics, finite = jax.device_get((step_metrics, finite))
    scalars = {k: float(v) for k, v in step_metrics.items()}
    if finite:
        return scalars
    where = (f"at step {done} ({scalars})" if first == done else
             f"at a step from {first} to {done} (step {done}: {scalars})")
    kept = checkpoints.latest_verified_step()
    raise NonFiniteError(
        f"non-finite loss, gradient or parameters {where}; "
        + (
            f"the last good checkpoint, step {kept}, is kept in "
            f"{checkpoints.directory}"
            if kept is not None
            else "no checkpoint had been saved yet"
        )
    )
