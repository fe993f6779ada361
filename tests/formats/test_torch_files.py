"""PyTorch weight files read without torch (grepq_jax.formats.pytorch: weight_files, unpickler).

Reference: what torch itself reads back, `torch.load(..., weights_only=True)`
or for TorchScript `torch.jit.load(...).state_dict()`, on files torch wrote
the way the released ones are written (tests/fixtures/make_torch_files.py):
stored (no torch needed) and live (with torch, fresh files). Arrays must be
equal, dtype included: no tolerance, nothing is computed.

Pickles that name anything else are refused before anything runs; the
hand-made ones below are written opcode by opcode (`_Pickler`), as a hostile
file would be, without torch.
"""
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from grepq_jax.formats.pytorch import weight_files
from grepq_jax.formats.pytorch.unpickler import RefusedGlobal, TorchFileError

_FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("make_torch_files",
                                               _FIXTURES / "make_torch_files.py")
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)


def _assert_same(ours: dict, theirs: dict):
    assert sorted(ours) == sorted(theirs)
    for key, expected in theirs.items():
        value = ours[key]
        if key.endswith("#repr"):
            assert str(value) == str(expected), key
        else:
            assert value.dtype == expected.dtype and value.shape == expected.shape, key
            np.testing.assert_array_equal(value, expected, err_msg=key)


def _read(folder, name) -> dict:
    return maker.flatten(weight_files.load(Path(folder) / name), name)


@pytest.mark.parametrize("name", maker.FILES)
def test_stored_files_read_as_torch_reads_them(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    monkeypatch.chdir(_FIXTURES)
    stored = dict(np.load("torch_files/expected.npz"))
    theirs = {k: v for k, v in stored.items() if k.split("/")[0] == name}
    assert theirs, f"no stored arrays for {name}: rerun make_torch_files.py"
    _assert_same(_read("torch_files", name), theirs)  # a relative path, as users type


def test_stored_views_share_one_storage_as_torch_saved_them():
    state = weight_files.load(_FIXTURES / "torch_files" / "state_dict.pth")
    np.testing.assert_array_equal(state["transposed"], state["shared"].T)
    np.testing.assert_array_equal(state["offset_view"], state["shared"][1:3, 2:5])


def test_torchscript_state_dict_leaves_out_plain_attributes():
    state = weight_files.load(_FIXTURES / "torch_files" / "scripted.pt")
    assert sorted(state) == ["linear.bias", "linear.weight"]  # not "mask"


def test_live_files_read_as_torch_reads_them(tmp_path):
    torch = pytest.importorskip("torch")
    expected = maker.write_files(torch, tmp_path)
    for name in maker.FILES:
        theirs = {k: v for k, v in expected.items() if k.split("/")[0] == name}
        _assert_same(_read(tmp_path, name), theirs)


@pytest.mark.slow
def test_full_size_clip_files_read_as_torch_reads_them_live(tmp_path):
    """OpenAI's RN50 state dict at full size, in float16 as RN50.pt holds it,
    in both torch.save layouts."""
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "make_released_reference", _FIXTURES / "make_released_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    state = {k: torch.from_numpy(v).half() for k, v in reference.clip_state_dict().items()}
    for name, zipped in (("RN50_fp16.pt", True), ("RN50_fp16_legacy.pt", False)):
        torch.save(state, tmp_path / name, _use_new_zipfile_serialization=zipped)
        ours = weight_files.load(tmp_path / name)
        theirs = torch.load(tmp_path / name, weights_only=True)
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            assert ours[key].dtype == np.float16
            np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)


# --- hand-made pickles ---------------------------------------------------------------

class _Global:
    """A global by name, written as GLOBAL without importing it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self):
        raise AssertionError("never called: only written")

    def __reduce_ex__(self, protocol):
        return self.name


class _Reduce:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce_ex__(self, protocol):
        return self.function, self.args


class _Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class _Pickler(pickle._Pickler):
    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", obj.numel)
        return None


def _pickled(obj) -> bytes:
    stream = io.BytesIO()
    _Pickler(stream, protocol=2).dump(obj)
    return stream.getvalue()


def _tensor(storage, offset, shape, stride):
    return _Reduce(_Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, shape,
                   stride, False, _Reduce(_Global("collections", "OrderedDict")))


def _write_zip(path, data_pkl: bytes, records=None, byteorder=None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, raw in (records or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
        if byteorder:
            archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/version", "3\n")
    return Path(path)


class _CreatesAFile:
    """What a hostile weights file holds: unpickling it would create `pwned`."""

    def __reduce__(self):
        return open, ("pwned", "w")


class _RunsAShellCommand:
    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.mark.parametrize("payload", [_CreatesAFile(), {"weight": _CreatesAFile()},
                                     _RunsAShellCommand()])
@pytest.mark.parametrize("layout", ["zip", "raw"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(payload, layout, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps(payload, protocol=2)
    if layout == "zip":
        _write_zip("evil.pth", data)
    else:
        Path("evil.pth").write_bytes(data)
    with pytest.raises(RefusedGlobal, match=r"^evil.pth: its pickle calls (io\.open|"
                       r"posix\.system), which is not a tensor.*nothing was run$"):
        weight_files.load("evil.pth")
    assert not Path("pwned").exists()


@pytest.mark.slow
def test_the_convert_command_refuses_a_hostile_file_in_one_line(tmp_path):
    _write_zip(tmp_path / "RN50.pt", pickle.dumps({"visual.x": _CreatesAFile()}, protocol=2))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-m", "grepq_jax.commands.cli", "convert", "--clip=RN50.pt",
                           "--out=model"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "convert failed: RN50.pt: its pickle calls io.open, which is not a tensor, "
        "storage or container: refused, nothing was run"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "model").exists()


def test_module_classes_are_refused_outside_torchscript_archives(tmp_path):
    path = _write_zip(tmp_path / "x.pth", _pickled(_Reduce(_Global("__torch__", "M"))))
    with pytest.raises(RefusedGlobal, match="calls __torch__.M"):
        weight_files.load(path)


def test_a_pickle_cannot_change_the_allow_list_for_the_next_file(tmp_path):
    # BUILD on the object torch.FloatStorage stands for: {"dtype": None}.
    attack = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeNsb."
    with pytest.raises(TorchFileError, match="bad.pth: a pickle that sets the state of"):
        weight_files.load(_write_zip(tmp_path / "bad.pth", attack))
    state = weight_files.load(_FIXTURES / "torch_files" / "state_dict.pth")
    assert state["float32"].dtype == np.float32


def test_a_view_past_its_storage_is_refused(tmp_path):
    storage = _Storage("FloatStorage", "0", 4)
    path = _write_zip(tmp_path / "x.pth", _pickled({"w": _tensor(storage, 1, (3,), (2,))}),
                      {"0": np.arange(4, dtype="<f4").tobytes()})
    with pytest.raises(TorchFileError, match="x.pth: a tensor reaching element 5 of storage "
                       "'0', which holds 4"):
        weight_files.load(path)


def test_a_short_storage_record_is_refused(tmp_path):
    storage = _Storage("FloatStorage", "0", 4)
    path = _write_zip(tmp_path / "x.pth", _pickled({"w": _tensor(storage, 0, (4,), (1,))}),
                      {"0": np.arange(3, dtype="<f4").tobytes()})
    with pytest.raises(TorchFileError, match="archive/data/0 holds 12 bytes, fewer than 4"):
        weight_files.load(path)


def test_big_endian_storages_read_as_their_values(tmp_path):
    storage = _Storage("HalfStorage", "0", 6)
    values = np.linspace(-1, 1, 6).astype(np.float16)
    path = _write_zip(tmp_path / "x.pth",
                      _pickled({"w": _tensor(storage, 0, (2, 3), (3, 1))}),
                      {"0": values.astype(">f2").tobytes()}, byteorder="big")
    read = weight_files.load(path)["w"]
    assert read.dtype == np.float16
    np.testing.assert_array_equal(read, values.reshape(2, 3))


@pytest.mark.parametrize("content, message", [
    (b"", "not a PyTorch"), (b"not weights", "not a PyTorch"),
    (None, "no such file")])
def test_files_that_are_not_weights_are_named(content, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path("notes.pth").write_bytes(content)
    with pytest.raises(TorchFileError, match=f"^notes.pth: .*{message}"):
        weight_files.load("notes.pth")


def test_reading_imports_no_torch():
    code = ("import sys, grepq_jax.formats.pytorch.weight_files as t; "
            f"t.load({str(_FIXTURES / 'torch_files' / 'traced_fp16.pt')!r}); "
            "sys.exit('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_containers_nested_too_deeply_are_one_error(tmp_path):
    # 100,000 lists, each appended to the one before: nested 100,000 deep.
    data = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    path = _write_zip(tmp_path / "deep.pth", data)
    with pytest.raises(TorchFileError, match="deep.pth: containers nested too deeply"):
        weight_files.load(path)
