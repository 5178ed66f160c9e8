"""Loading llama_cpp.Llama for the worker: the one module that reaches into how llama-cpp-python builds it.

Written and tested against llama-cpp-python 0.3.36 (the 0.3 line, hence the `<0.4` bound in pyproject.toml).
What it relies on:

- `Llama.__init__` takes its model and context parameters from `llama_cpp.llama_cpp.llama_model_default_params()`
  and `llama_context_default_params()`, looked up when it runs, and sets only the fields it has arguments for:
  `load` swaps in defaults with `n_seq_max` and `kv_unified` set (the batched decode loop's sequences), and with
  `use_extra_bufts` off on CPUs with AMX.
- `Llama._ctx.ctx` and `Llama._model.vocab`, the raw pointers the batch engine (batch.py) decodes and samples with;
  `Llama.n_threads` / `Llama.n_threads_batch` with `llama_cpp.llama_set_n_threads`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import llama_cpp
from llama_cpp import Llama

__all__ = ["load", "model_defaults", "use_threads"]


def load(model_path: str, *, n_seq_max: int = 1, **kwargs: Any) -> Llama:
    """A Llama whose context holds `n_seq_max` sequences in one unified KV cache (kwargs' n_ctx cells in all).

    Flash attention is llama-server's default on the CPU. Without it, llama.cpp's batched attention answers a
    fresh prompt wrongly on some AVX2 CPUs (0.3.36: SmolLM2 at temperature 0 says "La femme de France..." to the
    capital of France, and "Paris" once the prompt is decoded one token at a time)."""
    kwargs.setdefault("flash_attn", True)
    with model_defaults(), _context_defaults(n_seq_max=n_seq_max, kv_unified=n_seq_max > 1):
        return Llama(model_path, **kwargs)


def use_threads(llm: Llama, generation: int, prompt: int) -> None:
    """Change the threads llama.cpp decodes with (the pool shares the CPU among its workers)."""
    if (generation, prompt) != (llm.n_threads, llm.n_threads_batch):
        llama_cpp.llama_set_n_threads(llm._ctx.ctx, generation, prompt)
        llm.n_threads, llm.n_threads_batch = generation, prompt


def _cpu_has_amx() -> bool:
    """Intel AMX (Sapphire Rapids and later). llama.cpp 0.3.36's AMX weight buffers crash the first decode of
    a Q4_1 model there (SIGSEGV in llama_decode, with or without flash attention, any thread count); with extra
    buffer types off the same build answers correctly, on the plain AVX-512 kernels."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("flags") and " amx_tile" in line for line in cpuinfo)
    except OSError:
        return False


@contextlib.contextmanager
def model_defaults() -> Iterator[None]:
    """While inside, a Llama loads with the model parameters this CPU needs: extra buffer types off where the CPU
    has AMX (also for llama-cpp-python's own server, which the tests and benchmarks start inside it)."""
    if not _cpu_has_amx():
        yield
        return
    with _defaults("llama_model_default_params", use_extra_bufts=False):
        yield


def _context_defaults(**fields: Any) -> contextlib.AbstractContextManager[None]:
    return _defaults("llama_context_default_params", **fields)


@contextlib.contextmanager
def _defaults(function: str, **fields: Any) -> Iterator[None]:
    """Replace one of llama.cpp's default-parameter functions, as Llama.__init__ looks it up, with one that sets
    `fields` on what the original returns."""
    bindings = llama_cpp.llama_cpp
    original = getattr(bindings, function)

    def defaults() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    setattr(bindings, function, defaults)
    try:
        yield
    finally:
        setattr(bindings, function, original)
