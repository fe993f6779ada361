"""Shared test set-up: CPU only, several simulated devices, fast compiles."""

import os
import tempfile

# Must be set before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import pytest  # noqa: E402
import skimage.data  # noqa: E402

# Identical programs compiled by different tests load from this cache.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "grepq_jax_test_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """Eight 64x64 crops of real photographs, all one size (one FSIM compile)."""
    folder = tmp_path_factory.mktemp("photos")
    sources = [
        skimage.data.astronaut(),
        skimage.data.coffee(),
        skimage.data.chelsea(),
        skimage.data.rocket(),
    ]
    for i, photo in enumerate(sources):
        for j, (y, x) in enumerate([(100, 100), (200, 150)]):
            crop = Image.fromarray(photo[y : y + 128, x : x + 128]).resize(
                (64, 64)
            )
            crop.save(folder / f"photo_{i}_{j}.png")
    return folder


def read_scalars(logdir, tag):
    """`tag`'s values in step order, as TensorBoard reads them (a restarted
    run's later file replaces the steps it logs again)."""
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    values = {event.step: event.value for event in events.Scalars(tag)}
    return [values[k] for k in sorted(values)]


def params_of(state):
    return jax.tree.map(np.asarray, jax.device_get(state.params))


def assert_same_training(params, reference, *, learning_rate, rtol, atol):
    """Parameters of two runs of the same global computation, summed in
    another order (devices, processes), agree.

    Adam divides each gradient by its own magnitude, so where a gradient is at
    rounding level the rounding can move that weight by a visible part of a
    step (seen: 6.5e-6 at learning rate 1e-4 on 2 weights of one kernel);
    per-device BatchNorm or a wrong gradient mean would move most weights by
    about a step. So: every weight within a tenth of a step, and all but 0.1%
    of the weights within (rtol, atol).
    """
    pairs = list(zip(jax.tree.leaves(params), jax.tree.leaves(reference)))
    loose = total = 0
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=0.1 * learning_rate)
        loose += int((~np.isclose(ours, theirs, rtol=rtol, atol=atol)).sum())
        total += np.size(theirs)
    assert loose <= 1e-3 * total, f"{loose} of {total} weights differ by more than {atol}"
