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

from grepq_jax import checkpoint
from grepq_jax import distributed
from grepq_jax import errors
from grepq_jax import metrics
from grepq_jax.pathways import Pathway
from grepq_jax.pathways import low_level


def _build_high_level(config: ml_collections.ConfigDict, workdir: str):
    # Imported on use: transformers adds seconds to every (re)start of a
    # low-level run, and restarts after preemption should be quick.
    from grepq_jax.pathways import high_level

    return high_level.build(config, workdir)


PATHWAYS = {"low_level": low_level.build, "high_level": _build_high_level}


# XLA:CPU (jax 0.10) hands convolutions to YNNPACK, whose filter gradients are
# 2-3x slower than XLA's own Eigen convolutions (benchmarks/README.md). Keep
# YNNPACK for dots and reductions only: the same float32 arithmetic.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def step_compiler_options() -> dict[str, str] | None:
    """XLA options for the train step on this backend."""
    return _CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None


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


def make_mesh(num_devices: int) -> jax.sharding.Mesh:
    """A 1-D `data` mesh over the first `num_devices` devices (0: all)."""
    devices = jax.devices()
    if num_devices and jax.process_count() > 1 and num_devices != len(devices):
        # Each process feeds its own devices an equal share of the batch.
        raise ValueError(
            f"config.num_devices={num_devices}: with {jax.process_count()} "
            f"processes every device takes part; use 0 (all {len(devices)})"
        )
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(
                f"config.num_devices={num_devices} but only "
                f"{len(devices)} devices are visible"
            )
        devices = devices[:num_devices]
    # Auto axes: the compiler propagates shardings through the global-view
    # step (jax 0.10 defaults to Explicit, where a sort over the batch fails).
    return jax.make_mesh(
        (len(devices),),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices,
    )


def create_train_state(
    variables, optimizer, replicated: NamedSharding
) -> TrainState:
    """The initial state, replicated on the mesh.

    `variables` ({"params", "batch_stats"?}) come in as arrays rather than an
    init function, so that pretrained weights are placed, not baked into a
    compiled program as constants.
    """
    params = _replicate(variables["params"], replicated)
    return TrainState(
        step=_replicate(np.zeros((), np.int32), replicated),
        params=params,
        batch_stats=_replicate(variables.get("batch_stats", {}), replicated),
        opt_state=jax.jit(optimizer.init, out_shardings=replicated)(params),
    )


def _replicate(tree, replicated: NamedSharding):
    """`tree`, the same in every process, copied to every device of the mesh.

    Each process fills its own devices from a host copy: an array on one
    device cannot move to another process's, and `jax.device_put` would first
    compare the values across processes, one all-gather per array.
    """

    def place(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(
            host.shape, replicated, lambda index: host[index]
        )

    return jax.tree.map(place, tree)


def make_step_fn(objective, optimizer: optax.GradientTransformation,
                 mesh: jax.sharding.Mesh, *, xla_defaults: bool = False):
    """`train_step` compiled for `mesh`: state replicated, batch sharded on
    `data`, the old state donated. The trainer and the benchmarks share it;
    `xla_defaults` leaves out `step_compiler_options()`, for the benchmarks
    that measure XLA's own choices."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        functools.partial(train_step, objective=objective,
                          optimizer=optimizer),
        in_shardings=(replicated, NamedSharding(mesh, P("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=None if xla_defaults else step_compiler_options(),
    )


def global_batch(
    local_batch: dict[str, np.ndarray], sharding: NamedSharding
) -> dict[str, jax.Array]:
    """Each process's rows, assembled into arrays sharded over the mesh."""
    return {
        k: jax.make_array_from_process_local_data(sharding, v)
        for k, v in local_batch.items()
    }


def build_pathway(config: ml_collections.ConfigDict, workdir: str) -> Pathway:
    if config.pathway not in PATHWAYS:
        raise ValueError(
            f"config.pathway: unknown {config.pathway!r}, "
            f"expected one of {sorted(PATHWAYS)}"
        )
    return PATHWAYS[config.pathway](config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains `config.pathway`, resuming from `workdir`, then exports it.

    On SIGTERM (a preempted TPU VM, a scheduler) it saves at the next step
    boundary and returns that state without exporting; running it again
    resumes there.
    """
    workdir = epath.Path(workdir)
    try:
        # The data is read first: a bad folder stops the run before any compile.
        pathway = build_pathway(config, str(workdir))
        mesh = make_mesh(config.num_devices)
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
    batch_sharding = NamedSharding(mesh, P("data"))
    step_fn = make_step_fn(pathway.objective, optimizer, mesh)
    stop_signal = distributed.StopSignal()
    try:
        state, finished = _run_steps(
            config,
            workdir,
            pathway,
            state,
            step_fn,
            batch_sharding,
            schedule,
            checkpoints,
            total_steps,
            stop_signal,
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
    # Model folders are local for now (export and score read them with
    # pathlib); a run on Cloud Storage is packaged into the current folder.
    model_dir = f"models/{workdir.name}" if "://" in str(workdir) else workdir / "model"
    return (
        f"Done: {total_steps} steps. Checkpoints: {workdir / 'checkpoints'}; "
        f"TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}\n"
        f"Next, package a scoring model folder and score images:\n"
        f"  grepq export {flag}={export_dir} --out={model_dir}\n"
        f"  grepq score --model={model_dir} IMAGE_OR_FOLDER ..."
    )


def _run_steps(
    config,
    workdir,
    pathway,
    state,
    step_fn,
    batch_sharding,
    schedule,
    checkpoints,
    total_steps,
    stop_signal,
):
    """The loop: steps from the state's own step to the end, saving as due.

    Returns the last state and whether it ran to the end (False: it was asked
    to stop, and saved where it stopped).
    """
    start = int(state.step)
    reporter = metrics.ProgressReporter(
        str(workdir / "tensorboard"),
        total_steps=total_steps,
        start_step=start,
        images_per_step=config.batch_size * pathway.images_per_example,
    )
    batches = pathway.dataset.iterate(
        start,
        total_steps - start,
        config.batch_size,
        prefetch=config.data.prefetch,
        workers=config.data.workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    with contextlib.closing(batches), contextlib.closing(reporter):
        for step, local_batch in batches:
            state, step_metrics = step_fn(
                state, global_batch(local_batch, batch_sharding)
            )
            done = step + 1
            scalars = _finite_scalars(step_metrics, done, checkpoints)
            if done % config.log_every_steps == 0 or done == total_steps:
                scalars["learning_rate"] = float(schedule(step))
                reporter.step_done(done, scalars)
            # Called at every step on every process: that is how processes
            # agree on the step at which all of them stop.
            stop = checkpoints.reached_preemption(done) or stop_signal.received
            checkpoints.save(done, state, force=stop or done == total_steps)
            if stop and done < total_steps:
                return state, False
    return state, True


def _finite_scalars(step_metrics, done: int, checkpoints) -> dict[str, float]:
    """The step's metrics as floats; FloatingPointError if any is not finite.

    Raised before the state is saved, so the last good checkpoint stays the
    latest. Every process sees the same replicated metrics and stops together.
    """
    scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    if all(map(math.isfinite, scalars.values())):
        return scalars
    kept = checkpoints.latest_step
    raise NonFiniteError(
        f"non-finite loss, gradient or parameters at step {done} ({scalars}); "
        + (
            f"the last good checkpoint, step {kept}, is kept in "
            f"{checkpoints.directory}"
            if kept is not None
            else "no checkpoint had been saved yet"
        )
    )
