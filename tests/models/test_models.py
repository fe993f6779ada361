"""ResNet encoder, MLP head, LowLevelModel and the PyTorch weight converters.

Parity is checked three ways: against torchvision's parameter counts, against
stored torchvision outputs (ResNet-18 in eval and train mode, ResNet-50; made by
tests/fixtures/make_resnet_reference.py, no torch needed), and live against
torchvision when it is installed.
"""
import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from grepq_jax.models.low_level import LowLevelModel
from grepq_jax.models.resnet import resnet
from grepq_jax.formats.pytorch.resnet_weights import convert_grepq_low_level, convert_torchvision_resnet

_FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_resnet_reference", _FIXTURES / "make_resnet_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

TINY = 8  # base width of test-only models: resnet18 features are then (B, 64)
# Errors relative to the largest feature. float32 through ~20 conv/BN layers whose
# reductions (up to 4608 terms) XLA and oneDNN sum in different orders: measured
# 1.5e-7 (ResNet-18) and 2.4e-7 (ResNet-50) in eval mode; train mode normalises
# layer4 by statistics of only 8 values per channel, which amplifies rounding:
# measured 3.9e-6. The limits leave 5-8x for other CPUs; a wrong padding, eps
# or layout costs > 1e-3.
PARITY_RTOL = 2e-6
TRAIN_PARITY_RTOL = 2e-5
# Running statistics after one train step (magnitudes 0.4-1.5, each moved by
# >= 0.05 by the step): measured 3.6e-7 absolute, 5x headroom.
STATS_ATOL = 2e-6


@functools.cache
def _apply(model, train: bool):
    """Jitted model.apply, cached so that each model and mode compiles once."""
    if train:
        return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _init(model, images):
    """model.init(key 0, images, train=False), compiled without XLA's optimisations:
    optimising the RNG code takes seconds, the unoptimised run milliseconds."""
    cheap = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    init = jax.jit(functools.partial(model.init, train=False), compiler_options=cheap)
    return init(jax.random.key(0), images)


def _nhwc(images_nchw):
    return np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))


def _assert_close_to(actual, expected, rtol=PARITY_RTOL):
    """|actual - expected| <= rtol * max|expected|, elementwise."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= rtol, f"relative error {error:.2e} > {rtol:.0e}"


def _variable_shapes(model):
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _tiny_variables():
    return convert_torchvision_resnet(reference.random_resnet18_state_dict(seed=1, width=TINY))


# --- structure -------------------------------------------------------------

@pytest.mark.parametrize("architecture, torchvision_count", [
    ("resnet18", 11_689_512 - 512 * 1000 - 1000),   # torchvision's total minus fc
    ("resnet50", 25_557_032 - 2048 * 1000 - 1000),
])
def test_parameter_count_matches_torchvision_without_fc(architecture, torchvision_count):
    assert _count(_variable_shapes(resnet(architecture))["params"]) == torchvision_count


@pytest.mark.parametrize("architecture, blocks, projected", [
    ("resnet18", (2, 2, 2, 2), {"layer2_0", "layer3_0", "layer4_0"}),
    # Bottleneck widens layer1's channels 64 -> 256, so layer1_0 projects too.
    ("resnet50", (3, 4, 6, 3), {"layer1_0", "layer2_0", "layer3_0", "layer4_0"}),
])
def test_module_names_mirror_torchvision(architecture, blocks, projected):
    variables = _variable_shapes(resnet(architecture))
    layers = [f"layer{s + 1}_{i}" for s, n in enumerate(blocks) for i in range(n)]
    assert set(variables) == {"params", "batch_stats"}
    assert sorted(variables["params"]) == sorted(["conv1", "bn1"] + layers)
    assert sorted(variables["batch_stats"]) == sorted(["bn1"] + layers)
    with_downsample = {k for k, v in variables["params"].items() if "downsample_conv" in v}
    assert with_downsample == projected


@pytest.mark.parametrize("encoder, feature_dim", [("resnet18", 512), ("resnet50", 2048)])
def test_low_level_model_full_width_output_shapes(encoder, feature_dim):
    model = LowLevelModel(encoder)
    images = jax.ShapeDtypeStruct((3, 96, 96, 3), jnp.float32)
    variables = _variable_shapes(model)
    outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    assert outputs["features"].shape == (3, feature_dim)
    assert outputs["projection"].shape == (3, 128)
    head = variables["params"]["head"]
    assert head["dense_0"]["kernel"].shape == (feature_dim, feature_dim)
    assert head["dense_2"]["kernel"].shape == (feature_dim, 128)
    assert set(variables["batch_stats"]) == {"encoder"}


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    images = np.random.RandomState(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    full = LowLevelModel(width=TINY, head_dim=16)
    half = LowLevelModel(width=TINY, head_dim=16, dtype=jnp.bfloat16)
    variables = _init(half, images)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    expected, actual = _apply(full, False)(variables, images), _apply(half, False)(variables, images)
    assert actual["features"].shape == (2, 8 * TINY) and actual["projection"].shape == (2, 16)
    for key in ("features", "projection"):
        assert actual[key].dtype == jnp.float32
        # bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding, a few % after 20 layers.
        _assert_close_to(actual[key], expected[key], rtol=5e-2)


def test_init_follows_torchvision():
    model = LowLevelModel(width=16, head_dim=16)
    variables = _init(model, jnp.zeros((1, 32, 32, 3)))
    encoder = variables["params"]["encoder"]
    # kaiming_normal_(mode="fan_out"): std sqrt(2 / (out * kh * kw)).
    for kernel in (encoder["conv1"]["kernel"], encoder["layer4_1"]["conv2"]["kernel"]):
        kh, kw, _, out = kernel.shape
        np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / (out * kh * kw)), rtol=0.1)
    bn = encoder["layer2_0"]["downsample_bn"]
    assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)
    stats = variables["batch_stats"]["encoder"]["bn1"]
    assert np.all(stats["mean"] == 0) and np.all(stats["var"] == 1)
    # torch.nn.Linear: U(+-1/sqrt(fan_in)) for weight and bias.
    dense = variables["params"]["head"]["dense_0"]
    bound = 1 / np.sqrt(dense["kernel"].shape[0])
    for leaf in (dense["kernel"], dense["bias"]):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound


# --- numerics against torchvision -----------------------------------------

def test_resnet18_matches_stored_torchvision_output():
    stored = np.load(_FIXTURES / "resnet_reference.npz")
    state = reference.random_resnet18_state_dict(int(stored["seed"]), int(stored["width"]))
    assert reference.checksum(state) == pytest.approx(float(stored["checksum"]), rel=1e-12), (
        "the weight generator changed; rerun tests/fixtures/make_resnet_reference.py")
    features = _apply(resnet("resnet18"), False)(
        convert_torchvision_resnet(state), _nhwc(stored["images"]))
    _assert_close_to(features, stored["features"])


def test_train_mode_normalises_with_batch_statistics_and_updates_running_ones():
    model = resnet("resnet18", width=TINY)
    variables = _tiny_variables()  # running statistics away from (0, 1)
    images = np.random.RandomState(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
    features, updated = _apply(model, True)(variables, images)

    # Batch statistics, not running ones, normalise: the latter cannot matter.
    scrambled = jax.tree.map(lambda s: 2 * s + 1, variables["batch_stats"])
    again, _ = _apply(model, True)({**variables, "batch_stats": scrambled}, images)
    np.testing.assert_allclose(again, features, rtol=1e-6)
    assert not np.allclose(_apply(model, False)(variables, images), features, rtol=1e-2)

    # bn1: running = 0.9 * running + 0.1 * (biased) batch statistic of conv1's output.
    conv1 = jax.lax.conv_general_dilated(
        images, variables["params"]["conv1"]["kernel"], (2, 2), ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    old, new = variables["batch_stats"]["bn1"], updated["batch_stats"]["bn1"]
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * conv1.mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * conv1.var((0, 1, 2)),
                               rtol=1e-5)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                           updated["batch_stats"])
    assert all(jax.tree.leaves(changed)), "every BatchNorm must update its statistics"


def test_batch_statistics_span_the_whole_sharded_batch():
    """Global-view jit: a batch split over 8 devices gives the same statistics."""
    model = resnet("resnet18", width=TINY)
    variables = _tiny_variables()
    images = np.random.RandomState(3).normal(size=(8, 32, 32, 3)).astype(np.float32)
    mesh = jax.make_mesh((8,), ("data",))
    sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
    replicated = jax.device_put(variables, NamedSharding(mesh, P()))
    features, updated = _apply(model, True)(replicated, sharded)
    expected_features, expected = _apply(model, True)(variables, images)
    np.testing.assert_allclose(features, expected_features, rtol=1e-5, atol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 updated, expected)


# --- converters --------------------------------------------------------------

_GREPQ_SEQUENTIAL = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6",
                     "layer4": "7"}


def _grepq_state_dict(torchvision_state, head_dim, seed=4):
    """What the PyTorch LLModel(head="mlp").state_dict() holds, written independently."""
    rng = np.random.RandomState(seed)
    state = {}
    for key, value in torchvision_state.items():
        first, _, rest = key.partition(".")
        state[f"encoder.resnet18.{_GREPQ_SEQUENTIAL[first]}.{rest}"] = value
        state[f"encoder.base_model.{key}"] = value  # the aliased, unwrapped resnet18
    width = torchvision_state["layer4.1.conv2.weight"].shape[0]
    state["encoder.base_model.fc.weight"] = np.zeros((1000, width), np.float32)
    state["encoder.base_model.fc.bias"] = np.zeros((1000,), np.float32)
    for name, shape in (("head.0", (width, width)), ("head.2", (head_dim, width))):
        state[f"{name}.weight"] = rng.normal(0, width ** -0.5, shape).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, shape[:1]).astype(np.float32)
    return state


def test_grepq_low_level_checkpoint_converts_to_the_same_model():
    torchvision_state = reference.random_resnet18_state_dict(seed=1, width=TINY)
    state = _grepq_state_dict(torchvision_state, head_dim=16)
    variables = convert_grepq_low_level(state)
    encoder_variables = convert_torchvision_resnet(torchvision_state)
    for collection in ("params", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal,
                     variables[collection]["encoder"], encoder_variables[collection])

    images = np.random.RandomState(5).normal(size=(2, 32, 32, 3)).astype(np.float32)
    outputs = _apply(LowLevelModel(width=TINY, head_dim=16), False)(variables, images)
    features = np.asarray(outputs["features"], np.float64)
    hidden = np.maximum(features @ state["head.0.weight"].T + state["head.0.bias"], 0)
    projection = hidden @ state["head.2.weight"].T + state["head.2.bias"]
    _assert_close_to(outputs["projection"], projection, rtol=1e-5)
    np.testing.assert_allclose(
        outputs["features"], _apply(resnet("resnet18", width=TINY), False)(encoder_variables, images),
        rtol=1e-6, atol=1e-6)


def _missing(state):
    del state["layer2.0.downsample.1.running_var"]
    return KeyError, "layer2.0.downsample.1.running_var"


def _unexpected(state):
    state["layer5.0.conv1.weight"] = np.zeros((1, 1, 3, 3), np.float32)
    return KeyError, "layer5.0.conv1.weight"


def _misshapen(state):
    state["layer1.1.conv2.weight"] = state["layer1.1.conv2.weight"].transpose(2, 3, 1, 0)
    return ValueError, "layer1.1.conv2.weight"


@pytest.mark.parametrize("corrupt", [_missing, _unexpected, _misshapen])
def test_conversion_errors_name_the_key(corrupt):
    state = reference.random_resnet18_state_dict(seed=1, width=TINY)
    error, key = corrupt(state)
    with pytest.raises(error, match=key.replace(".", r"\.")):
        convert_torchvision_resnet(state)


def _stored(name: str, rebuild):
    """The npz `name` and the weights `rebuild(seed)` regenerates, checked to be
    the weights it was made from."""
    stored = np.load(_FIXTURES / name)
    state = rebuild(int(stored["seed"]))
    assert reference.checksum(state) == pytest.approx(float(stored["checksum"]), rel=1e-12), (
        "the weight generator changed; rerun tests/fixtures/make_resnet_reference.py")
    return stored, state


def _flax_running_stats(before: dict, after: dict, counts: dict) -> dict:
    """The Flax batch_stats one train step should leave, from torch's.

    `before`: the torchvision state dict; `after`: torch's running_mean/var
    after the step, keyed "running_mean.NAME"; `counts`: each BatchNorm's
    sample count n. torch updates running_var with the unbiased batch
    variance, Flax with the biased one b: var_t = 0.9 var_old + 0.1 b n / (n - 1)
    and var_f = 0.9 var_old + 0.1 b, so var_f = var_t - (var_t - 0.9 var_old) / n.
    """
    state = dict(before)
    for name, n in counts.items():
        torch_var = after[f"running_var.{name}"]
        state[f"{name}.running_mean"] = after[f"running_mean.{name}"]
        state[f"{name}.running_var"] = torch_var - (torch_var - 0.9 * before[f"{name}.running_var"]) / n
    return convert_torchvision_resnet(state)["batch_stats"]


def _assert_train_step_matches(state, images, features, after, counts):
    """Our train-mode features and updated statistics against torch's."""
    ours, updated = _apply(resnet("resnet18"), True)(convert_torchvision_resnet(state), _nhwc(images))
    _assert_close_to(ours, features, rtol=TRAIN_PARITY_RTOL)
    expected = _flax_running_stats(state, after, counts)
    assert jax.tree.structure(updated["batch_stats"]) == jax.tree.structure(expected)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0, atol=STATS_ATOL),
                 updated["batch_stats"], expected)


def test_resnet18_train_mode_matches_stored_torchvision_step():
    stored, state = _stored("resnet_train_reference.npz", reference.random_resnet18_state_dict)
    counts = {key.split(".", 1)[1]: int(stored[key]) for key in stored.files
              if key.startswith("count.")}
    assert len(counts) == 20  # every BatchNorm of ResNet-18
    after = {key: stored[key] for key in stored.files if key.startswith("running_")}
    _assert_train_step_matches(state, reference.reference_input(), stored["features"], after,
                               counts)


def test_resnet50_matches_stored_torchvision_output():
    stored, state = _stored("resnet50_reference.npz", reference.random_resnet50_state_dict)
    features = _apply(resnet("resnet50"), False)(
        convert_torchvision_resnet(state, "resnet50"), _nhwc(reference.reference_input()))
    _assert_close_to(features, stored["features"])


# --- live torchvision, where installed ---------------------------------------

def _torchvision_model(architecture, state):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    return reference._torchvision_model(architecture, state)


def test_resnet18_train_mode_matches_torchvision_live():
    state = reference.random_resnet18_state_dict()
    model = _torchvision_model("resnet18", state)
    images = reference.reference_input()
    features, counts, after = reference.train_step_outputs(model, images)
    _assert_train_step_matches(state, images, features, after, counts)


def test_resnet50_matches_torchvision_live():
    state = reference.random_resnet50_state_dict()
    model = _torchvision_model("resnet50", state)
    import torch

    images = reference.reference_input()
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images)).numpy()
    features = _apply(resnet("resnet50"), False)(
        convert_torchvision_resnet(state, "resnet50"), _nhwc(images))
    _assert_close_to(features, expected)
