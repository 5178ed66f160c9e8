"""The Hugging Face hub as a source of models: search GGUF repositories, list a repository's GGUF files (split
parts as one model, mmproj projectors apart), read a file's header with range requests, download into the cache.

Every function here blocks on the network or the disk: callers run them in a thread. huggingface_hub does the
talking, so HF_ENDPOINT, HF_TOKEN and proxies apply as they do to every tool using the hub; the cache is the one
the scan reads (hf_cache_dir, resolved now), so a download is found by the scan under the same id.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
from huggingface_hub.utils import tqdm as hf_tqdm

from app.core.catalog.discovery.files import SPLIT_NAME, file_model_name, is_gguf_name
from app.core.catalog.discovery.found import FoundModel, ScanResult
from app.core.catalog.discovery.hf_cache import hf_cache_dir
from app.core.catalog.discovery.scan import scan
from app.core.catalog.gguf.header import GGUFError, GGUFHeader
from app.core.catalog.gguf.reader import parse
from app.core.catalog.gguf.window import READ_AHEAD, Window, scratch
from app.core.errors import HubUnavailable, InvalidRequest, ModelNotFound, ModelUnavailable

MAX_RESULTS = 100
# The first range read: the whole header of most models (a 150k-token vocabulary takes a few MiB).
FIRST_HEADER_BYTES = 2 << 20
# The reader's own cap on kept metadata; a header that needs more is not a model's.
MAX_HEADER_BYTES = 64 << 20
MAX_FILE_BYTES = 1 << 42  # 4 TiB: no GGUF file is larger; a listing claiming more is wrong
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")
_QUANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TIMEOUT_S = 30.0


class PullCancelled(Exception):
    """The download was cancelled; huggingface_hub has removed its partial file."""


@dataclass(frozen=True, slots=True)
class RepoHit:
    """One search result."""

    id: str
    downloads: int | None
    likes: int | None
    last_modified: str | None
    tags: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "downloads": self.downloads, "likes": self.likes,
                "last_modified": self.last_modified, "tags": self.tags}


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """One model of a repository (its split parts in order, or the single file), or one projector."""

    stem: str  # part 1's file name without the split suffix and ".gguf"
    files: tuple[str, ...]  # paths in the repository, part 1 first
    sizes: tuple[int, ...]
    quant: str | None  # as the file name says, lower case ("q4_k_m"); None when it says none

    @property
    def size(self) -> int:
        return sum(self.sizes)


@dataclass(slots=True)
class RepoListing:
    repo_id: str
    commit: str | None
    models: list[RemoteModel] = field(default_factory=list)
    projectors: list[RemoteModel] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # split models with parts missing: never offered


def parse_spec(spec: str, param: str = "model") -> tuple[str, str | None]:
    """"owner/repo[:quant]" -> (repo, quant in lower case or None); InvalidRequest (naming `param`) when it is not."""
    repo, _, quant = spec.strip().partition(":")
    if not _REPO_ID.fullmatch(repo) or ".." in repo or (quant and not _QUANT.fullmatch(quant)):
        raise InvalidRequest(f"'{spec}' is not a Hugging Face model: expected owner/repo or owner/repo:quant",
                             param=param)
    return repo, quant.lower() or None


def search(query: str, limit: int = 20, *, endpoint: str | None = None) -> list[RepoHit]:
    """GGUF repositories matching `query`, most downloaded first."""
    limit = max(1, min(limit, MAX_RESULTS))
    with _hub_errors(query):
        found = HfApi(endpoint=endpoint).list_models(search=query, filter="gguf", sort="downloads", limit=limit)
        return [RepoHit(m.id, _count(m.downloads), _count(m.likes),
                        m.last_modified.isoformat() if m.last_modified else None,
                        [str(t) for t in (m.tags or [])][:32]) for m in found]


def list_repo(repo_id: str, *, endpoint: str | None = None) -> RepoListing:
    """The repository's GGUF files with their sizes; ModelNotFound / InvalidRequest (no GGUF file in it)."""
    with _hub_errors(repo_id):
        info = HfApi(endpoint=endpoint).model_info(repo_id, files_metadata=True, timeout=TIMEOUT_S)
    files = [(s.rfilename, s.size) for s in info.siblings or () if is_gguf_name(s.rfilename)]
    if not files:
        raise InvalidRequest(f"The repository '{repo_id}' has no GGUF files", param="model", code="not_gguf")
    return group_listing(info.id or repo_id, info.sha, files)


def group_listing(repo_id: str, commit: str | None, files: Iterable[tuple[str, Any]]) -> RepoListing:
    """Split parts as one model, projectors apart, as discovery groups files on disk (but by name: no headers)."""
    listing = RepoListing(repo_id, commit)
    splits: dict[tuple[str, str, int], dict[int, tuple[str, int]]] = {}
    for path, size in sorted(files):
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_FILE_BYTES:
            raise ModelUnavailable(f"The hub gave no valid size for '{repo_id}/{path}' ({size!r})")
        name = os.path.basename(path)
        match = SPLIT_NAME.fullmatch(name)
        if match and int(match["count"]) > 1:
            key = (os.path.dirname(path), match["base"], int(match["count"]))
            splits.setdefault(key, {})[int(match["no"])] = (path, size)
            continue
        stem = name[:-5]
        model = RemoteModel(stem, (path,), (size,), _name_quant(stem))
        (listing.projectors if "mmproj" in name.lower() else listing.models).append(model)
    for (_dir, base, count), parts in splits.items():
        if sorted(parts) != list(range(1, count + 1)):
            listing.incomplete.append(base)
            continue
        ordered = [parts[no] for no in range(1, count + 1)]
        listing.models.append(RemoteModel(base, tuple(p for p, _ in ordered), tuple(s for _, s in ordered),
                                          _name_quant(base)))
    listing.models.sort(key=lambda m: m.files[0])
    return listing


def choose(listing: RepoListing, quant: str | None) -> RemoteModel:
    """The model asked for: by quantization or file stem; without one, Q4_K_M as llama.cpp's -hf, else the smallest."""
    if not listing.models:
        raise InvalidRequest(f"The repository '{listing.repo_id}' has no GGUF model file (only projectors)",
                             param="model", code="not_gguf")
    if quant is None:
        preferred = [m for m in listing.models if m.quant == "q4_k_m"]
        return (preferred or sorted(listing.models, key=lambda m: (m.size, m.files[0])))[0]
    matches = [m for m in listing.models if quant in (m.quant, m.stem.lower())]
    if len(matches) != 1:
        offered = ", ".join(sorted({m.quant or m.stem.lower() for m in listing.models}))
        why = "several files match" if matches else "no file has"
        raise ModelNotFound(f"In '{listing.repo_id}' {why} the quantization '{quant}'; it offers: {offered}",
                            param="model", code="quant_not_found")
    return matches[0]


def read_header(repo_id: str, model: RemoteModel, *, revision: str | None = None,
                endpoint: str | None = None) -> GGUFHeader:
    """Part 1's header, read with range requests for its first bytes only; GGUFError when it is not a model's."""
    url = hf_hub_url(repo_id, model.files[0], revision=revision, endpoint=endpoint)

    def fetch(start: int, end: int) -> bytes:
        return fetch_range(url, start, end, model.sizes[0])

    return header_from_prefix(fetch, model.sizes[0], f"{repo_id}/{model.files[0]}")


def fetch_range(url: str, start: int, end: int, total: int) -> bytes:
    """Bytes [start, end) of a file of `total` bytes; every length the server sends is checked."""
    headers = {**build_hf_headers(), "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    try:
        with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=TIMEOUT_S) as response:
            if response.status_code >= 400:
                response.read()  # the error's message is in the (small) body
                hf_raise_for_status(response)
            if response.status_code == 206:
                expected = f"bytes {start}-{end - 1}/{total}"
                if response.headers.get("content-range", "").strip() != expected:
                    raise GGUFError(f"the hub answered a range request with "
                                    f"{response.headers.get('content-range')!r}, not {expected!r}")
            elif not (response.status_code == 200 and start == 0 and end == total):
                raise GGUFError(f"the hub does not serve byte ranges (HTTP {response.status_code})")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > end - start:
                    raise GGUFError(f"the hub sent more than the {end - start} bytes asked for")
    except HfHubHTTPError as exc:
        raise GGUFError(f"the hub refused the header: {exc}") from None
    except httpx2.HTTPError as exc:
        raise GGUFError(f"cannot read the header from the hub: {exc}") from None
    if len(data) != end - start:
        raise GGUFError(f"the hub sent {len(data)} bytes of the {end - start} asked for")
    return bytes(data)


class _Prefix(Window):
    """A window on the first bytes of a longer file, remembering how far the parser wanted to read."""

    __slots__ = ("reached",)

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(fd, size, scratch())
        self.reached = 0

    def fill(self, pos: int, n: int, ahead: int = READ_AHEAD) -> None:
        self.reached = max(self.reached, pos + n)
        super().fill(pos, n, ahead)


def header_from_prefix(fetch: Callable[[int, int], bytes], total: int, name: str) -> GGUFHeader:
    """Parse a header of a `total`-byte file from its first bytes, fetched (`fetch(start, end)`) as the parser needs
    them: the defensive reader sees the file's real size, and a read past the bytes held means fetch more."""
    if not 0 < total <= MAX_FILE_BYTES:
        raise GGUFError(f"invalid file size {total}")
    with tempfile.TemporaryFile() as held:
        have, want = 0, min(total, FIRST_HEADER_BYTES)
        while True:
            held.write(fetch(have, want))
            held.flush()
            have = want
            window = _Prefix(held.fileno(), total)
            try:
                return parse(window, name)
            except GGUFError:
                if window.reached <= have or have >= min(total, MAX_HEADER_BYTES):
                    raise
                want = min(total, MAX_HEADER_BYTES, max(have * 4, window.reached + FIRST_HEADER_BYTES))


def _reporter(on_bytes: Callable[[int], None], cancelled: threading.Event) -> type[hf_tqdm]:
    """A progress bar class for hf_hub_download that shows nothing: it passes each chunk's length on, and stops the
    download by raising from the next chunk once cancelled."""

    class Reporter(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n: float | None = 1) -> bool | None:
            if cancelled.is_set():
                raise PullCancelled()
            on_bytes(int(n or 0))
            return None

    return Reporter


def download(repo_id: str, files: Sequence[tuple[str, int]], *, on_bytes: Callable[[int], None],
             cancelled: threading.Event, revision: str | None = None, endpoint: str | None = None) -> list[str]:
    """Download `files` (path, size) into the HF cache; their local paths. A file already there counts at once."""
    paths: list[str] = []
    for path, size in files:
        if cancelled.is_set():
            raise PullCancelled()
        seen = 0

        def count(n: int) -> None:
            nonlocal seen
            seen += n
            on_bytes(n)

        with _hub_errors(f"{repo_id}/{path}"):
            local = hf_hub_download(repo_id, path, revision=revision, cache_dir=hf_cache_dir(), endpoint=endpoint,
                                    tqdm_class=_reporter(count, cancelled))
        if size - seen:
            on_bytes(size - seen)
        paths.append(str(local))
    return paths


def cached_models(repo_id: str) -> ScanResult:
    """The repository's models in the HF cache, named as a full scan names them (so its ids stay the same)."""
    folder = os.path.join(hf_cache_dir(), repo_folder_name(repo_id=repo_id, repo_type="model")) + os.sep
    result = scan(sources=("hf",), check_architectures=True)
    return ScanResult([m for m in result.models if m.path.startswith(folder)],
                      [p for p in result.problems if p.path.startswith(folder)])


def as_found(repo_id: str, model: RemoteModel, header: GGUFHeader) -> FoundModel:
    """The model as a scan would find it once downloaded (for its memory estimate before it is)."""
    return FoundModel(name=repo_id.lower(), tag=(header.quantization or "gguf").lower(), source="hf",
                      path=header.path, header=header, parts=list(model.files), size=model.size,
                      display_name=header.name or repo_id)


def _name_quant(stem: str) -> str | None:
    base = file_model_name(stem)
    return stem.lower()[len(base):].lstrip("-._") or None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@contextlib.contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    """huggingface_hub's errors as the core's: what a client got wrong, or the hub being unreachable."""
    try:
        yield
    except GatedRepoError:  # before its base class, RepositoryNotFoundError
        raise InvalidRequest(f"'{what}' is gated: accept its terms on the hub and set HF_TOKEN", param="model",
                             code="gated_repo") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError):
        raise ModelNotFound(f"The hub has no model repository '{what}'", param="model",
                            code="repo_not_found") from None
    except EntryNotFoundError:
        raise ModelNotFound(f"The hub has no file '{what}'", param="model", code="file_not_found") from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        raise HubUnavailable(f"The Hugging Face hub cannot be reached or failed: {exc}") from None
