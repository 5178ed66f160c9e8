"""The model worker: a separate OS process holding one llama.cpp model.

Run as `python -m app.core.runtime.local.process FD`; FD is one end of a socket pair. The protocol is JSON
lines. The parent sends a load spec first; the worker answers `ready` or `load_error`, then serves jobs as they
come, up to `parallel` of them decoded together by the batch engine (batch.py), streaming `chunk` messages and
ending each job with `done` or `error`. A `cancel` message stops a job at the next step. Whenever what the
slots hold changes, a `slots` message reports it (batch.py `report`). When the parent goes away the
worker exits.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import sys
import threading
from typing import Any, BinaryIO

import jinja2
from llama_cpp import Llama

from app.core.runtime.local.batch import BatchEngine
from app.core.runtime.local.grammar import SchemaRefused
from app.core.runtime.local.llama import load, use_threads
from app.core.runtime.local.llama_log import LlamaLog
from app.core.runtime.local.prompt_cache import PromptCache


class Refused(Exception):
    """A request the model cannot serve as given (its conversation, template, grammar or schema); `code` says which."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, exc: Exception) -> Refused:
        if isinstance(exc, Refused):
            return exc
        # llama-cpp-python renders GGUF templates in jinja2's immutable sandbox: reaching for Python internals
        # raises SecurityError, and the template never runs arbitrary code.
        if isinstance(exc, SchemaRefused):
            return cls(str(exc), "invalid_schema")
        if isinstance(exc, jinja2.exceptions.SecurityError):
            return cls(f"The model's chat template was refused: {exc}", "template_refused")
        if isinstance(exc, jinja2.TemplateError) or _raised_in_template(exc):
            return cls(f"The model's chat template cannot render this conversation: {exc}", "template_error")
        return cls(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc), "invalid_request")


def _raised_in_template(exc: Exception) -> bool:
    """Raised by the template itself: its raise_exception(...) is a ValueError from a frame of compiled jinja."""
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename == "<template>":
            return True
        frame = frame.tb_next
    return False


class Worker:
    def __init__(self, sock: socket.socket) -> None:
        self._rfile: BinaryIO = sock.makefile("rb")
        self._wfile: BinaryIO = sock.makefile("wb")
        self._jobs: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._cancels: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.llm: Llama | None = None
        self.engine: BatchEngine | None = None  # None for an embedding model
        self.n_ctx = 0  # the context of one request

    def send(self, message: dict[str, Any]) -> None:
        """Buffered: what one step sends (a token for each of its requests) goes out in one write, at `flush`."""
        self._wfile.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def flush(self) -> None:
        self._wfile.flush()

    def load(self, spec: dict[str, Any]) -> None:
        self.n_ctx = int(spec.get("n_ctx", 4096))
        embedding = bool(spec.get("embedding", False))
        parallel = 1 if embedding else max(1, int(spec.get("parallel", 1)))
        self.llm = load(
            spec["model_path"],
            n_seq_max=parallel,
            n_ctx=self.n_ctx * parallel,
            n_threads=spec.get("n_threads"),
            n_gpu_layers=spec.get("n_gpu_layers", 0),
            embedding=embedding,
            seed=spec.get("seed", 0xFFFFFFFF),
            # llama-cpp-python's own prints stay off (they come per request); llama.cpp's log goes through LlamaLog.
            verbose=False,
        )
        if not embedding:
            cache = PromptCache(int(spec["prompt_cache_bytes"])) if spec.get("prompt_cache_bytes") else None
            self.engine = BatchEngine(self.llm, parallel=parallel, n_ctx_seq=self.n_ctx, send=self.send,
                                      prompt_cache=cache)

    def _read_loop(self) -> None:
        try:
            for line in self._rfile:
                message = json.loads(line)
                op = message.get("op")
                if op == "cancel":
                    self._cancels.put(message["id"])
                elif op == "shutdown":
                    break
                else:
                    self._jobs.put(message)
        except (OSError, ValueError):
            pass
        # The parent closed the socket or asked us to stop: finish the current step and exit.
        self._jobs.put(None)

    def serve(self) -> None:
        """Take new jobs and cancellations between steps; wait for a job only when nothing runs."""
        threading.Thread(target=self._read_loop, name="worker-reader", daemon=True).start()
        engine = self.engine
        try:
            while True:
                busy = engine is not None and engine.busy
                try:
                    jobs = [self._jobs.get_nowait() if busy else self._jobs.get()]
                except queue.Empty:
                    jobs = []
                while not self._jobs.empty():
                    jobs.append(self._jobs.get_nowait())
                for job in jobs:
                    if job is None:
                        return
                    self._take(job)
                if engine is not None:
                    cancelled = set()
                    while not self._cancels.empty():
                        cancelled.add(self._cancels.get_nowait())
                    if cancelled:
                        engine.cancel(cancelled)
                    if engine.busy:
                        self._step(engine)
                self.flush()
        except BrokenPipeError:
            return
        finally:
            if engine is not None:
                engine.close()

    def _take(self, job: dict[str, Any]) -> None:
        """Start a job: an embedding at once, anything else into the batch engine. A job that cannot be served
        as given is refused here, before any of it runs."""
        assert self.llm is not None
        job_id, op, params = job["id"], job["op"], job.get("params", {})
        if job.get("threads"):
            use_threads(self.llm, *job["threads"])
        try:
            if op == "embeddings":
                result = self.llm.create_embedding(**params)
                self.send({"id": job_id, "type": "done", "result": result})
                return
            if self.engine is None:
                raise Refused(f"This model serves embeddings only, not {op}", "invalid_request")
            if op == "tokenize":
                self.send({"id": job_id, "type": "done", "result": {"prompt_tokens": self.engine.count(params)}})
                return
            if op == "chat" and any(isinstance(m.get("content"), list) for m in params.get("messages", ())):
                raise Refused("This model's worker does not read images (its projector is not loaded)",
                              "unsupported_content")
            # Rendering the chat template, building a grammar from a schema and tokenizing happen here, before any
            # token is decoded: whatever fails now failed because of this request, never because of the model.
            self.engine.submit(job_id, op, params, tag=job.get("tag") or "")
        except BrokenPipeError:
            raise
        except Exception as exc:
            refused = Refused.of(exc)
            self.send({"id": job_id, "type": "error", "invalid": True, "code": refused.code, "message": str(refused)})

    def _step(self, engine: BatchEngine) -> None:
        try:
            engine.step()
        except BrokenPipeError:
            raise
        except Exception as exc:  # the model failed: every request in the batch gets the error, the worker lives on
            for request in [*engine.active(), *engine.waiting]:
                self.send({"id": request.id, "type": "error", "message": f"{type(exc).__name__}: {exc}"})
                engine.drop(request)


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    worker = Worker(sock)
    spec = json.loads(worker._rfile.readline() or b"{}")
    # stderr is the model's log file (see WorkerHandle.start).
    log = LlamaLog(sys.stderr.fileno())
    log.note(f"worker {os.getpid()} loading {spec.get('model_path')}")
    try:
        worker.load(spec)
    except Exception as exc:
        # llama-cpp-python only says "Failed to load model from file"; llama.cpp's first error says why.
        said = f" (llama.cpp: {log.first_error})" if log.first_error else ""
        worker.send({"type": "load_error", "message": f"{type(exc).__name__}: {exc}{said}"})
        worker.flush()
        return 1
    log.serving()
    assert worker.llm is not None
    worker.send({"type": "ready", "pid": os.getpid(), "n_ctx": worker.n_ctx})
    worker.flush()
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
