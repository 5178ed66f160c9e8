"""The model worker: a separate OS process holding one llama.cpp model.

Run as `python -m app.core.runtime.local.process FD`; FD is one end of a socket pair. The protocol is JSON
lines. The parent sends a load spec first; the worker answers `ready` or `load_error`, then serves
jobs one at a time from its queue, streaming `chunk` messages and ending each job with `done` or
`error`. A `cancel` message stops a job between tokens. When the parent goes away the worker exits.
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

from app.core.runtime.local.grammar import SchemaRefused, grammar_for
from app.core.runtime.local.llama import MeteredLlama
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
        self._jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._closing = threading.Event()
        self.llm: MeteredLlama | None = None

    def send(self, message: dict[str, Any]) -> None:
        self._wfile.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self._wfile.flush()

    def load(self, spec: dict[str, Any]) -> None:
        self.llm = MeteredLlama(
            model_path=spec["model_path"],
            n_ctx=spec.get("n_ctx", 4096),
            n_threads=spec.get("n_threads"),
            n_gpu_layers=spec.get("n_gpu_layers", 0),
            embedding=spec.get("embedding", False),
            seed=spec.get("seed", 0xFFFFFFFF),
            # llama-cpp-python's own prints stay off (they come per request); llama.cpp's log goes through LlamaLog.
            verbose=False,
        )
        if spec.get("prompt_cache_bytes"):
            self.llm.prompt_cache = PromptCache(int(spec["prompt_cache_bytes"]))

    def _read_loop(self) -> None:
        try:
            for line in self._rfile:
                message = json.loads(line)
                op = message.get("op")
                if op == "cancel":
                    self._cancelled.add(message["id"])
                elif op == "shutdown":
                    break
                else:
                    self._jobs.put(message)
        except (OSError, ValueError):
            pass
        # The parent closed the socket or asked us to stop: finish the current token and exit.
        self._closing.set()
        self._jobs.put(None)

    def serve(self) -> None:
        threading.Thread(target=self._read_loop, name="worker-reader", daemon=True).start()
        while (job := self._jobs.get()) is not None:
            job_id = job["id"]
            try:
                if job_id in self._cancelled:
                    self.send({"id": job_id, "type": "done", "finish_reason": "cancelled", "usage": None})
                else:
                    self._run(job)
            except BrokenPipeError:
                return
            except Refused as exc:
                self.send({"id": job_id, "type": "error", "invalid": True, "code": exc.code, "message": str(exc)})
            except ValueError as exc:
                # llama-cpp-python's way of rejecting a request once it runs (prompt longer than the context...).
                self.send({"id": job_id, "type": "error", "invalid": True, "message": str(exc)})
            except Exception as exc:  # the model failed; the worker lives on and reports it to the caller
                self.send({"id": job_id, "type": "error", "message": f"{type(exc).__name__}: {exc}"})
            finally:
                self._cancelled.discard(job_id)

    def _run(self, job: dict[str, Any]) -> None:
        assert self.llm is not None
        job_id, op, params = job["id"], job["op"], job.get("params", {})
        if job.get("threads"):
            self.llm.use_threads(*job["threads"])
        if op == "embeddings":
            result = self.llm.create_embedding(**params)
            self.send({"id": job_id, "type": "done", "result": result})
            return
        try:
            # Rendering the chat template, building a grammar from a schema and tokenizing happen here, before any
            # token is decoded: whatever fails now failed because of this request, never because of the model.
            # With stream=True, a generator of chunk dicts (the library's annotations cover both modes).
            vocabulary = self.llm.n_vocab()
            if any(int(token) >= vocabulary for token in params.get("logit_bias") or ()):
                raise ValueError(f"logit_bias names a token id beyond this model's vocabulary of {vocabulary}")
            if op == "chat":
                if any(isinstance(m.get("content"), list) for m in params.get("messages", ())):
                    raise Refused("This model's worker does not read images (its projector is not loaded)",
                                  "unsupported_content")
                if "response_format" in params:
                    params = {**params, "grammar": grammar_for(params.pop("response_format"))}
                stream: Any = self.llm.create_chat_completion(**params, stream=True)
            elif op == "completion":
                stream = self.llm.create_completion(**params, stream=True)
            else:
                raise ValueError(f"unknown operation {op!r}")
        except Exception as exc:
            raise Refused.of(exc) from exc
        finish_reason = None
        for chunk in stream:
            if job_id in self._cancelled or self._closing.is_set():
                stream.close()
                finish_reason = "cancelled"
                break
            self.send({"id": job_id, "type": "chunk", "data": chunk})
        self.send({"id": job_id, "type": "done", "finish_reason": finish_reason, "usage": self.llm.usage(),
                   "threads": [self.llm.n_threads, self.llm.n_threads_batch]})
        # After the answer is sent: saving the state is not on the client's time.
        self.llm.save_state_to_cache()


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
        return 1
    log.serving()
    assert worker.llm is not None
    worker.send({"type": "ready", "pid": os.getpid(), "n_ctx": worker.llm.n_ctx()})
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
