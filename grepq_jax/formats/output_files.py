"""A command's outputs: never written onto an input or another output, never
left half-written.

`check_no_clash` compares the resolved paths (links followed) of what a
command reads and writes before it starts; `replacing` writes a file under a
temporary name beside its target and renames it into place only once the
file is complete, so a failure or an interrupt leaves the target as it was.
"""
import contextlib
import dataclasses
import io
import os
import pathlib
import stat
import tempfile
from collections.abc import Iterable, Iterator

from etils import epath
import numpy as np

from grepq_jax import errors

PARTIAL_SUFFIX = ".partial"


@dataclasses.dataclass(frozen=True)
class Place:
    """A file or folder a command reads or writes, as the user named it.

    name: how to name it in a message ("--output=scores.csv", "input photos/").
    suffixes: for a folder, the file suffixes (lower case) it reads or writes
    there; None: any file in its tree.
    """
    name: str
    path: str | os.PathLike
    folder: bool = False
    suffixes: frozenset[str] | None = None

    def resolved(self) -> pathlib.Path:
        return pathlib.Path(os.path.realpath(os.path.expanduser(os.fsdecode(self.path))))


def _shown(place: Place) -> str:
    """Its name, and where a link leads when it leads elsewhere."""
    resolved = place.resolved()
    if resolved != pathlib.Path(os.path.abspath(os.fsdecode(place.path))):
        return f"{place.name} (a link to {resolved})"
    return place.name


def _inside(inner: pathlib.Path, outer: pathlib.Path) -> bool:
    return inner == outer or outer in inner.parents


def _file_keys(place: Place) -> list:
    """Its resolved path, and (device, inode) if it exists: hard links too."""
    keys: list = [place.resolved()]
    with contextlib.suppress(OSError):
        info = os.stat(place.path)
        keys.append((info.st_dev, info.st_ino))
    return keys


def clash(a: Place, b: Place) -> str | None:
    """Why writing `a` could touch `b` (or the reverse), or None."""
    path_a, path_b = a.resolved(), b.resolved()
    if not a.folder and not b.folder:
        same = set(_file_keys(a)) & set(_file_keys(b))
        return f"{_shown(a)} and {_shown(b)} are the same file" if same else None
    if a.folder and b.folder:
        if _inside(path_a, path_b) or _inside(path_b, path_a):
            return f"{_shown(a)} and {_shown(b)} overlap"
        return None
    file, folder = (a, b) if b.folder else (b, a)
    path_file, path_folder = (path_a, path_b) if b.folder else (path_b, path_a)
    if _inside(path_file, path_folder) and (
            folder.suffixes is None or path_file.suffix.lower() in folder.suffixes):
        return f"{_shown(file)} lies inside {_shown(folder)}"
    return None


def check_no_clash(inputs: Iterable[Place], outputs: Iterable[Place]) -> None:
    """Raises errors.UsageError if an output could touch an input or another output.

    Files are matched through an index, so a dataset of many thousand input
    files costs one stat each.
    """
    files: dict = {}  # A key of _file_keys -> the first file with it.
    folders: list[Place] = []
    written: list[Place] = []
    for place in inputs:
        if place.folder:
            folders.append(place)
        else:
            for key in _file_keys(place):
                files.setdefault(key, place)
    for output in outputs:
        if is_stream(output.path):
            continue
        if output.folder:
            candidates = folders + list(dict.fromkeys(files.values()))
        else:
            candidates = folders + [files[key] for key in _file_keys(output)
                                    if key in files][:1]
        for other in candidates:  # Named in the order the user gave them.
            reason = clash(other, output) if other in written else clash(output, other)
            if reason:
                raise errors.UsageError(
                    f"{reason}: a command never writes onto what it reads or onto "
                    "another of its outputs; choose another output path")
        written.append(output)
        if output.folder:
            folders.append(output)
        else:
            for key in _file_keys(output):
                files.setdefault(key, output)


def is_stream(path) -> bool:
    """Whether `path` is a device, pipe or socket (/dev/null, /dev/stdout, a
    FIFO): written in place, never replaced, and never a clash."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing_path(path) -> Iterator[str]:
    """A temporary path beside `path` (same suffix) to write to; renamed to
    `path` when the block ends normally, else removed. A stream (`is_stream`)
    is given as itself.

    A write refused for lack of space is raised as errors.RunFailure naming
    `path`.
    """
    if is_stream(path):
        yield os.fspath(path)
        return
    # Through a link to the file it names, as open() writes; its mode kept.
    path = pathlib.Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()  # As open() would make it.
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.",
                                             suffix=PARTIAL_SUFFIX + path.suffix,
                                             dir=path.parent)
    except OSError as error:  # Named by the target, not the temporary name.
        raise (errors.disk_full(error, path)
               or type(error)(error.errno, error.strerror, os.fspath(path))) from error
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        failure = errors.disk_full(error, path)
        if failure is not None:
            raise failure from error
        raise


@contextlib.contextmanager
def replacing(path, mode: str = "w", **open_args) -> Iterator:
    """open(`path`, mode, ...) written as `replacing_path` says: the file
    appears only complete. On an object store (gs://...) an object appears
    only once its upload completes, so it is written in place."""
    if "://" in os.fspath(path):
        with epath.Path(os.fspath(path)).open(mode, **open_args) as file:
            yield file
        return
    with replacing_path(path) as temporary:
        with open(temporary, mode, **open_args) as file:
            yield file


def write_bytes(path, data: bytes) -> None:
    """`path` holds `data`, complete or not at all."""
    with replacing(path, "wb") as file:
        file.write(data)


def npz_bytes(arrays: dict) -> bytes:
    """`arrays` as an .npz file's bytes, built in memory: zipfile seeks, which
    an object store's writer cannot."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_npz(path, arrays: dict) -> None:
    """`path` holds the .npz of `arrays` (plain arrays, no pickle), complete or not at all."""
    write_bytes(path, npz_bytes(arrays))


def write_text(path, text: str) -> None:
    """`path` holds `text` (UTF-8), complete or not at all."""
    with replacing(path, encoding="utf-8") as file:
        file.write(text)
