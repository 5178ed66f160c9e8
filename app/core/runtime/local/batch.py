"""The worker's batched decode loop: up to `parallel` requests decoded together in one llama.cpp context.

Each request runs in a slot, one llama.cpp sequence of a unified KV cache of parallel × n_ctx cells. A step decodes
one token of every generating request plus a chunk of the prompts still pending (chunked prefill: a long prompt
delays the others by one chunk per step, never by its whole length), then samples each request that got logits
with its own sampler chain. A request starts from the longest prefix any slot holds, active or idle (copied with
llama_memory_seq_cp, not evaluated again); idle slots keep their tokens as a cache until a request needs the slot
or the cells, least recently used first, and then go to the RAM prompt cache, the second tier. `report` says what
the slots and the RAM cache hold, by request, so the router can send a conversation where its prefix really is.

Long module: the slots, the sampler chains, the batch and the text a request streams (stop strings, UTF-8 split
across tokens) are one loop's state; split up, each piece would need all the others.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from app.core.catalog.capabilities import tool_style
from app.core.runtime.local import tools
from app.core.runtime.local.grammar import SchemaRefused, grammar_for
from app.core.runtime.local.prompt_cache import PromptCache, common_prefix

Send = Callable[[dict[str, Any]], None]
_arrivals = itertools.count()

# llama-cpp-python's defaults for each endpoint, so answers stay what they were before batching.
CHAT_DEFAULTS = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
COMPLETION_DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
PENALTY_LAST_N = 64
# Characters an answer's start is held back while it may be a call that only starts an answer (Llama 3's JSON).
START_HOLD = 16
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed per request
# A model without a chat template is spoken to in ChatML, the most common format.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class RequestError(ValueError):
    """The request cannot be served as given (too long for the context, a bad parameter): the model is fine."""


@dataclass
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None
    trigger: str | None = None  # a regex: the grammar applies once the answer so far matches it (a lazy grammar)

    @classmethod
    def of(cls, op: str, params: dict[str, Any]) -> Sampling:
        defaults = CHAT_DEFAULTS if op == "chat" else COMPLETION_DEFAULTS
        value = {name: params.get(name, default) for name, default in defaults.items()}
        return cls(
            temperature=float(value["temperature"]), top_p=float(value["top_p"]), top_k=int(value["top_k"]),
            min_p=float(value["min_p"]), seed=int(params.get("seed", RANDOM_SEED)) & 0xFFFFFFFF,
            presence_penalty=float(params.get("presence_penalty", 0.0)),
            frequency_penalty=float(params.get("frequency_penalty", 0.0)),
            repeat_penalty=float(params.get("repeat_penalty", 1.0)),
            logit_bias={int(k): float(v) for k, v in (params.get("logit_bias") or {}).items()},
            grammar=grammar_for(params["response_format"]) if params.get("response_format") else None,
        )

    def chain(self, vocab: Any, n_vocab: int) -> Any:
        """A llama.cpp sampler chain: constraints first (grammar, biases, penalties), then the choice."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if self.grammar is not None:
            if self.trigger is None:
                grammar = llama_cpp.llama_sampler_init_grammar(vocab, self.grammar.encode(), b"root")
            else:
                patterns = (ctypes.c_char_p * 1)(self.trigger.encode())
                grammar = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                    vocab, self.grammar.encode(), b"root", patterns, 1, None, 0)
            if not grammar:  # llama.cpp could not parse it: NULL, which a chain must never hold
                llama_cpp.llama_sampler_free(chain)
                raise SchemaRefused("The response_format schema gave a grammar llama.cpp cannot parse")
            add(chain, grammar)
        if self.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(self.logit_bias))(
                *(llama_cpp.llama_logit_bias(token, bias) for token, bias in self.logit_bias.items()))
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(self.logit_bias), biases))
        if self.repeat_penalty != 1.0 or self.frequency_penalty or self.presence_penalty:
            add(chain, llama_cpp.llama_sampler_init_penalties(PENALTY_LAST_N, self.repeat_penalty,
                                                              self.frequency_penalty, self.presence_penalty))
        if self.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        add(chain, llama_cpp.llama_sampler_init_top_k(self.top_k))
        add(chain, llama_cpp.llama_sampler_init_top_p(self.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(self.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(self.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(self.seed))
        return chain


@dataclass
class Slot:
    """One sequence of the context: the tokens its KV cells hold, and the request using it (None: idle)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    request: Request | None = None
    last_used: float = 0.0
    tag: str = ""  # the request whose tokens these are (the last one served here), as the router knows it
    prompt_len: int = 0  # that request's prompt length


class Request:
    """One job being served: its prompt, its sampler, what it generated and the text it has yet to send."""

    def __init__(self, job_id: str, op: str, prompt: list[int], sampling: Sampling, *, max_tokens: int,
                 stop: list[str], echo: str | None, top_logprobs: int | None = None, tag: str = "") -> None:
        self.id = job_id
        self.tag = tag or job_id
        self.op = op
        self.prompt = prompt
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.stop = stop
        self.echo = echo
        self.top_logprobs = top_logprobs  # None: no logprobs; else how many alternatives per token
        # Entries not sent yet, each with the offset of its token's text in the answer: they go with the next chunk.
        self.logprobs: list[tuple[dict[str, Any], int]] = []
        self.text_length = 0  # characters of answer decoded so far
        self.chain: Any = None
        self.slot: Slot | None = None
        self.evaluated = 0  # prompt tokens in the slot's cells
        self.cached = 0  # of those, the ones reused from a cache
        self.next_token: int | None = None  # sampled, not yet decoded
        self.completion_tokens = 0
        self.held = ""  # text not sent yet: it may be the start of a stop string
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.started_role = False
        self.sent_text = False  # some of the answer's text has been sent
        # Tool calls: the style the answer's calls take (None: no tools), and the answer from the call marker on,
        # held back from the stream to be sent as calls (None until the marker appears).
        self.tool_style: tools.Style | None = None
        self.capture: str | None = None
        self.created = int(time.time())
        self.order = next(_arrivals)  # who came first, among the prompts still pending

    @property
    def prefilling(self) -> bool:
        return self.evaluated < len(self.prompt)


class BatchEngine:
    def __init__(self, llm: llama_cpp.Llama, *, parallel: int, n_ctx_seq: int, send: Send,
                 prompt_cache: PromptCache | None = None) -> None:
        self.llm = llm
        self.ctx = llm._ctx.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self.n_ctx_seq = n_ctx_seq
        self.n_cells = parallel * n_ctx_seq
        self.n_batch = llm.n_batch
        self.send = send
        self.prompt_cache = prompt_cache
        self.slots = [Slot(seq_id) for seq_id in range(parallel)]
        self.waiting: list[Request] = []
        self.changed = False  # what `report` says changed since it was last sent
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, parallel)
        self._chat = ChatPrompt(llm)

    def close(self) -> None:
        for request in self.active():
            self._free(request)
        llama_cpp.llama_batch_free(self._batch)

    # -- requests -------------------------------------------------------------------------------
    def submit(self, job_id: str, op: str, params: dict[str, Any], tag: str = "") -> None:
        """Queue a chat or completion job; `tag` is the request's id in the router's terms. Raises for a request
        that cannot be served (formatting, grammar, too long): nothing of it has run, and the caller reports it."""
        params = dict(params)
        stop = list(params.get("stop") or [])
        echo = None
        plan = None
        if op == "chat":
            plan, prompt, stops = self._chat.prompt(params)
            stop += [s for s in stops if s not in stop]
        elif op == "completion":
            text = params["prompt"]
            prompt = self._completion_tokens(text)
            echo = text if params.get("echo") else None
        else:
            raise RequestError(f"unknown operation {op!r}")
        if not prompt:
            raise RequestError("the prompt is empty once tokenized")
        room = self.n_ctx_seq - len(prompt)
        if room < 1:
            raise RequestError(f"Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx_seq}")
        max_tokens = min(int(params.get("max_tokens") or room), room)
        vocabulary = self.n_vocab
        sampling = Sampling.of(op, params)
        if plan is not None and plan.style is not None and plan.grammar is not None:
            if sampling.grammar is not None:
                raise RequestError("response_format cannot be combined with tools: a tool call has its own format")
            sampling.grammar, sampling.trigger = plan.grammar, plan.style.trigger if plan.lazy else None
        if any(token >= vocabulary or token < 0 for token in sampling.logit_bias):
            raise RequestError(f"logit_bias names a token id beyond this model's vocabulary of {vocabulary}")
        top = params.get("top_logprobs")
        request = Request(job_id, op, prompt, sampling, max_tokens=max_tokens, stop=stop, echo=echo,
                          top_logprobs=None if top is None else int(top), tag=tag)
        if plan is not None and plan.style is not None:
            request.tool_style = plan.style
            if not plan.lazy:  # the grammar makes the whole answer a call
                request.capture = ""
        request.chain = sampling.chain(self.vocab, self.n_vocab)
        self.waiting.append(request)
        self.changed = True

    def count(self, params: dict[str, Any]) -> int:
        """The prompt tokens of a chat (or, given a `prompt`, a completion), as `submit` would make them."""
        if "messages" in params:
            return len(self._chat.prompt(params)[1])
        return len(self._completion_tokens(params["prompt"]))

    def _completion_tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def cancel(self, job_ids: set[str]) -> None:
        """Stop the named jobs at this step: their slots are free for the next."""
        for request in [*self.active(), *self.waiting]:
            if request.id in job_ids:
                self._finish(request, "cancelled")
        self._report_changes()

    def active(self) -> list[Request]:
        return [slot.request for slot in self.slots if slot.request is not None]

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(slot.request is not None for slot in self.slots)

    def report(self) -> dict[str, Any]:
        """What the worker holds and does, for the router: each slot (busy, tokens held), per request (by tag) the
        largest fraction of its prompt a slot or the RAM cache holds (1 for a request running or waiting: it will
        be held), the requests waiting for a slot and the prompt tokens still to evaluate."""
        held = self.prompt_cache.holdings() if self.prompt_cache is not None else {}
        for slot in self.slots:
            if slot.tag and slot.tokens:
                held[slot.tag] = max(held.get(slot.tag, 0.0), min(1.0, len(slot.tokens) / max(1, slot.prompt_len)))
        for request in [*self.active(), *self.waiting]:
            held[request.tag] = 1.0
        pending = sum(len(r.prompt) - r.evaluated for r in [*self.active(), *self.waiting])
        self.changed = False
        return {"type": "slots", "busy": [slot.request is not None for slot in self.slots],
                "tokens": [len(slot.tokens) for slot in self.slots], "held": held, "waiting": len(self.waiting),
                "pending_tokens": pending}

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> None:
        """Admit what fits, decode one batch, sample every request that got logits; report what changed. What
        admitting changed is reported before any of the new requests' tokens is sent, so the router hears where a
        request is held before it hears the request started."""
        self._admit()
        self._report_changes()
        try:
            self._decode()
        finally:
            self._report_changes()

    def _report_changes(self) -> None:
        if self.changed:
            self.send(self.report())

    def _decode(self) -> None:
        entries = self._fill_batch()
        if not entries:
            return
        result = llama_cpp.llama_decode(self.ctx, self._batch)
        if result == 1 and self._evict_idle(self._batch.n_tokens):
            result = llama_cpp.llama_decode(self.ctx, self._batch)
        if result != 0:
            raise RuntimeError(f"llama_decode failed ({result}) on a batch of {self._batch.n_tokens} tokens")
        for request, index in entries:
            if request.slot is not None:  # not cancelled meanwhile
                self._sample(request, index)

    def _admit(self) -> None:
        while self.waiting:
            request = self.waiting[0]
            slot = self._place(request)
            if slot is None:
                return
            self.waiting.pop(0)

    def _place(self, request: Request) -> Slot | None:
        """Give the request a slot, starting from the longest prefix any slot, or the RAM cache, holds."""
        idle = [s for s in self.slots if s.request is None]
        if not idle:
            return None
        prompt = request.prompt
        source, shared = max(((s, common_prefix(s.tokens, prompt)) for s in self.slots), key=lambda p: p[1])
        if source.request is None and shared > 0:
            slot = source
        else:
            # An empty slot first, else the one idle longest (its cells are the least likely to be asked for).
            slot = min(idle, key=lambda s: (bool(s.tokens), s.last_used))
        found = self.prompt_cache.best(prompt) if self.prompt_cache is not None else None
        if found is not None and found[2] > shared and self._restore(slot, found):
            shared = found[2]
        elif slot is source:
            if len(slot.tokens) > shared:
                self._save(slot)  # the part cut off below stays within reach, from RAM
        else:
            self._release_cells(slot)
            if shared > 0:
                llama_cpp.llama_memory_seq_cp(self.memory, source.seq_id, slot.seq_id, 0, shared)
                slot.tokens = prompt[:shared]
        # The last prompt token is always decoded again: sampling needs its logits.
        shared = min(shared, len(prompt) - 1)
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, shared, -1)
        del slot.tokens[shared:]
        slot.request, request.slot = request, slot
        slot.tag, slot.prompt_len = request.tag, len(prompt)
        request.evaluated = request.cached = shared
        self.changed = True
        return slot

    def _restore(self, slot: Slot, found: tuple[tuple[int, ...], bytes, int]) -> bool:
        """Replace what the slot holds (kept in RAM) with a state from the RAM cache."""
        key, data, _ = found
        self._release_cells(slot)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(self.ctx, buffer, len(data), slot.seq_id) != len(data):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, 0, -1)
            return False
        slot.tokens = list(key)
        return True

    def _save(self, slot: Slot) -> None:
        if slot.tokens and self.prompt_cache is not None:
            size = llama_cpp.llama_state_seq_get_size(self.ctx, slot.seq_id)
            buffer = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_seq_get_data(self.ctx, buffer, size, slot.seq_id)
            held = min(1.0, len(slot.tokens) / max(1, slot.prompt_len))
            self.prompt_cache.put(slot.tokens, ctypes.string_at(buffer, written), slot.tag, held)

    def _release_cells(self, slot: Slot) -> None:
        """Empty a slot, keeping what it held in the RAM cache (the second tier)."""
        self._save(slot)
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, 0, -1)
        slot.tokens = []
        self.changed = True

    def _evict_idle(self, needed: int) -> bool:
        """Free the cells of idle slots, least recently used first, until `needed` more fit; False if none was."""
        freed = False
        for slot in sorted((s for s in self.slots if s.request is None and s.tokens), key=lambda s: s.last_used):
            self._release_cells(slot)
            freed = True
            if self._cells_used() + needed <= self.n_cells:
                break
        return freed

    def _cells_used(self) -> int:
        # An upper bound: cells shared by several sequences count once in llama.cpp, here once per sequence.
        return sum(len(s.tokens) for s in self.slots)

    def _fill_batch(self) -> list[tuple[Request, int]]:
        """One token of every generating request, then a chunk of the oldest pending prompt up to the batch size;
        returns who gets logits at which batch index.

        One prompt per batch: with flash attention, llama.cpp 0.3.36 answers wrongly when a batch prefills three
        or more sequences at once (the third of three identical prompts says "La femme de France..." instead of
        "Paris"); one prompt chunk beside single generated tokens is always right. The next prompt waits a step."""
        batch = self._batch
        batch.n_tokens = 0
        entries: list[tuple[Request, int]] = []
        pending: list[Request] = []
        for request in self.active():
            slot = request.slot
            assert slot is not None
            if request.prefilling:
                pending.append(request)
            else:
                assert request.next_token is not None
                entries.append((request, self._add(slot, request.next_token, logits=True)))
        if pending:
            request = min(pending, key=lambda r: r.order)
            slot = request.slot
            assert slot is not None
            chunk = request.prompt[request.evaluated:request.evaluated + self.n_batch - batch.n_tokens]
            for offset, token in enumerate(chunk):
                last = request.evaluated + offset == len(request.prompt) - 1
                index = self._add(slot, token, logits=last)
                if last:
                    entries.append((request, index))
            request.evaluated += len(chunk)
        if batch.n_tokens and self._cells_used() > self.n_cells:
            self._evict_idle(0)
        return entries

    def _add(self, slot: Slot, token: int, *, logits: bool) -> int:
        batch = self._batch
        i = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = len(slot.tokens)
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = slot.seq_id
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        slot.tokens.append(token)
        return i

    # -- sampling and text ---------------------------------------------------------------------
    def _sample(self, request: Request, index: int) -> None:
        token = llama_cpp.llama_sampler_sample(request.chain, self.ctx, index)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            self._finish(request, "stop")
            return
        request.completion_tokens += 1
        request.next_token = token
        piece = _piece(self.vocab, token)
        text = request.decoder.decode(piece)
        if request.top_logprobs is not None:
            request.logprobs.append((self._logprob(index, token, piece, request.top_logprobs), request.text_length))
        request.text_length += len(text)
        if self._emit(request, text):
            return
        slot = request.slot
        assert slot is not None
        if request.completion_tokens >= request.max_tokens or len(slot.tokens) + 1 >= self.n_ctx_seq:
            self._finish(request, "length")

    def _logprob(self, index: int, token: int, piece: bytes, top: int) -> dict[str, Any]:
        """OpenAI's logprobs entry for a sampled token: its log-probability under the model (before sampling's
        filters) and the `top` likeliest tokens'."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak).sum()))

        def entry(tok: int, data: bytes) -> dict[str, Any]:
            return {"token": data.decode("utf-8", "replace"), "logprob": float(logits[tok]) - log_total,
                    "bytes": list(data)}

        best = np.argpartition(logits, -top)[-top:] if top else np.array([], dtype=int)
        alternatives = [entry(int(t), _piece(self.vocab, int(t))) for t in best[np.argsort(-logits[best])]]
        return {**entry(token, piece), "top_logprobs": alternatives}

    def _emit(self, request: Request, text: str) -> bool:
        """Send what can be sent of the text so far; True when a stop string ended the request. From a tool
        call's marker on, the text is kept to be sent as calls when the answer ends."""
        if request.capture is not None:
            request.capture += text
            return False
        held = request.held + text
        for stop in request.stop:
            at = held.find(stop)
            if at >= 0:
                self._chunk(request, held[:at])
                request.held = ""
                self._finish(request, "stop", stop)
                return True
        style = request.tool_style
        opener = None
        if style is not None and (style.anywhere or not request.sent_text):
            at = style.find(held)
            if at >= 0:
                self._chunk(request, held[:at])
                request.held, request.capture = "", held[at:]
                return False
            start = held.lstrip()
            if not style.anywhere and (not start or start.startswith(style.opener) and len(start) < START_HOLD):
                request.held = held  # it may yet be the start of a call
                return False
            opener = style.opener
        # Hold back the end that could be the start of a stop string (or of a tool call's marker).
        watched = [*request.stop, opener] if opener is not None else request.stop
        keep = max((k for s in watched for k in range(min(len(s) - 1, len(held)), 0, -1) if held.endswith(s[:k])),
                   default=0)
        self._chunk(request, held[:len(held) - keep])
        request.held = held[len(held) - keep:]
        return False

    def _chunk(self, request: Request, text: str, finish_reason: str | None = None,
               tool_calls: list[dict[str, Any]] | None = None) -> None:
        if not text and finish_reason is None and tool_calls is None and (request.started_role or
                                                                          request.op != "chat"):
            return
        request.sent_text = request.sent_text or bool(text.strip())
        logprobs = _logprobs(request.op, request.logprobs) if request.logprobs else None
        request.logprobs = []
        if request.op == "chat":
            delta: dict[str, Any] = {} if finish_reason else {"content": text} if text else {}
            if tool_calls is not None:
                delta = {"tool_calls": tool_calls}
            if not request.started_role:
                delta = {"role": "assistant", **delta}
                request.started_role = True
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs,
                                      "finish_reason": finish_reason}
            data = {"id": request.id, "object": "chat.completion.chunk", "created": request.created, "model": "",
                    "choices": [choice]}
        else:
            if request.echo is not None:
                text, request.echo = request.echo + text, None
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
            data = {"id": request.id, "object": "text_completion", "created": request.created, "model": "",
                    "choices": [choice]}
        self.send({"id": request.id, "type": "chunk", "data": data})

    def _finish(self, request: Request, reason: str, stop_sequence: str | None = None) -> None:
        """End a request: the rest of its text (or its tool calls), the finish chunk, and `done` with its usage and
        the stop string that ended it, if one did (Anthropic's stop_sequence)."""
        if reason != "cancelled":
            tail = request.held + request.decoder.decode(b"", final=True)
            if request.capture is not None and request.tool_style is not None:
                captured = request.capture + tail
                calls = tools.parse(request.tool_style, captured)
                if calls:  # cut off by max_tokens, the answer still says "length"
                    self._chunk(request, "", tool_calls=calls)
                    reason = "tool_calls" if reason == "stop" else reason
                else:  # cut off inside its first call: what there is, as text
                    self._chunk(request, captured)
            elif reason != "stop" or not any(s in tail for s in request.stop):
                self._chunk(request, tail)
            self._chunk(request, "", finish_reason=reason)
        prompt = len(request.prompt)
        usage = {"prompt_tokens": prompt, "completion_tokens": request.completion_tokens,
                 "total_tokens": prompt + request.completion_tokens, "cached_tokens": request.cached}
        self._free(request)
        self.send({"id": request.id, "type": "done", "finish_reason": None if reason != "cancelled" else reason,
                   "usage": usage if reason != "cancelled" else None, "stop_sequence": stop_sequence,
                   "threads": [self.llm.n_threads, self.llm.n_threads_batch]})

    def drop(self, request: Request) -> None:
        """Forget a request without a word to its client (the caller told it why)."""
        self._free(request)

    def _free(self, request: Request) -> None:
        self.changed = True
        if request in self.waiting:
            self.waiting.remove(request)
        if request.chain is not None:
            llama_cpp.llama_sampler_free(request.chain)
            request.chain = None
        slot = request.slot
        if slot is not None:
            slot.request, request.slot = None, None
            slot.last_used = time.monotonic()
            if request.prefilling:  # cancelled mid-prompt: what it evaluated is a prefix all the same
                del slot.tokens[request.evaluated:]


def _logprobs(op: str, entries: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    """A chunk's logprobs in its endpoint's shape: chat's list of entries, or the legacy completions' columns."""
    if op == "chat":
        return {"content": [entry for entry, _ in entries]}
    return {"tokens": [entry["token"] for entry, _ in entries],
            "token_logprobs": [entry["logprob"] for entry, _ in entries],
            "top_logprobs": [{alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]} for entry, _ in entries],
            "text_offset": [offset for _, offset in entries]}


def _piece(vocab: Any, token: int) -> bytes:
    buffer = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if n < 0:
        buffer = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[:n]


class ChatPrompt:
    """A conversation as the model's prompt tokens: its own chat template, as llama-cpp-python renders it
    (sandboxed jinja2), then its tokenizer."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        model = llm._model
        eos = model.token_eos()
        bos = model.token_bos()
        template = llm.metadata.get("tokenizer.chat_template") or CHATML
        self.llm = llm
        self.tool_style = tool_style(template)  # None: tools reach the model through tools.py's fallback
        self.formatter = Jinja2ChatFormatter(
            template=template, eos_token=model.token_get_text(eos) if eos >= 0 else "",
            bos_token=model.token_get_text(bos) if bos >= 0 else "", stop_token_ids=[eos])

    def prompt(self, params: dict[str, Any]) -> tuple[tools.ToolPlan, list[int], list[str]]:
        """A chat request's prompt: how its tools are offered (tools.py), its tokens, its template's stop strings."""
        plan = tools.plan(params, self.tool_style)
        prompt, stops = self.tokens(plan.messages, plan.tools)
        return plan, prompt, stops

    def tokens(self, messages: list[Any], tools: list[Any] | None = None) -> tuple[list[int], list[str]]:
        """The prompt's tokens, and the stop strings the template asks for; `tools` for a template that renders
        tool definitions itself."""
        rendered = self.formatter(messages=messages, tools=tools)
        prompt = self.llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True)
        stops = [rendered.stop] if isinstance(rendered.stop, str) else list(rendered.stop or [])
        return prompt, [s for s in stops if s]
