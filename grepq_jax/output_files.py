"""A command's outputs: never written onto an input or another output, never
left half-written.

`check_no_clash` compares the resolved paths (links followed) of what a
command reads and writes before it starts; `replacing` writes a file under a
temporary name beside its target and renames it into place only once the
file is complete, so a failure or an interrupt leaves the target as it was.
"""
import contextlib
import dataclasses
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator

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


def _same_file(a: Place, b: Place) -> bool:
    if a.resolved() == b.resolved():
        return True
    try:  # Hard links: two names, one file.
        return os.path.samefile(a.path, b.path)
    except OSError:
        return False


def clash(a: Place, b: Place) -> str | None:
    """Why writing `a` could touch `b` (or the reverse), or None."""
    path_a, path_b = a.resolved(), b.resolved()
    if not a.folder and not b.folder:
        return f"{_shown(a)} and {_shown(b)} are the same file" if _same_file(a, b) else None
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
    """Raises errors.UsageError if an output could touch an input or another output."""
    inputs, outputs = list(inputs), list(outputs)
    for i, output in enumerate(outputs):
        for other in inputs + outputs[i + 1:]:
            reason = clash(output, other)
            if reason:
                raise errors.UsageError(
                    f"{reason}: a command never writes onto what it reads or onto "
                    "another of its outputs; choose another output path")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing_path(path) -> Iterator[str]:
    """A temporary path beside `path` (same suffix) to write to; renamed to
    `path` when the block ends normally, else removed.

    A write refused for lack of space is raised as errors.RunFailure naming
    `path`.
    """
    path = pathlib.Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.",
                                         suffix=PARTIAL_SUFFIX + path.suffix,
                                         dir=path.parent)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # As open() would have made it.
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
    appears only complete."""
    with replacing_path(path) as temporary:
        with open(temporary, mode, **open_args) as file:
            yield file


def write_text(path, text: str) -> None:
    """`path` holds `text` (UTF-8), complete or not at all."""
    with replacing(path, encoding="utf-8") as file:
        file.write(text)
