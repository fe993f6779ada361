"""PyTorch state dicts (as NumPy arrays) -> Flax variables for our ResNet and LowLevelModel.

No torch here: the caller turns tensors into arrays (`{k: v.numpy() for ...}`),
e.g. after `torch.load(path, weights_only=True)` in a script.

The mapping, one-to-one, Flax variable <- torchvision key:
    params/conv1/kernel                      <- conv1.weight  (O,I,kh,kw) -> (kh,kw,I,O)
    params/bn1/{scale, bias}                 <- bn1.{weight, bias}
    batch_stats/bn1/{mean, var}              <- bn1.{running_mean, running_var}
    params/layer{s}_{i}/conv{k}/kernel       <- layer{s}.{i}.conv{k}.weight
    .../layer{s}_{i}/bn{k}/...               <- layer{s}.{i}.bn{k}.{...}
    .../layer{s}_{i}/downsample_conv/kernel  <- layer{s}.{i}.downsample.0.weight
    .../layer{s}_{i}/downsample_bn/...       <- layer{s}.{i}.downsample.1.{...}
Ignored: `*.num_batches_tracked` (Flax keeps no counter) and `fc.*` (no classifier).

The original GRepQ LLModel wraps the same ResNet-18 as
`encoder.resnet18 = nn.Sequential(*list(resnet18().children())[:-1])`, so its keys
number the modules: 0=conv1, 1=bn1, 4..7=layer1..layer4 (2, 3, 8 hold no weights):
    params/encoder/<torchvision path>        <- encoder.resnet18.<index path>
    params/head/dense_{0,2}/kernel           <- head.{0,2}.weight  (out,in) -> (in,out)
    params/head/dense_{0,2}/bias             <- head.{0,2}.bias
Ignored: `encoder.base_model.*`, the same tensors again under the unwrapped
torchvision names (plus the unused `fc`), which `state_dict()` also saves.
"""
import re
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from grepq_jax.models.low_level import LowLevelModel
from grepq_jax.models.resnet import resnet

_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_SEQUENTIAL_INDEX = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def _torchvision_module(name: str) -> str:
    """A Flax module name in our ResNet -> its torchvision name ("layer2_0" -> "layer2.0")."""
    name = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)
    return re.sub(r"^(layer\d)_(\d+)$", r"\1.\2", name)


def torchvision_key(path: tuple) -> str:
    """("batch_stats", "layer2_0", "downsample_bn", "var") -> "layer2.0.downsample.1.running_var"."""
    collection, *modules, leaf = path
    return ".".join([_torchvision_module(m) for m in modules] + [_LEAF_NAMES[collection, leaf]])


def _grepq_key(path: tuple) -> str:
    """("params", "encoder", "layer1_0", "conv1", "kernel") -> "encoder.resnet18.4.0.conv1.weight",
    ("params", "head", "dense_2", "bias") -> "head.2.bias"."""
    collection, top, *rest = path
    if top == "head":
        dense, leaf = rest
        return f"head.{dense.removeprefix('dense_')}.{_LEAF_NAMES[collection, leaf]}"
    first, dot, tail = torchvision_key((collection, *rest)).partition(".")
    return f"encoder.resnet18.{_SEQUENTIAL_INDEX[first]}{dot}{tail}"


def variable_shapes(module: nn.Module) -> dict:
    """{(collection, *names): ShapeDtypeStruct} of module's variables, without computing them."""
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), images)
    return flatten_dict(shapes)


def _required(state_dict: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in state_dict:
        raise KeyError(f"state dict lacks {key!r}")
    return np.asarray(state_dict[key])


def convert_state_dict(state_dict: Mapping[str, np.ndarray], template: dict,
                       torch_key: Callable[[tuple], str], ignored: Callable[[str], bool]) -> dict:
    """Fills every variable of `template` from `state_dict`, checking keys and shapes."""
    converted, used = {}, set()
    for path, spec in template.items():
        key = torch_key(path)
        value = _required(state_dict, key)
        # torch kernels are (out, in[, kh, kw]); Flax's are ([kh, kw,] in, out).
        is_kernel = path[-1] == "kernel"
        torch_shape = (spec.shape[-1], spec.shape[-2], *spec.shape[:-2]) if is_kernel else spec.shape
        if value.shape != torch_shape:
            raise ValueError(f"{key!r} has shape {value.shape}, expected {torch_shape} "
                             f"for Flax {'/'.join(path)}")
        if is_kernel:
            value = np.moveaxis(value, (0, 1), (-1, -2))
        converted[path] = np.ascontiguousarray(value, spec.dtype)
        used.add(key)
    unexpected = sorted(k for k in state_dict if k not in used and not ignored(k))
    if unexpected:
        raise KeyError(f"unexpected keys in state dict: {unexpected}")
    return unflatten_dict(converted)


def convert_torchvision_resnet(state_dict: Mapping[str, np.ndarray],
                               architecture: str = "resnet18") -> dict:
    """torchvision ResNet state dict -> {"params", "batch_stats"} for resnet(architecture, width=...).

    The width is read from `conv1.weight`. Raises KeyError naming a missing or
    unexpected key, ValueError naming a key whose shape does not fit.
    """
    width = _required(state_dict, "conv1.weight").shape[0]
    template = variable_shapes(resnet(architecture, width=width))
    return convert_state_dict(state_dict, template, torchvision_key,
                              lambda k: k.endswith(".num_batches_tracked") or k.startswith("fc."))


def convert_grepq_low_level(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Original GRepQ `LLModel(encoder="resnet18", head="mlp")` state dict ->
    {"params", "batch_stats"} for LowLevelModel("resnet18", width, head_dim).

    Width and head_dim are read from the weights; errors as convert_torchvision_resnet.
    """
    width = _required(state_dict, "encoder.resnet18.0.weight").shape[0]
    head_dim = _required(state_dict, "head.2.weight").shape[0]
    template = variable_shapes(LowLevelModel("resnet18", width=width, head_dim=head_dim))
    return convert_state_dict(state_dict, template, _grepq_key,
                              lambda k: k.endswith(".num_batches_tracked") or k.startswith("encoder.base_model."))
