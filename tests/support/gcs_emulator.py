"""A Cloud Storage emulator on 127.0.0.1 that every gs:// client here reaches.

    python tests/support/gcs_emulator.py FOLDER     # prints one JSON line, then serves

Starts `gcp-storage-emulator` (PyPI, pure Python, in memory, bucket
`bucket`) and a front on another loopback port that the clients talk to:

- tensorstore (Orbax's array data) is pointed at the front by
  `TENSORSTORE_GCS_HTTP_URL`;
- TensorFlow's file layer (`tf.io.gfile`, where TensorFlow is installed:
  etils.epath and so TensorBoard events, Orbax's metadata, the FSIM cache,
  the export's JSON) has its Cloud Storage hosts compiled in
  (https://www.googleapis.com, https://storage.googleapis.com) and no
  endpoint setting, but its libcurl
  honours `HTTPS_PROXY` and `CURL_CA_BUNDLE`: the front answers CONNECT,
  terminates TLS with a certificate for those two hosts signed by a CA made
  here (added to the system's in FOLDER/ca-bundle.pem), and serves the
  requests as the emulator;
- google-cloud-storage (Orbax asks it about the bucket) and gcsfs (etils.epath
  without TensorFlow) honour `STORAGE_EMULATOR_HOST`.

The front also adds what gcp-storage-emulator (2026.7.19) lacks and these
clients need: gcsfs's one-request rename (objects.move, as copy and delete),
ranged reads (`Range: bytes=a-b` gets 206 and those bytes),
the object's generation with its bytes (`x-goog-generation`, which
tensorstore's conditional writes start from), empty objects (TensorFlow's
folder markers: an empty media upload is passed on as a multipart one), and
https in the resumable-upload address it hands back. It does not add what
the emulator ignores: preconditions (`ifGenerationMatch`) are not enforced.
No request leaves 127.0.0.1: the environment printed also sends Google's
metadata-server look-ups to a closed loopback port, gives TensorFlow a fixed
test token, and exempts PyPI from the proxy (package installs go there
directly). GCS_EMULATOR_LOG=1 logs each request the front serves.

The JSON line: {"env": {...}, "emulator": "http://127.0.0.1:PORT"}. The
process serves until its standard input closes (its parent ended).
"""

import contextlib
import http.client
import http.server
import json
import os
from pathlib import Path
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator

BUCKET = "bucket"
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
NO_PROXY = "127.0.0.1,localhost,pypi.org,files.pythonhosted.org"
# Not forwarded: they describe one hop, not the request.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for GOOGLE_HOSTS signed by it;
    returns (the system's CA bundle with this CA added, host.pem, host.key)."""
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    host, host_key = folder / "host.pem", folder / "host.key"
    names = ",".join(f"DNS:{name}" for name in GOOGLE_HOSTS)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=grepq_jax test CA", "-keyout", ca_key, "-out", ca)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj",
            f"/CN={GOOGLE_HOSTS[0]}", "-keyout", host_key,
            "-out", folder / "host.csr")
    (folder / "host.ext").write_text(f"subjectAltName={names}\n")
    openssl("x509", "-req", "-in", folder / "host.csr", "-CA", ca, "-CAkey",
            ca_key, "-CAcreateserial", "-days", "2", "-out", host,
            "-extfile", folder / "host.ext")
    # CURL_CA_BUNDLE also steers pip (through requests): keep the system's
    # authorities beside ours so package installs still verify.
    bundle = folder / "ca-bundle.pem"
    bundle.write_text(system_authorities() + ca.read_text())
    return bundle, host, host_key


def system_authorities() -> str:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile,
                      paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_text()
    return ""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as (first, last) inclusive."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or size == 0:
        return None
    first, last = match.groups()
    if first == "":
        return max(size - int(last), 0), size - 1
    return int(first), min(int(last) if last else size - 1, size - 1)


def as_multipart(path: str, headers: dict) -> tuple[str, bytes]:
    """An empty `uploadType=media` upload (a folder marker) as the same
    upload in multipart form: the emulator fails on an empty media body."""
    boundary = "grepq_jax_empty_object"
    name = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["name"][0]
    headers["Content-Type"] = f"multipart/related; boundary={boundary}"
    body = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n"
        f"{json.dumps({'name': name})}\r\n--{boundary}\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
    )
    return path.replace("uploadType=media", "uploadType=multipart"), body.encode()


# gcsfs renames an object with one request (objects.move), which the
# emulator lacks: the front copies then deletes.
MOVE = re.compile(
    r"/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<source>[^?/]+)/moveTo/o/(?P<target>[^?/]+)"
)
# A JSON-API read of an object's bytes.
MEDIA = re.compile(
    r"(?:/download)?/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^?/]+)\?(?:.*&)?alt=media"
)


class Front(http.server.BaseHTTPRequestHandler):
    """Forwards each request to the emulator; CONNECT turns into TLS."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base's name)
        pass

    def do_CONNECT(self):
        """An HTTPS proxy tunnel: answer it ourselves, as that host."""
        if self.path.rsplit(":", 1)[0] not in GOOGLE_HOSTS:
            self.send_error(403, f"only {', '.join(GOOGLE_HOSTS)} are emulated")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.connection = self.server.tls.wrap_socket(
            self.connection, server_side=True
        )
        self.rfile = self.connection.makefile("rb")
        self.wfile = socketserver._SocketWriter(self.connection)
        self.close_connection = False

    def request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def forward(self):
        body = self.request_body()
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS
        }
        path = self.path
        if not body and "uploadType=media" in path:
            path, body = as_multipart(path, headers)
        move = MOVE.match(path) if self.command == "POST" else None
        try:
            if move:
                status, reason, response_headers, data = self.server.move(move)
            else:
                status, reason, response_headers, data = self.server.ask(
                    self.command, path, body, headers
                )
        except OSError as error:  # the emulator failed on this request
            self.send_error(502, f"emulator: {error}")
            return
        extra = {}
        if status == 200 and MEDIA.match(path):
            extra.update(self.server.generation_headers(MEDIA.match(path)))
        wanted = self.headers.get("Range")
        if wanted and status == 200 and self.command == "GET":
            span = byte_range(wanted, len(data))
            if span:
                first, last = span
                extra["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
                status, reason, data = 206, "Partial Content", data[first : last + 1]
        if self.server.log:
            agent = self.headers.get("User-Agent", "-").split()[0]
            print(agent, self.command, self.path, wanted, status, len(data),
                  file=sys.stderr, flush=True)
        self.reply(status, reason, [*response_headers, *extra.items()], data)

    def reply(self, status: int, reason: str, headers: list, data: bytes):
        self.send_response(status, reason)
        for key, value in headers:
            if key.lower() in HOP_HEADERS:
                continue
            if key.lower() == "location" and tls_host(value):
                value = "https://" + value[len("http://") :]
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = forward


class FrontServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, emulator: tuple[str, int], certs):
        super().__init__(("127.0.0.1", port), Front)
        self.emulator = emulator
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(certs[1], certs[2])
        self.log = bool(os.environ.get("GCS_EMULATOR_LOG"))  # each request

    def ask(self, method: str, path: str, body: bytes, headers: dict):
        """(status, reason, headers, body) of the emulator's answer."""
        upstream = http.client.HTTPConnection(*self.emulator, timeout=60)
        try:
            upstream.request(method, path, body, headers)
            response = upstream.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            upstream.close()

    def move(self, move: re.Match):
        """objects.move as copyTo and DELETE; the copy's answer (the new
        object's metadata), or the first refusal."""
        bucket = move["bucket"]
        answer = self.ask(
            "POST",
            f"/storage/v1/b/{bucket}/o/{move['source']}/copyTo/b/{bucket}/o/{move['target']}",
            b"", {},
        )
        if answer[0] != 200:
            return answer
        deleted = self.ask("DELETE", f"/storage/v1/b/{bucket}/o/{move['source']}", b"", {})
        return answer if deleted[0] in (200, 204) else deleted

    def generation_headers(self, media: re.Match) -> dict[str, str]:
        """What GCS sends with an object's bytes and the emulator does not:
        its generation (tensorstore's conditional writes need it)."""
        status, _, _, data = self.ask(
            "GET", f"/storage/v1/b/{media['bucket']}/o/{media['name']}", b"", {}
        )
        if status != 200:
            return {}
        metadata = json.loads(data)
        return {
            "x-goog-generation": metadata["generation"],
            "x-goog-metageneration": metadata["metageneration"],
        }


def tls_host(url: str) -> bool:
    return any(url.startswith(f"http://{h}/") for h in GOOGLE_HOSTS)


def client_env(front: int, ca: Path) -> dict[str, str]:
    """What a child process needs so that its gs:// goes to the emulator."""
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    return {
        "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{front}",
        "HTTPS_PROXY": f"http://127.0.0.1:{front}",
        "https_proxy": f"http://127.0.0.1:{front}",
        # Package installs (the launcher rehearsal's) go to PyPI directly.
        "NO_PROXY": NO_PROXY,
        "no_proxy": NO_PROXY,
        "CURL_CA_BUNDLE": str(ca),
        # TensorFlow's token, so it asks no metadata or OAuth server.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": closed,
        # tensorstore finds no credentials, fails fast here, goes anonymous.
        "GCE_METADATA_ROOT": closed,
        # google-cloud-storage, where installed (Orbax asks it about buckets),
        # and gcsfs (etils.epath's gs:// without TensorFlow).
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{front}",
        # gcsfs's default client also asks Cloud Storage's control plane
        # (gRPC, not emulated) for each bucket's layout; its plain client
        # needs only the JSON API.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


class Emulator:
    """A running emulator: the environment for its clients, and direct
    access to its objects (its own JSON API, none of the clients under test)."""

    def __init__(self, env: dict[str, str], url: str):
        self.env, self.url = env, url

    def names(self, prefix: str) -> list[str]:
        """Names of the objects in the bucket under `prefix`, sorted."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            with urllib.request.urlopen(
                f"{self.url}/storage/v1/b/{BUCKET}/o?{query}", timeout=60
            ) as response:
                listing = json.load(response)
            names += [item["name"] for item in listing.get("items", [])]
            token = listing.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        url = f"{self.url}/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media"
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()

    def upload(self, folder: Path, prefix: str) -> None:
        """Every file of `folder` (not recursive) to PREFIX/NAME."""
        for path in sorted(folder.iterdir()):
            name = urllib.parse.quote(f"{prefix}/{path.name}", safe="")
            request = urllib.request.Request(
                f"{self.url}/upload/storage/v1/b/{BUCKET}/o"
                f"?uploadType=media&name={name}",
                data=path.read_bytes(),
                method="POST",
            )
            urllib.request.urlopen(request, timeout=60).read()


@contextlib.contextmanager
def running(folder: Path) -> Iterator[Emulator]:
    """Starts this file as a process (its log: FOLDER/emulator.log)."""
    with open(folder / "emulator.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(
                "the emulator did not start:\n"
                + (folder / "emulator.log").read_text(errors="replace")
            )
        started = json.loads(line)
        yield Emulator(started["env"], started["emulator"])
    finally:
        process.stdin.close()  # it stops when its standard input closes
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(folder: Path) -> None:
    from gcp_storage_emulator.server import create_server

    folder.mkdir(parents=True, exist_ok=True)
    certs = make_certificates(folder)
    emulator_port = free_port()
    emulator = create_server(
        "127.0.0.1", emulator_port, in_memory=True, default_bucket=BUCKET
    )
    emulator.start()
    front = FrontServer(free_port(), ("127.0.0.1", emulator_port), certs)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    print(
        json.dumps(
            {
                "env": client_env(front.server_address[1], certs[0]),
                "emulator": f"http://127.0.0.1:{emulator_port}",
            }
        ),
        flush=True,
    )
    sys.stdin.read()  # until the parent goes
    front.shutdown()
    emulator.stop()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
