"""One file over HTTP(S) into a cache, resumable and checked; no third-party code.

A transfer writes NAME.part beside NAME and renames it only when whole (and
its SHA-256, where one is published, matches); an interrupted one is taken up
where it stopped with an HTTP Range request. The server may ignore the range
(a 200 answer): the part is then started again.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import socket
import urllib.error
import urllib.parse
import urllib.request

CHUNK = 1 << 20
TIMEOUT_S = 60


class FetchError(OSError):
    """A file that could not be fetched or checked; the message names it and what to do."""


class Unreachable(FetchError):
    """The server could not be reached at all (no network, a server that is down)."""


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _part(dest: pathlib.Path) -> pathlib.Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, start: int):
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the part already holds the whole file
            return None
        raise FetchError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise Unreachable(f"{urllib.parse.urlsplit(url).netloc}: cannot be reached "
                          f"({reason})") from None


def _transfer(url: str, part: pathlib.Path) -> None:
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start)
    if response is None:
        return
    with response:
        resumed = start and response.status == 206
        with open(part, "ab" if resumed else "wb") as file:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    file.write(block)
                # http.client ends a body cut short as if it were whole; what
                # Content-Length announced and never came is left in `length`.
                stopped = bool(response.length)
            except (http.client.IncompleteRead, socket.timeout, ConnectionError) as error:
                stopped = type(error).__name__
            if stopped:
                raise FetchError(f"{url}: the transfer stopped after {file.tell()} bytes"
                                 f"{'' if stopped is True else f' ({stopped})'}; "
                                 "run again to resume")


def fetch(url: str, dest, *, expected_sha256: str | None = None) -> pathlib.Path:
    """`dest`, fetched from `url` unless it is there already (and checked).

    Raises Unreachable when the server cannot be reached, FetchError when the
    transfer stops (the part is kept: the next call resumes it) or the
    SHA-256 differs from `expected_sha256` (the part is removed).
    """
    dest = pathlib.Path(dest)
    if dest.is_file() and (expected_sha256 is None or sha256(dest) == expected_sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(dest)
    _transfer(url, part)
    if expected_sha256 is not None:
        got = sha256(part)
        if got != expected_sha256:
            part.unlink()
            raise FetchError(f"{url}: SHA-256 {got} is not the published {expected_sha256}; "
                             "the download was removed")
    os.replace(part, dest)
    return dest
