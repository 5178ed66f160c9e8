"""Getting models: search the Hugging Face hub, list a repository's GGUF files with a fits / won't-fit verdict from
our own memory estimate, and pull one into the HF cache with progress, after which it is in the registry (the
repository's cache folder is scanned, not every place)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from app.core.catalog import hub
from app.core.catalog.architectures import load_refusal
from app.core.catalog.gguf.header import GGUFError
from app.core.catalog.model import entry_from_found
from app.core.engine import Engine
from app.core.errors import InvalidRequest, ModelUnavailable, SwitchboardError

log = logging.getLogger(__name__)

MAX_QUERY = 200
HEADERS_AT_ONCE = 4  # range reads in flight while a repository's files are listed
PROGRESS_STEPS = 200  # progress events per pull at most, so a slow reader never falls behind


class Pull:
    """One download in flight. Its events are plain dicts: start, progress (bytes done and total), then done (the
    new model id) or error (message and code; "cancelled" when cancelled)."""

    def __init__(self, repo_id: str, model: hub.RemoteModel, projector: hub.RemoteModel | None) -> None:
        self.repo_id = repo_id
        self.files = [*zip(model.files, model.sizes), *(zip(projector.files, projector.sizes) if projector else ())]
        self.total = sum(size for _, size in self.files)
        self.cancelled = threading.Event()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ended = False
        self.emit({"event": "start", "repo": repo_id, "files": [path for path, _ in self.files],
                    "total": self.total})

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self._events.get()
            yield event
            if event["event"] in ("done", "error"):
                return

    def cancel(self) -> None:
        """Stop the download (its partial file is removed) and end the events at once; nothing is registered."""
        self.cancelled.set()
        self.finish({"event": "error", "code": "cancelled", "message": "The pull was cancelled"})

    def emit(self, event: dict[str, Any]) -> None:
        if not self._ended:
            self._events.put_nowait(event)

    def finish(self, event: dict[str, Any]) -> None:
        self.emit(event)
        self._ended = True


class Library:
    """The hub's GGUF models, and pulls of them (the window's library panel, the API, `switchboard pull`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pulls: dict[str, Pull] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        query = query.strip()
        if not query or len(query) > MAX_QUERY:
            raise InvalidRequest(f"The search needs 1 to {MAX_QUERY} characters", param="q")
        return [hit.as_dict() for hit in await asyncio.to_thread(hub.search, query, limit)]

    async def files(self, repo: str) -> dict[str, Any]:
        """The repository's models (split parts as one) with size and verdict, its projectors, its broken splits."""
        repo_id, quant = hub.parse_spec(repo, param="repo")
        if quant is not None:
            raise InvalidRequest(f"'{repo}' names a file; list the repository 'owner/repo'", param="repo")
        listing = await asyncio.to_thread(hub.list_repo, repo_id)
        gate = asyncio.Semaphore(HEADERS_AT_ONCE)

        async def described(model: hub.RemoteModel) -> dict[str, Any]:
            async with gate:
                return await self._describe(listing, model)

        models = await asyncio.gather(*(described(m) for m in listing.models))
        return {"repo": listing.repo_id, "commit": listing.commit, "budget_bytes": self._engine.pool.budget,
                "models": list(models),
                "projectors": [{"file": p.files[0], "size": p.size} for p in listing.projectors],
                "incomplete": listing.incomplete}

    async def _describe(self, listing: hub.RepoListing, model: hub.RemoteModel) -> dict[str, Any]:
        info: dict[str, Any] = {"file": model.files[0], "files": list(model.files), "size": model.size,
                                "quant": model.quant, "pull": f"{listing.repo_id}:{model.quant or model.stem}",
                                "fits": None, "estimate_bytes": None, "problem": None}
        try:
            header = await asyncio.to_thread(hub.read_header, listing.repo_id, model, revision=listing.commit)
        except GGUFError as exc:
            return {**info, "problem": exc.reason}
        entry = entry_from_found(hub.as_found(listing.repo_id, model, header))
        pool = self._engine.pool
        return {**info, "architecture": header.architecture, "context_length": header.context_length,
                "estimate_bytes": pool.estimate(entry), "fits": pool.fits(entry),
                "problem": await asyncio.to_thread(load_refusal, header.architecture)}

    async def pull(self, spec: str) -> Pull:
        """Start downloading "owner/repo[:quant]" (and the repository's smallest projector); bad input raises here,
        before any event."""
        repo_id, quant = hub.parse_spec(spec)
        listing = await asyncio.to_thread(hub.list_repo, repo_id)
        model = hub.choose(listing, quant)
        key = f"{listing.repo_id}/{model.files[0]}"
        running = self._pulls.get(key)
        if running is not None and not running.cancelled.is_set():
            raise InvalidRequest(f"'{key}' is being pulled already", param="model", code="pull_in_progress")
        projector = min(listing.projectors, key=lambda p: (p.size, p.files[0]), default=None)
        # A cancelled pull may still be winding down: the new one waits for huggingface_hub's lock on the file.
        pull = self._pulls[key] = Pull(listing.repo_id, model, projector)
        task = asyncio.create_task(self._run(pull, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pull

    def cancel(self, spec: str) -> bool:
        """Cancel the pulls from the repository of "owner/repo[:quant]"; False when none runs."""
        repo_id, _ = hub.parse_spec(spec)
        pulls = [p for p in self._pulls.values() if p.repo_id.lower() == repo_id.lower() and not p.cancelled.is_set()]
        for pull in pulls:
            pull.cancel()
        return bool(pulls)

    async def _run(self, pull: Pull, key: str) -> None:
        loop = asyncio.get_running_loop()
        done = posted = 0
        step = max(1, pull.total // PROGRESS_STEPS)

        def on_bytes(n: int) -> None:  # in the download thread
            nonlocal done, posted
            done += n
            if done - posted >= step or done >= pull.total:
                posted = done
                loop.call_soon_threadsafe(pull.emit, {"event": "progress", "done": done, "total": pull.total})

        try:
            paths = await asyncio.to_thread(hub.download, pull.repo_id, pull.files, on_bytes=on_bytes,
                                            cancelled=pull.cancelled)
            found = await asyncio.to_thread(hub.cached_models, pull.repo_id)
            if pull.cancelled.is_set():
                return
            self._engine.registry.sync(found.models, complete=False)
            model_id = next((m.id for m in found.models if m.path == paths[0]), None)
            if model_id is None:
                reasons = "; ".join(p.reason for p in found.problems) or "no model found in it"
                raise ModelUnavailable(f"'{pull.files[0][0]}' was downloaded but is not a usable model: {reasons}")
            pull.finish({"event": "done", "model": model_id, "path": paths[0]})
        except hub.PullCancelled:
            pull.cancel()
        except SwitchboardError as exc:
            pull.finish({"event": "error", "code": exc.code, "message": exc.message})
        except Exception:  # a bug of ours: logged in full, and the stream still ends
            log.exception("the pull of %s failed", pull.files[0][0])
            pull.finish({"event": "error", "code": "internal_error",
                         "message": "Internal error; the server log has the details"})
        finally:
            if self._pulls.get(key) is pull:
                del self._pulls[key]
