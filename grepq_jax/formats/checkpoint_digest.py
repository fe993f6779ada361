"""A digest of every file of a saved checkpoint step, to trust it when read.

Orbax 0.12.8 checks no checksum of the arrays it restores: its only crc32c
covers a zarr3 shard's index (`orbax/checkpoint/_src/serialization/
tensorstore_utils.py:626`, and the default format is zarr2), so bytes
overwritten in a data file restore as wrong numbers without an error. Each
step's files are therefore listed here with their size and SHA-256, in
`grepq_digest.json` inside the step folder, written (atomically: temporary
file, then rename) once Orbax has finished the step's files and before it
writes the commit marker; a committed step always has its digest.
"""

import hashlib
import json
from typing import Iterator

from etils import epath

DIGEST_FILE = "grepq_digest.json"
# Written or updated (the commit time) after the digest; not the data.
_NOT_HASHED = {DIGEST_FILE, "commit_success.txt", "_CHECKPOINT_METADATA"}
_CHUNK = 1 << 20


def _files(folder: epath.Path, prefix: str = "") -> Iterator[tuple[str, epath.Path]]:
    """(relative path, path) of every file under `folder`, sorted."""
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        relative = f"{prefix}{path.name}"
        if path.is_dir():
            yield from _files(path, relative + "/")
        elif relative not in _NOT_HASHED:
            yield relative, path


def _size_and_hash(path: epath.Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_digest(folder: epath.Path) -> None:
    """Writes the digest of the files now in `folder`."""
    files = {}
    for relative, path in _files(folder):
        size, sha256 = _size_and_hash(path)
        files[relative] = {"bytes": size, "sha256": sha256}
    temporary = folder / f".{DIGEST_FILE}.tmp"
    temporary.write_text(json.dumps({"files": files}, indent=1))
    temporary.replace(folder / DIGEST_FILE)


def damage(folder: epath.Path) -> str | None:
    """What in `folder` differs from its digest (the first file found), or
    None when every file listed is there, whole and unchanged."""
    try:
        files = json.loads((folder / DIGEST_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {DIGEST_FILE}, so its data cannot be verified"
    except (ValueError, KeyError, TypeError) as error:
        return f"its {DIGEST_FILE} is unreadable ({type(error).__name__})"
    for relative, expected in files.items():
        path = folder / relative
        if not path.exists():
            return f"{relative} is missing"
        size, sha256 = _size_and_hash(path)
        if size != expected["bytes"]:
            return f"{relative} has {size} bytes, {expected['bytes']} when saved"
        if sha256 != expected["sha256"]:
            return f"{relative} differs from its digest (bytes overwritten)"
    return None
