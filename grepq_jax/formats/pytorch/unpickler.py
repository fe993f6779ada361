"""PyTorch's pickles read without torch: tensors, storages and plain containers, nothing else.

A pickle names the functions that rebuild its objects, and Python's own
unpickler calls whatever they name, so a weights file could run any code.
`RestrictedUnpickler.find_class` answers only the names of `_ALLOWED` (and,
for TorchScript archives, the `__torch__.*` module classes as inert
`ScriptObject`s) with functions of this module, which build records; every
other name raises `RefusedGlobal` before anything is called (Python's
"Restricting Globals" recipe; the same idea as torch's `weights_only=True`).

Tensors come out as `TensorRecord`s naming their storage; `materialize`
turns them into NumPy arrays once the storages' bytes can be read, which for
torch's legacy layout is only after the whole pickle.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import pickle
from typing import Any, Callable

import numpy as np

from grepq_jax import errors


class TorchFileError(errors.InputError):
    """A file that is not a PyTorch weights file we can read; the message names it."""


class RefusedGlobal(TorchFileError):
    """A pickle that names a function outside the allow-list: it could run code."""


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """A storage as the pickle's persistent id names it; its bytes live elsewhere."""

    key: str
    dtype: np.dtype | None  # None: an untyped (byte) storage, typed by the tensor
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorRecord:
    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: np.dtype | None = None  # _rebuild_tensor_v3's, for untyped storages


class ScriptObject:
    """A TorchScript module or class instance: its qualified name and attributes."""

    qualified_name = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TorchFileError(f"{self.qualified_name} holds a {type(state).__name__} state")
        self.attributes = state


_DTYPES = {
    "float64": "<f8", "double": "<f8", "float32": "<f4", "float": "<f4", "float16": "<f2",
    "half": "<f2", "int64": "<i8", "long": "<i8", "int32": "<i4", "int": "<i4",
    "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
}
_STORAGES = {"DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
             "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
             "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}


class _Answer:
    """An allow-list answer. Immutable, with no __dict__ and a refusing __setstate__,
    so that a pickle's BUILD opcode cannot change it for the next file read."""

    __slots__ = ("value",)

    def __init__(self, value):
        object.__setattr__(self, "value", value)

    def __setattr__(self, name, value):
        raise TorchFileError(f"a pickle that sets {name} of {type(self).__name__}")

    def __setstate__(self, state):
        raise TorchFileError(f"a pickle that sets the state of {type(self).__name__}")


class _StorageType(_Answer):
    """What `torch.FloatStorage` and its kind stand for: the storage's dtype (None: bytes)."""

    __slots__ = ()


class _Dtype(_Answer):
    """What `torch.float16` and its kind stand for (_rebuild_tensor_v3's argument)."""

    __slots__ = ()


class _Call(_Answer):
    __slots__ = ()

    def __call__(self, *args):
        return self.value(*args)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None) -> TensorRecord:
    return _tensor(storage, offset, size, stride, None)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None) -> TensorRecord:
    return _tensor(storage, offset, size, stride, dtype)


def _tensor(storage, offset, size, stride, dtype) -> TensorRecord:
    if not isinstance(storage, StorageRef):
        raise TorchFileError(f"a tensor built on a {type(storage).__name__}, not a storage")
    if dtype is not None and not isinstance(dtype, _Dtype):
        raise TorchFileError(f"a tensor of an unsupported dtype {dtype!r}")
    return TensorRecord(storage, int(offset), tuple(int(n) for n in size),
                        tuple(int(s) for s in stride), dtype and dtype.value)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _unsupported_dtype(name: str) -> Callable:
    def refuse(*args):
        raise TorchFileError(f"holds {name} tensors, which NumPy cannot represent")
    return refuse


def _latin1(text, encoding="latin1"):
    """Protocol 2 pickles bytes as _codecs.encode(str, "latin1")."""
    if encoding != "latin1" or not isinstance(text, str):
        raise TorchFileError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _same(value, *tags):
    return value


def _as_list(items):
    return list(items)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): tuple,
    ("torch", "device"): str,
    **{key: _Call(function) for key, function in {
        ("_codecs", "encode"): _latin1,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "BFloat16Storage"): _unsupported_dtype("bfloat16"),
        ("torch", "bfloat16"): _unsupported_dtype("bfloat16"),
        # TorchScript's typed containers: the values, the type tags dropped.
        ("torch.jit._pickle", "restore_type_tag"): _same,
        ("torch.jit._pickle", "build_intlist"): _as_list,
        ("torch.jit._pickle", "build_doublelist"): _as_list,
        ("torch.jit._pickle", "build_boollist"): _as_list,
        ("torch.jit._pickle", "build_tensorlist"): _as_list,
    }.items()},
    ("torch", "UntypedStorage"): _StorageType(None),
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in _STORAGES.items()},
    **{("torch", name): _Dtype(np.dtype(dtype)) for name, dtype in _DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles PyTorch's data.pkl; storages become `StorageRef`s.

    script_objects: answer `__torch__.*` names (TorchScript's module classes)
    with inert `ScriptObject` classes.
    """

    def __init__(self, stream: io.BufferedIOBase, *, script_objects: bool = False,
                 storages: dict[str, StorageRef] | None = None):
        super().__init__(stream)
        self._script_objects = script_objects
        self._storages = {} if storages is None else storages
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if self._script_objects and (module == "__torch__" or module.startswith("__torch__.")):
            return self._script_class(f"{module}.{name}")
        raise RefusedGlobal(f"its pickle calls {module}.{name}, which is not a tensor, storage "
                            "or container: refused, nothing was run")

    def _script_class(self, qualified_name: str) -> type:
        if qualified_name not in self._classes:
            self._classes[qualified_name] = type(
                "ScriptObject", (ScriptObject,), {"qualified_name": qualified_name})
        return self._classes[qualified_name]

    def persistent_load(self, pid):
        # ("storage", storage type, key, location, numel[, legacy view metadata])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise TorchFileError(f"an unknown persistent id {str(pid)[:80]}")
        if len(pid) == 6 and pid[5] is not None:
            raise TorchFileError("a legacy storage view, which torch has not written since 0.4")
        ref = StorageRef(str(pid[2]), pid[1].value, int(pid[4]))
        self._storages[ref.key] = ref
        return ref


def unpickle(stream: io.BufferedIOBase, *, script_objects: bool = False,
             storages: dict[str, StorageRef] | None = None):
    """The next pickle of `stream`, with the allow-list; TorchFileError for anything else.

    storages: filled with the storages the pickle names, by key.
    """
    try:
        return RestrictedUnpickler(stream, script_objects=script_objects,
                                   storages=storages).load()
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, MemoryError) as error:
        raise TorchFileError(f"not a PyTorch pickle ({type(error).__name__}: "
                             f"{(str(error).splitlines() or [''])[0][:120]})") from None


def tensor_array(record: TensorRecord, storage: np.ndarray) -> np.ndarray:
    """The tensor's values, copied out of its storage's 1-D array; bounds checked."""
    if record.dtype is not None and record.dtype != storage.dtype:
        if storage.dtype != np.uint8:
            raise TorchFileError(f"storage {record.storage.key!r} is {storage.dtype}, "
                                 f"its tensor {record.dtype}")
        usable = storage.size - storage.size % record.dtype.itemsize
        storage = storage[:usable].view(record.dtype)
    shape, stride = record.shape, record.stride
    if len(shape) != len(stride) or min(shape + stride + (record.offset,), default=0) < 0:
        raise TorchFileError(f"a tensor on storage {record.storage.key!r} with shape {shape} "
                             f"and stride {stride}")
    if 0 in shape:
        return np.zeros(shape, storage.dtype)
    last = record.offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= storage.size:
        raise TorchFileError(f"a tensor reaching element {last} of storage "
                             f"{record.storage.key!r}, which holds {storage.size}")
    view = np.lib.stride_tricks.as_strided(
        storage[record.offset:], shape, [s * storage.itemsize for s in stride], writeable=False)
    return np.array(view)


def materialize(value, storage: Callable[[StorageRef], np.ndarray]):
    """`value` with every TensorRecord replaced by its array; containers rebuilt alike."""
    if isinstance(value, TensorRecord):
        return tensor_array(value, storage(value.storage))
    if isinstance(value, dict):
        return type(value)((k, materialize(v, storage)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(materialize(v, storage) for v in value)
    if isinstance(value, ScriptObject):
        value.attributes = materialize(getattr(value, "attributes", {}), storage)
    return value
