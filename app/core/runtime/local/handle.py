"""The server's side of one model worker process: start, stream jobs, cancel, stop, measure; and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import psutil

from app.core.errors import InvalidRequest, ModelUnavailable, WorkerCrashed, WorkerDied
from app.core.runtime.local import worker_log
from app.core.runtime.slots import SlotReport

_ids = itertools.count(1)
# Streamed chunks are small, but a full embedding batch can be large.
_LINE_LIMIT = 64 * 1024 * 1024


class WorkerState(str, Enum):
    """starting -> ready -> stopping -> stopped; failed from starting (the load failed) or ready (a crash).

    Starting may also go to stopping (a load abandoned, e.g. at shutdown). Stopped and failed are final: a
    handle runs one process, and the pool makes a new handle for the next.
    """

    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_NEXT: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.STOPPING, WorkerState.FAILED}),
    WorkerState.READY: frozenset({WorkerState.STOPPING, WorkerState.FAILED}),
    WorkerState.STOPPING: frozenset({WorkerState.STOPPED}),
    WorkerState.STOPPED: frozenset(),
    WorkerState.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: a worker was moved between two states that do not follow each other."""


def check_transition(current: WorkerState, new: WorkerState) -> None:
    if new not in _NEXT[current]:
        raise IllegalTransition(f"a worker cannot go from {current.value} to {new.value}")


@dataclass(slots=True)
class LoadSpec:
    model_path: str
    n_ctx: int = 4096
    n_threads: int | None = None
    n_gpu_layers: int = 0
    embedding: bool = False
    prompt_cache_bytes: int = 256 * 1024 * 1024
    # Sequences decoded together, each with its own n_ctx of context (the KV cache holds parallel × n_ctx).
    parallel: int = 1


class WorkerHandle:
    """One worker process. Many requests may be queued on it; the worker decodes up to `spec.parallel` of them
    together and queues the rest.

    A handle is made to be started: it is STARTING from birth, and `start` announces that state first, so the
    listener (`on_state`, set before `start`) hears every state the handle is in, once, in order.
    """

    def __init__(self, model_id: str, spec: LoadSpec, *, replica: int = 0, log_path: Path | None = None) -> None:
        self.model_id = model_id
        self.spec = spec
        self.replica = replica
        self.log_path = log_path
        self.pid: int | None = None
        self.n_ctx: int | None = None
        self.started_at: float | None = None
        self.last_used = time.monotonic()
        self.in_flight = 0
        # Jobs the worker stopped early because their client went away.
        self.jobs_cancelled = 0
        self.dead_reason: str | None = None  # why it failed or stopped; None while it runs
        # Why the model's files did not load, when they would fail the same way again (dead_reason); else None.
        self.load_error: str | None = None
        self.state = WorkerState.STARTING
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        # (generation, prompt) threads its jobs run with, set by the pool; None: llama.cpp's defaults.
        self.threads: tuple[int, int] | None = None
        # Told the handle on every state it enters (read `state`, and `dead_reason` when it failed).
        self.on_state: Callable[[WorkerHandle], None] | None = None
        # The worker's last report of its slots (what they hold), and who is told each new one.
        self.slot_report = SlotReport()
        self.on_report: Callable[[WorkerHandle], None] | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None and self.dead_reason is None

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    def _enter(self, state: WorkerState) -> None:
        """The one place a worker changes state: checked, then announced."""
        check_transition(self.state, state)
        self.state = state
        self._announce()

    def _announce(self) -> None:
        if self.on_state is not None:
            self.on_state(self)

    async def start(self, timeout: float) -> None:
        """Spawn the process and wait until the model is loaded (ready); raises ModelUnavailable when the load
        fails (failed). A handle starts once."""
        if self.state is not WorkerState.STARTING or self.pid is not None:
            raise IllegalTransition(f"a worker that is {self.state.value} cannot start (a handle starts once)")
        self._announce()
        parent_sock, child_sock = socket.socketpair()
        log = worker_log.open_for_worker(self.log_path)
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.core.runtime.local.process", str(child_sock.fileno()),
                pass_fds=(child_sock.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own session: a Ctrl-C in the terminal reaches the server, which then stops workers cleanly.
                start_new_session=True,
            )
        finally:
            child_sock.close()
            log.close()
        self.pid = self._process.pid
        reader, self._writer = await asyncio.open_connection(sock=parent_sock, limit=_LINE_LIMIT)
        self._send({"op": "load", **_spec_dict(self.spec)})
        try:
            line: bytes | None = await asyncio.wait_for(reader.readline(), timeout)
        except TimeoutError:
            line = None
        if line is None:
            await self._fail_to_load(f"Model '{self.model_id}' did not load within {timeout:.0f} s")
        if not line:  # the worker ended while loading: reap it, to say how
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), 5.0)
        message: dict[str, Any] = json.loads(line) if line else {"type": "load_error",
                                                                 "message": self._exit_description()}
        if message.get("type") != "ready":
            reason = f"Model '{self.model_id}' failed to load: {message.get('message')}"
            # llama.cpp refused the files, or died on them: they would fail the same way again. Not so a kill
            # (SIGKILL is the OOM killer's or a person's) or a timeout, which say nothing about the files.
            if self._process.returncode != -signal.SIGKILL:
                self.load_error = reason
            await self._fail_to_load(reason)
        self.n_ctx = message.get("n_ctx")
        self.started_at = time.time()
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"worker-{self.model_id}")
        self._enter(WorkerState.READY)

    async def _fail_to_load(self, reason: str) -> NoReturn:
        await self._terminate()
        self.dead_reason = reason
        self._enter(WorkerState.FAILED)
        raise ModelUnavailable(reason)

    async def run(self, op: str, params: dict[str, Any], tag: str = "") -> AsyncGenerator[dict[str, Any], None]:
        """Yield the worker's messages for one job: `chunk`s, then a final `done`. `tag` (the request id) is how
        the worker's slot reports name what the job leaves in its cache.

        Raises WorkerCrashed if the process dies, ModelUnavailable for an error in the job.
        Closing the iterator early (client gone) cancels the job in the worker.
        """
        if not self.alive:
            raise WorkerCrashed(f"The worker for '{self.model_id}' is not running: {self.dead_reason}")
        job_id = f"j{next(_ids)}"
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[job_id] = inbox
        self.in_flight += 1
        finished = False
        try:
            self._send({"op": op, "id": job_id, "params": params, "threads": self.threads, "tag": tag})
            while True:
                message = await inbox.get()
                kind = message.get("type")
                if kind == "crash":
                    finished = True
                    raise WorkerDied(f"The worker for '{self.model_id}' stopped: {message['message']}")
                if kind == "error":
                    finished = True
                    if message.get("invalid"):
                        raise InvalidRequest(message["message"], code=message.get("code"))
                    raise ModelUnavailable(f"Model '{self.model_id}' failed: {message['message']}")
                if kind == "done":
                    finished = True
                yield message
                if finished:
                    return
        finally:
            self._pending.pop(job_id, None)
            self.in_flight -= 1
            self.last_used = time.monotonic()
            if not finished and self.alive:
                with contextlib.suppress(OSError):
                    self._send({"op": "cancel", "id": job_id})

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            raise WorkerCrashed(f"The worker for '{self.model_id}' is not running")
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message.get("type") == "slots":
                    self.slot_report = SlotReport.of(message)
                    if self.on_report is not None:
                        self.on_report(self)
                    continue
                if message.get("finish_reason") == "cancelled":
                    self.jobs_cancelled += 1
                inbox = self._pending.get(message.get("id", ""))
                if inbox is not None:
                    inbox.put_nowait(message)
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            self.dead_reason = f"protocol error: {exc}"
        if self._process is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._process.wait(), 2.0)
        self.dead_reason = self.dead_reason or self._exit_description()
        for inbox in self._pending.values():
            inbox.put_nowait({"type": "crash", "message": self.dead_reason})
        if self.state is WorkerState.READY:  # nobody asked it to stop: a crash
            self._enter(WorkerState.FAILED)

    def _exit_description(self) -> str:
        code = self._process.returncode if self._process else None
        if code is None:
            return "the worker closed its connection"
        if code < 0:
            return f"the worker process was killed by signal {-code}"
        return f"the worker process exited with status {code}"

    def rss(self) -> int:
        """Resident memory of the worker process in bytes (0 when it is gone)."""
        if not self.pid or not self.alive:
            return 0
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0

    async def stop(self, grace: float = 3.0) -> None:
        """Ask the worker to exit; kill it if it does not. All its memory returns to the system.

        Stopping a handle that is stopping, stopped or failed only makes sure its process is gone."""
        asked = self.state in (WorkerState.STARTING, WorkerState.READY)
        if asked:
            self._enter(WorkerState.STOPPING)
        await self._terminate(grace)
        if asked:
            self._enter(WorkerState.STOPPED)

    async def _terminate(self, grace: float = 3.0) -> None:
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(OSError, WorkerCrashed):
                self._send({"op": "shutdown"})
            self._writer.close()
        process = self._process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.dead_reason = self.dead_reason or "stopped"
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task


def _spec_dict(spec: LoadSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__slots__}
