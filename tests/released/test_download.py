"""Fetching the released files (grepq_jax.released.fetch, downloads, download).

Served from a local HTTP server on 127.0.0.1 that honours Range requests
and can cut a transfer short, as a dropped connection does; a "down" server
is a port nobody listens on. Google Drive itself (through gdown) cannot be
reached from the tests.
"""
import hashlib
import http.server
import importlib.util
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from grepq_jax.commands import cli, download
from grepq_jax.scoring import api
from grepq_jax import errors
from grepq_jax.released import fetch, downloads
from grepq_jax.formats import model_cache

_FIXTURES = Path(__file__).parents[1] / "fixtures"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and server.honour_ranges:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = server.cut_after.pop(self.path, None)
        self.wfile.write(body[start:start + cut] if cut is not None else body[start:])
        if cut is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut_after, httpd.requests, httpd.honour_ranges = {}, {}, [], True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/RN50.pt"  # closed: nobody listens there


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_interrupted_transfer_resumes_where_it_stopped(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = np.random.RandomState(0).bytes(3_000_000)
    server.files["/RN50.pt"] = body
    server.cut_after["/RN50.pt"] = 1_000_000
    with pytest.raises(fetch.FetchError, match="the transfer stopped after 1000000 bytes.*"
                       "run again to resume"):
        fetch.fetch(f"{server.url}/RN50.pt", "cache/RN50.pt", expected_sha256=_sha(body))
    assert Path("cache/RN50.pt.part").stat().st_size == 1_000_000
    assert not Path("cache/RN50.pt").exists()
    fetch.fetch(f"{server.url}/RN50.pt", "cache/RN50.pt", expected_sha256=_sha(body))
    assert Path("cache/RN50.pt").read_bytes() == body
    assert not Path("cache/RN50.pt.part").exists()
    assert server.requests == [("/RN50.pt", None), ("/RN50.pt", "bytes=1000000-")]
    # Fetched and checked: a third call does not ask the server.
    fetch.fetch(f"{server.url}/RN50.pt", "cache/RN50.pt", expected_sha256=_sha(body))
    assert len(server.requests) == 2


def test_a_server_that_ignores_ranges_gets_the_whole_file_again(server, tmp_path):
    body = b"0123456789" * 1000
    server.files["/f"], server.honour_ranges = body, False
    (tmp_path / "f.part").write_bytes(body[:4000])
    fetch.fetch(f"{server.url}/f", tmp_path / "f", expected_sha256=_sha(body))
    assert (tmp_path / "f").read_bytes() == body


def test_a_checksum_mismatch_keeps_nothing(server, tmp_path):
    body = b"not OpenAI's file"
    server.files["/RN50.pt"] = body
    with pytest.raises(fetch.FetchError, match=f"SHA-256 {_sha(body)} is not the published "
                       f"{'0' * 64}; the download was removed"):
        fetch.fetch(f"{server.url}/RN50.pt", tmp_path / "RN50.pt", expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_is_down_is_unreachable(tmp_path):
    with pytest.raises(fetch.Unreachable, match="^127.0.0.1:[0-9]+: cannot be reached"):
        fetch.fetch(_dead_url(), tmp_path / "RN50.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_on_the_server_is_named(server, tmp_path):
    with pytest.raises(fetch.FetchError, match="/nothing: HTTP 404"):
        fetch.fetch(f"{server.url}/nothing", tmp_path / "x")


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GREPQ_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert model_cache.cache_home() == tmp_path / "home" / ".cache" / "grepq_jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache.cache_home() == tmp_path / "xdg" / "grepq_jax"
    monkeypatch.setenv("GREPQ_HOME", str(tmp_path / "grepq"))
    assert model_cache.model_folder() == tmp_path / "grepq" / "models" / "grepq"


def test_without_a_network_the_command_says_what_to_do_by_hand(tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(downloads, "RN50_URL", _dead_url())
    assert download.main(cli.parse(download.FLAGS, ["download", "--cache=cache"])) == 1
    lines = capsys.readouterr().err.splitlines()
    files, model = tmp_path / "cache" / "files", tmp_path / "cache" / "models" / "grepq"
    assert len(lines) == 1, lines
    assert lines[0].startswith("download failed: 127.0.0.1:")
    assert f"{downloads.LOW_LEVEL}, {downloads.HIGH_LEVEL} and " in lines[0]
    assert f"into {files}/; then run grepq download again, or: grepq convert " in lines[0]
    assert (f"--grepq_low_level={files / downloads.LOW_LEVEL} " in lines[0]
            and f"--clip={files / 'RN50.pt'} " in lines[0] and lines[0].endswith(f"--out={model}"))
    assert not model.exists()


def _released_reference():
    spec = importlib.util.spec_from_file_location(
        "make_released_reference", _FIXTURES / "make_released_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_download_fetches_converts_and_scores_as_the_original(server, tmp_path, monkeypatch):
    """Files written by torch as the released ones are (full size), served over HTTP."""
    pytest.importorskip("torch")
    reference = _released_reference()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "served").mkdir()
    reference.write_released_files(tmp_path / "served")
    names = {"RN50.pt": "RN50_state_dict.pt",
             **{name: name for name in (downloads.LOW_LEVEL,
                                        downloads.HIGH_LEVEL,
                                        downloads.PATCHES)}}
    for name, source in names.items():
        server.files[f"/{name}"] = (tmp_path / "served" / source).read_bytes()
    server.cut_after[f"/{downloads.HIGH_LEVEL}"] = 100_000
    urls = {name: f"{server.url}/{name}" for name in names if name != "RN50.pt"}
    arguments = dict(rn50_url=f"{server.url}/RN50.pt",
                     rn50_sha256=_sha(server.files["/RN50.pt"]), grepq_urls=urls)
    with pytest.raises(fetch.FetchError, match="run again to resume"):
        downloads.download_released("cache", **arguments)
    model = downloads.download_released("cache", **arguments)
    assert model == Path("cache/models/grepq")
    stored = np.load(_FIXTURES / "released_reference.npz")
    results = list(api.create_scorer(model).score_many(
        [str(p) for p in reference.test_files(tmp_path)]))
    for ours, theirs in (("low_level", "ll"), ("high_level", "hl"), ("combined", "combined")):
        np.testing.assert_allclose([r.parts[ours] for r in results], stored[theirs],
                                   rtol=0, atol=1e-4, err_msg=ours)
    requests = len(server.requests)
    assert downloads.download_released("cache", **arguments) == model
    assert len(server.requests) == requests  # there already: nothing fetched



class _FakeGdown:
    """Stands in for gdown (tested upstream, and Drive is out of reach): writes what
    the authors' folder holds, in a subfolder, and records how it was called."""

    def __init__(self, names):
        self.names, self.calls = names, []

    def download_folder(self, *, id, output, **options):
        self.calls.append((id, options))
        for name in self.names:
            path = Path(output, "GRepQ", name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode())


def test_the_drive_files_are_taken_from_wherever_the_folder_keeps_them(
        server, tmp_path, monkeypatch):
    body = b"RN50"
    server.files["/RN50.pt"] = body
    names = (downloads.LOW_LEVEL, downloads.HIGH_LEVEL,
             downloads.PATCHES)
    fake = _FakeGdown(names)
    monkeypatch.setitem(sys.modules, "gdown", fake)
    folder = downloads.fetch_released_files(
        tmp_path, rn50_url=f"{server.url}/RN50.pt", rn50_sha256=_sha(body))
    assert fake.calls == [(downloads.DRIVE_FOLDER_ID,
                           {"quiet": False, "resume": True, "timeout": fetch.TIMEOUT_S,
                            "retries": 2})]
    assert all((folder / name).read_bytes() == name.encode() for name in names)
    # There already: Drive is not asked again.
    downloads.fetch_released_files(
        tmp_path, rn50_url=f"{server.url}/RN50.pt", rn50_sha256=_sha(body))
    assert len(fake.calls) == 1


def test_a_drive_folder_without_a_file_names_it(server, tmp_path, monkeypatch):
    server.files["/RN50.pt"] = b"RN50"
    monkeypatch.setitem(sys.modules, "gdown", _FakeGdown((downloads.LOW_LEVEL,)))
    with pytest.raises(fetch.FetchError, match=f"did not hold {downloads.HIGH_LEVEL}, "
                       f"{downloads.PATCHES}"):
        downloads.fetch_released_files(
            tmp_path, rn50_url=f"{server.url}/RN50.pt", rn50_sha256=_sha(b"RN50"))


def test_the_name_grepq_stands_for_the_cached_model_once_it_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("GREPQ_HOME", "cache")  # relative, as users may set it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.UsageError, match="run `grepq download` first"):
        model_cache.resolve("grepq")
    Path("cache/models/grepq").mkdir(parents=True)
    Path("cache/models/grepq/model.json").write_text("{}")
    assert model_cache.resolve("grepq") == str(Path("cache/models/grepq"))
    assert model_cache.resolve("other") == "other"  # not a name: a path, as given
    Path("grepq").mkdir()  # a folder of that name here wins over the cache
    assert model_cache.resolve("grepq") == "grepq"