"""A local HTTP server that answers as the Hugging Face hub does, for the few endpoints huggingface_hub calls to
search, list a repository and download a file; point HF_ENDPOINT at `url`.

    GET  /api/models?search=...&filter=gguf&limit=N          search (no pagination: one page)
    GET  /api/models/{owner}/{repo}[/revision/{rev}]         model info, siblings with sizes (blobs=true)
    HEAD /{owner}/{repo}/resolve/{rev}/{path}                ETag, X-Repo-Commit, Content-Length, X-Linked-Size
    GET  the same                                            the file, with Range (206 + Content-Range)

Files are served from where they lie (the default model is not copied). ETags come from the path, size and mtime,
not the content: hashing a sparse 3 GiB file would cost seconds, and huggingface_hub only uses them as blob names.
`hold_next_download(after)` stops the next full download after `after` bytes until the returned event is set, so a
test can cancel a pull in the middle of it without timing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.gguf_files import FILE_TYPES, write_gguf
from tests.support.models import find_default_model

HOLD_LIMIT_S = 120  # a held download gives up waiting after this (a test that failed never releases it)
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_CHUNK = 1 << 20


@dataclass
class Repo:
    id: str
    files: dict[str, Path]  # path in the repository -> the file served
    tags: list[str] = field(default_factory=lambda: ["gguf"])
    downloads: int = 0

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.id.encode()).hexdigest()


class FakeHub:
    def __init__(self, repos: list[Repo]) -> None:
        self.repos = {r.id: r for r in repos}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        self._hold: tuple[int, threading.Event] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._hold is not None:
            self._hold[1].set()
        self._server.shutdown()
        self._server.server_close()

    def hold_next_download(self, after: int) -> threading.Event:
        release = threading.Event()
        with self._lock:
            self._hold = (after, release)
        return release

    def take_hold(self) -> tuple[int, threading.Event] | None:
        with self._lock:
            hold, self._hold = self._hold, None
            return hold


def _etag(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: the tests read hub.requests
            pass

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if path == "/api/models":
                return self._search(parse_qs(url.query))
            if path.startswith("/api/models/"):
                return self._info(path.removeprefix("/api/models/"))
            match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if match:
                return self._file(match[1], match[3], body=body)
            self._json(404, {"error": "not found"})

        def _search(self, query: dict[str, list[str]]) -> None:
            words = query.get("search", [""])[0].lower()
            wanted = query.get("filter", [])
            limit = int(query.get("limit", ["1000"])[0])
            hits = [r for r in hub.repos.values() if words in r.id.lower() and all(t in r.tags for t in wanted)]
            hits.sort(key=lambda r: -r.downloads)
            self._json(200, [{"id": r.id, "downloads": r.downloads, "likes": 0, "tags": r.tags,
                              "lastModified": "2025-01-01T00:00:00.000Z"} for r in hits[:limit]])

        def _info(self, rest: str) -> None:
            repo_id = "/".join(rest.split("/")[:2])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            siblings = [{"rfilename": name, "size": file.stat().st_size, "blobId": _etag(file)}
                        for name, file in sorted(repo.files.items())]
            self._json(200, {"id": repo.id, "sha": repo.sha, "tags": repo.tags, "siblings": siblings,
                             "lastModified": "2025-01-01T00:00:00.000Z"})

        def _file(self, repo_id: str, name: str, *, body: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            file = repo.files.get(name)
            if file is None:
                return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            size = file.stat().st_size
            start, end, status = 0, size, 200
            asked = self.headers.get("Range")
            if asked:
                match = _RANGE.fullmatch(asked.strip())
                if match is None or int(match[1]) >= size:
                    return self._json(416, {"error": "bad range"}, {"Content-Range": f"bytes */{size}"})
                start, status = int(match[1]), 206
                end = min(size, int(match[2]) + 1) if match[2] else size
            etag = _etag(file)
            self.send_response(status)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("X-Linked-Size", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if body:
                self._send(file, start, end, hold=hub.take_hold() if end - start == size else None)

        def _send(self, file: Path, start: int, end: int, hold: tuple[int, threading.Event] | None) -> None:
            sent = 0
            try:
                with open(file, "rb") as f:
                    f.seek(start)
                    while start + sent < end:
                        if hold is not None and sent >= hold[0]:
                            hold[1].wait(HOLD_LIMIT_S)
                            hold = None
                        chunk = f.read(min(_CHUNK, end - start - sent))
                        self.wfile.write(chunk)
                        sent += len(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: a cancelled pull
                self.close_connection = True

        def _json(self, status: int, value: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, val in (headers or {}).items():
                self.send_header(key, val)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


SMOL = "test/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"
BIG = "big/Big-Q8_0-00001-of-00002.gguf"
VISION = "test/Tiny-Vision-GGUF"
NOT_GGUF = "test/not-gguf"
BIG_PART_BYTES = 3 << 29  # 1.5 GiB each, sparse: never downloaded, only its header is read


def hub_repos(tmp: Path) -> list[Repo]:
    """The default model with a big split model beside it, a tiny model with two projectors, a repo without GGUF."""
    big = [write_gguf(tmp / f"Big-Q8_0-0000{no + 1}-of-00002.gguf", name="Big", file_type=FILE_TYPES["Q8_0"],
                      split=(no, 2)) for no in range(2)]
    for part in big:
        os.truncate(part, BIG_PART_BYTES)  # the reader checks tensor data fits the file: a bigger file is fine
    readme = tmp / "README.md"
    readme.write_text("# A model card\n")
    tiny = write_gguf(tmp / "Tiny-Q8_0.gguf", name="Tiny", file_type=FILE_TYPES["Q8_0"])
    projectors = [write_gguf(tmp / f"mmproj-Tiny-{kind}.gguf", arch="clip", name="Tiny projector",
                             n_tensors=n) for kind, n in (("f16", 2), ("f32", 4))]
    weights = tmp / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    return [
        Repo(SMOL, {SMOL_FILE: find_default_model(), BIG: big[0], BIG.replace("00001-of", "00002-of"): big[1],
                    "README.md": readme}, downloads=10),
        Repo(VISION, {"Tiny-Q8_0.gguf": tiny, **{p.name: p for p in projectors}}, downloads=5),
        Repo(NOT_GGUF, {"model.safetensors": weights, "README.md": readme}, tags=["safetensors"]),
    ]
