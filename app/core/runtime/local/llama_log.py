"""llama.cpp's own log, in the worker: into the model's log file, and its first error kept to explain a failed load.

While a model loads, everything from INFO up is written (what llama.cpp read from the file, where the weights went:
what a failed or odd load is diagnosed with); once it serves, only warnings and errors, so requests never flood the
log. llama-cpp-python's own callback is replaced: it maps an older numbering of the levels, so with verbose=False
it drops llama.cpp's errors as debug output, and loads in silence.
"""

from __future__ import annotations

import ctypes
import os
import re
import time

import llama_cpp

# ggml.h's enum ggml_log_level; CONT continues the previous message at its level.
DEBUG, INFO, WARN, ERROR, CONT = 1, 2, 3, 4, 5
_FUNCTION = re.compile(r"^\w+: ")  # "llama_model_load: error loading model: ..." -> "error loading model: ..."


class LlamaLog:
    """Set as llama.cpp's log callback from creation on, writing to `fd` (the worker's stderr, its log file)."""

    def __init__(self, fd: int) -> None:
        # A copy of the descriptor: llama-cpp-python points fd 2 at /dev/null while it loads a model.
        self._fd = os.dup(fd)
        self.threshold = INFO
        self.first_error: str | None = None  # the first error llama.cpp logged, without its function name
        self._kept = False  # whether the message a CONT piece continues was written
        # Referenced here for as long as the process runs: llama.cpp keeps only the function pointer.
        self._callback = llama_cpp.llama_log_callback(self._log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def note(self, text: str) -> None:
        """A line of our own, e.g. which file a load starts on (a log holds several loads, one after the other)."""
        os.write(self._fd, f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode())

    def serving(self) -> None:
        """The model loaded: from now on, warnings and errors only."""
        self.threshold = WARN

    def _log(self, level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
        if level != CONT:
            self._kept = level >= self.threshold
        if not text:
            return
        if self._kept:
            os.write(self._fd, text)
        if level == ERROR and self.first_error is None:
            self.first_error = _FUNCTION.sub("", text.decode(errors="replace").strip(), count=1)
