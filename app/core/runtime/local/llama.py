"""The worker's llama_cpp.Llama: the one module that relies on llama-cpp-python's internals.

Written and tested against llama-cpp-python 0.3.36; it needs 0.3.10 or later (the llama_memory_* calls)
and the Llama internals of the 0.3 line, hence the `<0.4` bound in pyproject.toml. What it relies on:

- `Llama.generate` calls `self.eval(tokens)` with the part of the prompt the KV cache did not hold, first
  of all its evals: that call's length gives `cached_tokens`.
- `Llama._model.vocab` with `llama_cpp.llama_vocab_is_eog`: completion tokens are counted without the
  end-of-generation token.
- `Llama._ctx.ctx` (the llama_context pointer) with `llama_get_memory`, `llama_memory_clear` and
  `llama_state_seq_get_size` / `llama_state_seq_get_data` / `llama_state_seq_set_data`: sequence 0's KV
  data is saved to and restored from the prompt cache.
- `Llama.input_ids` and `Llama.n_tokens`: the tokens the KV cache holds, which `generate` matches the next
  prompt against; and `Llama._requires_eval` (0.3.32 and later): a restored state has no logits, so
  `generate` must decode at least one token before sampling. Older versions lack the attribute and always
  replay the prompt's last token, so setting it there is harmless.
- `llama_cpp.llama_set_n_threads` with `Llama.n_threads` / `Llama.n_threads_batch`: threads change
  between jobs.
- `Llama.__init__` takes its model parameters from `llama_cpp.llama_cpp.llama_model_default_params()`, looked up when
  it runs: on CPUs with AMX the worker swaps in defaults with `use_extra_bufts` off (see `model_defaults`).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import Llama

from app.core.runtime.local.prompt_cache import PromptCache, common_prefix

__all__ = ["MeteredLlama", "model_defaults"]


@dataclass
class _RequestStats:
    prompt_tokens: int
    first_eval: int | None = None  # tokens in the request's first eval: None until it happens
    completion_tokens: int = 0


class MeteredLlama(Llama):
    """Llama that restores cached conversation states and reports how many prompt tokens it reused."""

    prompt_cache: PromptCache | None = None
    request_stats: _RequestStats | None = None

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        # Flash attention is llama-server's default on the CPU. Without it, llama.cpp's batched attention
        # answers a fresh prompt wrongly on some AVX2 CPUs (0.3.36: SmolLM2 at temperature 0 says "La femme de
        # France..." to the capital of France, and "Paris" once the prompt is decoded one token at a time).
        kwargs.setdefault("flash_attn", True)
        with model_defaults():
            super().__init__(model_path, **kwargs)

    def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
        tokens = list(tokens)
        stats = self.request_stats = _RequestStats(prompt_tokens=len(tokens))
        self._restore_best(tokens)
        vocab = self._model.vocab
        for token in super().generate(tokens, *args, **kwargs):
            if not llama_cpp.llama_vocab_is_eog(vocab, token):
                stats.completion_tokens += 1
            yield token

    def _restore_best(self, tokens: list[int]) -> None:
        """Load the cached state that shares more of this prompt than the current one does."""
        if self.prompt_cache is None:
            return
        current = common_prefix(self.input_ids[: self.n_tokens].tolist(), tokens)
        found = self.prompt_cache.best(tokens)
        if found is None or found[2] <= current:
            return
        key, data, _ = found
        ctx = self._ctx.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(ctx, buffer, len(data), 0) != len(data):
            self.reset()
            return
        self.input_ids[: len(key)] = key
        self.n_tokens = len(key)
        self._requires_eval = True

    def save_state_to_cache(self) -> None:
        """Remember the conversation just served (its KV data only)."""
        if self.prompt_cache is None or self.n_tokens == 0:
            return
        ctx = self._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        self.prompt_cache.put(self.input_ids[: self.n_tokens].tolist(), ctypes.string_at(buffer, written))

    def eval(self, tokens: Any) -> None:
        stats = self.request_stats
        # The first eval of a request is the part of the prompt the cache did not hold.
        if stats is not None and stats.first_eval is None:
            stats.first_eval = len(tokens)
        super().eval(tokens)

    def use_threads(self, generation: int, prompt: int) -> None:
        """Change the threads llama.cpp decodes with (the pool shares the CPU among its workers)."""
        if (generation, prompt) != (self.n_threads, self.n_threads_batch):
            llama_cpp.llama_set_n_threads(self._ctx.ctx, generation, prompt)
            self.n_threads, self.n_threads_batch = generation, prompt

    def usage(self) -> dict[str, int]:
        stats = self.request_stats or _RequestStats(prompt_tokens=0, first_eval=0)
        prompt = stats.prompt_tokens
        evaluated = prompt if stats.first_eval is None else stats.first_eval
        return {
            "prompt_tokens": prompt,
            "completion_tokens": stats.completion_tokens,
            "total_tokens": prompt + stats.completion_tokens,
            "cached_tokens": max(0, prompt - evaluated),
        }


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
    has AMX. (Llama.__init__ has no argument for llama_model_params.use_extra_bufts: the defaults it reads change.)"""
    if not _cpu_has_amx():
        yield
        return
    bindings = llama_cpp.llama_cpp  # the module Llama.__init__ looks the function up in
    original = bindings.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = defaults
    try:
        yield
    finally:
        bindings.llama_model_default_params = original
