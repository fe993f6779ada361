"""PyTorch weight files read without torch, and without running anything they hold.

The layouts, as torch writes them:

    zip (torch.save, torch >= 1.6)   NAME/data.pkl (the object), NAME/data/KEY (each
                                     storage's raw bytes), NAME/byteorder ("little" when
                                     absent), NAME/version
    legacy (torch.save(..., _use_new_zipfile_serialization=False))
                                     consecutive pickles: a magic number, the protocol
                                     (1001), sys_info (byte order), the object, the list
                                     of storage keys; then each storage in that order:
                                     its element count (int64) and its bytes
    TorchScript (torch.jit.save; OpenAI's RN50.pt)
                                     the zip layout plus NAME/code/ and
                                     NAME/constants.pkl; data.pkl is the module tree as
                                     `__torch__.*` objects whose attributes include the
                                     parameters and buffers, listed by the classes in
                                     code/ (`__parameters__ = [...]`, read as text)

Pickles are read by unpickler.py's allow-list unpickler. Arrays keep the
file's dtype (float16 stays float16).
"""
from __future__ import annotations

import ast
import io
import pathlib
import re
import zipfile
from collections.abc import Callable

import numpy as np

from grepq_jax.formats.pytorch.unpickler import ScriptObject, StorageRef, TorchFileError, materialize, unpickle

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001


def load(path) -> object:
    """What `torch.load(path, weights_only=True)` returns, with NumPy arrays for tensors;
    for a TorchScript archive, its module's `state_dict()` as {key: array}.

    Raises TorchFileError naming the file: missing, not a PyTorch file, or a
    pickle that names anything but tensors, storages and containers.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _load_zip(archive)
        return _load_legacy(path.read_bytes())
    except TorchFileError as error:
        raise type(error)(f"{path}: {error}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise TorchFileError(f"{path}: not a readable PyTorch file ({error})") from None
    except MemoryError:  # e.g. a tensor of stride 0 claiming billions of elements
        raise TorchFileError(f"{path}: a tensor too large for memory") from None
    except RecursionError:
        raise TorchFileError(f"{path}: containers nested too deeply") from None


def _is_torchscript(names: list[str]) -> bool:
    """TorchScript archives hold code/ and constants.pkl; torch.save's zips neither."""
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _storage_array(raw: bytes, ref: StorageRef, byteorder: str, where: str) -> np.ndarray:
    dtype = ref.dtype if ref.dtype is not None else np.dtype(np.uint8)
    dtype = dtype.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) < ref.numel * dtype.itemsize:
        raise TorchFileError(f"{where} holds {len(raw)} bytes, fewer than {ref.numel} "
                             f"{dtype.name} elements")
    return np.frombuffer(raw, dtype, ref.numel).astype(dtype.newbyteorder("="))


def _cached(read: Callable[[StorageRef], np.ndarray]) -> Callable[[StorageRef], np.ndarray]:
    """One array per storage key: tensors sharing a storage read its bytes once."""
    arrays: dict[str, np.ndarray] = {}

    def storage(ref: StorageRef) -> np.ndarray:
        if ref.key not in arrays:
            arrays[ref.key] = read(ref)
        return arrays[ref.key]
    return storage


# --- the zip layouts -----------------------------------------------------------------

def _archive_prefix(names: list[str]) -> str:
    tops = [name[:-len("/data.pkl")] for name in names
            if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(tops) != 1:
        raise TorchFileError("a zip without one NAME/data.pkl: not a PyTorch file")
    return tops[0]


def _load_zip(archive: zipfile.ZipFile):
    names = archive.namelist()
    prefix = _archive_prefix(names)
    byteorder = "little"
    if f"{prefix}/byteorder" in names:
        byteorder = archive.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise TorchFileError(f"byteorder {byteorder!r}")
    torchscript = _is_torchscript(names)

    def read(ref: StorageRef) -> np.ndarray:
        record = f"{prefix}/data/{ref.key}"
        if record not in names:
            raise TorchFileError(f"no record {record} for a storage the pickle names")
        return _storage_array(archive.read(record), ref, byteorder, record)

    loaded = materialize(unpickle(io.BytesIO(archive.read(f"{prefix}/data.pkl")),
                                  script_objects=torchscript), _cached(read))
    if torchscript:
        return _script_state_dict(loaded, _members_from_code(archive, prefix))
    return loaded


# --- TorchScript ---------------------------------------------------------------------

_CLASS = re.compile(r"^class (\w+)\(Module\):\n((?:  .*\n)*)", re.MULTILINE)
_MEMBERS = re.compile(r"^  __(parameters|buffers)__ = (\[.*\])$", re.MULTILINE)


def _members_from_code(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """{qualified class name: its parameters' and buffers' names}, from code/*.py as text.

    code/__torch__/a/b.py holds the classes `__torch__.a.b.NAME`.
    """
    members = {}
    code = f"{prefix}/code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code):-len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", "replace")
        for match in _CLASS.finditer(text):
            lists = dict(_MEMBERS.findall(match.group(2)))
            if set(lists) == {"parameters", "buffers"}:
                members[f"{module}.{match.group(1)}"] = {
                    member for kind in lists.values() for member in _names(kind)}
    return members


def _names(listed: str) -> list[str]:
    try:
        names = ast.literal_eval(listed)
    except (ValueError, SyntaxError):
        raise TorchFileError(f"a class in code/ lists its members as {listed[:80]}") from None
    return [n for n in names if isinstance(n, str)]


def _script_state_dict(module, members: dict[str, set[str]], prefix: str = "") -> dict:
    """module.state_dict(): its parameters and buffers, then its submodules', by dotted name.

    A class code/ does not describe contributes every array attribute.
    """
    if not isinstance(module, ScriptObject):
        raise TorchFileError("a TorchScript archive whose data.pkl is not a module")
    declared = members.get(module.qualified_name)
    state = {}
    for name, value in getattr(module, "attributes", {}).items():
        if isinstance(value, ScriptObject):
            state.update(_script_state_dict(value, members, f"{prefix}{name}."))
        elif isinstance(value, np.ndarray) and (declared is None or name in declared):
            state[f"{prefix}{name}"] = value
    return state


# --- the legacy layout ---------------------------------------------------------------

def _load_legacy(data: bytes):
    stream = io.BytesIO(data)
    if not data.startswith(b"\x80") or unpickle(stream) != LEGACY_MAGIC:
        raise TorchFileError("not a PyTorch file (neither a zip nor torch's legacy layout)")
    if unpickle(stream) != LEGACY_PROTOCOL:
        raise TorchFileError("a legacy PyTorch file of an unknown protocol")
    sys_info = unpickle(stream)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    refs: dict[str, StorageRef] = {}
    loaded = unpickle(stream, storages=refs)
    keys = unpickle(stream)
    if not isinstance(keys, list):
        raise TorchFileError("a legacy PyTorch file without its list of storages")
    arrays = {}
    for key in keys:
        ref = refs.get(str(key))
        if ref is None:
            raise TorchFileError(f"storage {key!r} is listed but no tensor uses it")
        count = int.from_bytes(stream.read(8), "little" if little else "big", signed=True)
        itemsize = 1 if ref.dtype is None else ref.dtype.itemsize
        raw = stream.read(count * itemsize)
        arrays[ref.key] = _storage_array(raw, StorageRef(ref.key, ref.dtype, count),
                                         "little" if little else "big", f"storage {key!r}")

    def read(ref: StorageRef) -> np.ndarray:
        if ref.key not in arrays:
            raise TorchFileError(f"no data for storage {ref.key!r}")
        return arrays[ref.key]
    return materialize(loaded, read)

