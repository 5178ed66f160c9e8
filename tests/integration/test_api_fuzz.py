"""Every operation of a real `switchboard serve` fuzzed from the server's own OpenAPI schema (schemathesis).

Each operation gets schemathesis's coverage cases (boundary values, wrong types, missing fields, methods it does
not allow) and random valid and invalid requests; then the operations on one model get them again aimed at the
real default model instead of a random id. Every answer must be clean: no 500 or other 5xx, a 503 only for a
model that really cannot serve, and every error body (and every error event in a stream) in the error shape of
the API surface it came through: OpenAI's envelope, Anthropic's on /v1/messages, Ollama's on its paths.
Afterwards the settings the fuzz may have changed are put back, and `/health` and a normal chat completion to the
default model must still answer.

The default model is loadable throughout, so a 503 that names it means a request's own fault was blamed on the
model (issue 9: bad input never hurts anyone else). Models the fuzz adds (remote backends at random URLs) may be
unavailable; a 503 about them is fine. DELETE /api/models/{id} stays in: it removes only remote backends.
Every request carries the admin key, so API keys the fuzz creates (which turn authentication on) change nothing.
Generations are capped at a few tokens and models at two workers, so the run takes seconds per operation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode, Response
from schemathesis.core.result import Err, Ok
from schemathesis.schemas import APIOperation, BaseSchema

from app.core import errors
from app.server.errors import surface_of
from tests.support.examples import examples
from tests.support.servers import Served, start_server

EXAMPLES = examples(25)  # per operation and generation mode
# Each generating operation and the fields its token budget may be in (the first is set when none is).
GENERATING = {"/v1/chat/completions": ("max_tokens", "max_completion_tokens"), "/v1/completions": ("max_tokens",),
              "/v1/responses": ("max_output_tokens",), "/v1/messages": ("max_tokens",)}
OLLAMA_GENERATING = frozenset({"/api/chat", "/api/generate"})  # their budget is options.num_predict
STREAMS = ("text/event-stream", "application/x-ndjson")
MAX_TOKENS = 8
MAX_REPLICAS = 2
TIMEOUT_S = 60
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
ADMIN_KEY = "fuzz-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _codes(cls: type[errors.SwitchboardError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


UNAVAILABLE_CODES = frozenset(_codes(errors.ModelUnavailable))  # what a 503 may say


@dataclass
class Findings:
    """Problems by (operation, kind), each with how often it was seen and the first request that showed it."""

    seen: dict[tuple[str, str], list[Any]] = field(default_factory=dict)

    def add(self, label: str, kind: str, detail: str) -> None:
        entry = self.seen.setdefault((label, kind), [0, detail])
        entry[0] += 1

    def report(self) -> str:
        return "\n\n".join(f"{label}: {kind} (x{count})\n{detail}"
                           for (label, kind), (count, detail) in self.seen.items())


@pytest.mark.timeout(900)  # every operation of four API surfaces and the management API: minutes, not seconds
def test_every_operation_answers_fuzzed_requests_cleanly(tmp_path: Path) -> None:
    # The hub at a port nobody listens on: the library's operations fail at once, and nothing leaves the machine.
    served = start_server(tmp_path, env={"SWITCHBOARD_API_KEY": ADMIN_KEY, "HF_ENDPOINT": "http://127.0.0.1:9"})
    try:
        models = httpx.get(f"{served.base_url}/v1/models", headers=ADMIN).json()["data"]
        assert len(models) == 1, models
        model_id = models[0]["id"]
        strategy = httpx.get(f"{served.base_url}/api/router", headers=ADMIN).json()["strategy"]
        schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json", headers=ADMIN)
        schema.config.output.sanitization.update(enabled=False)  # the report shows the request as it was sent
        results = list(schema.get_all_operations())
        assert all(isinstance(result, Ok) for result in results), [r.err() for r in results if isinstance(r, Err)]
        operations = [result.ok() for result in results if isinstance(result, Ok)]
        with requests.Session() as session:
            fuzz = Fuzz(schema, session, model_id)
            for operation in operations:
                fuzz.run(operation)
            for operation in operations:
                if "{model_id}" in operation.path:
                    fuzz.run(operation, at_model=True)
        _restore(served, model_id, strategy)
        _still_serves(served, model_id, fuzz.findings)
        assert not fuzz.findings.seen, f"{len(fuzz.findings.seen)} problem(s):\n\n{fuzz.findings.report()}"
    finally:
        served.stop()


@dataclass
class Fuzz:
    schema: BaseSchema
    session: requests.Session
    model_id: str
    findings: Findings = field(default_factory=Findings)

    def run(self, operation: APIOperation, *, at_model: bool = False) -> None:
        """Schemathesis's coverage cases (each parameter's boundaries, wrong types, unexpected methods), then
        random valid and invalid requests; with `at_model`, every one aimed at the default model."""
        label = operation.label + (" (the default model)" if at_model else "")
        coverage = self.schema.config.generation_for(operation=operation, phase="coverage")
        for case in self.schema.iter_coverage_cases(operation, generation_modes=MODES, generation_config=coverage):
            self._send(case, label, at_model)
        for mode in MODES:
            # Problems are collected, not raised: one run reports every kind of failure, and nothing is shrunk.
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case: Case) -> None:
                self._send(case, label, at_model)

            try:
                send()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # Nothing about this operation can be invalid (no parameters, or only free-form strings).

    def _send(self, case: Case, label: str, at_model: bool) -> None:
        if at_model:
            case.path_parameters = {**(case.path_parameters or {}), "model_id": self.model_id}
        _bound(case)
        try:
            response = case.call(session=self.session, headers=ADMIN, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            self.findings.add(label, f"no answer ({type(exc).__name__})", case.as_curl_command(headers=ADMIN))
            return
        for kind in _problems(response, self.model_id, surface_of(case.operation.path)):
            self.findings.add(label, kind, f"{case.as_curl_command(headers=ADMIN)}\n"
                                           f"-> {response.status_code} {response.text[:500]}")


def _bound(case: Case) -> None:
    """Keep generations to a few tokens and models to two workers, so the fuzz stays within seconds."""
    body = case.body
    if not isinstance(body, dict):
        return
    limits = GENERATING.get(case.operation.path, ())
    for name in limits:
        _cap(body, name, MAX_TOKENS)
    if limits and all(body.get(name) is None for name in limits):
        body[limits[0]] = MAX_TOKENS
    if case.operation.path in OLLAMA_GENERATING:
        options = body.setdefault("options", {})
        if isinstance(options, dict):
            _cap(options, "num_predict", MAX_TOKENS)
            options.setdefault("num_predict", MAX_TOKENS)
    _cap(body, "replicas", MAX_REPLICAS)


def _cap(body: dict[str, Any], name: str, limit: int) -> None:
    """Lower a valid integer above `limit`; anything else (an invalid value under test) stays as generated."""
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value > limit:
        body[name] = limit


def _problems(response: Response, model_id: str, shape: str) -> list[str]:
    status = response.status_code
    if status < 400:
        if not any(value.startswith(STREAMS) for value in response.headers.get("content-type", [])):
            return []
        problems = []
        for line in response.text.splitlines():
            line = line.removeprefix("data: ") if shape != "ollama" else line
            if not line.startswith("{"):
                continue  # SSE's event: lines, [DONE], blank lines
            try:
                event = json.loads(line)
            except ValueError:
                problems.append("a stream event is not JSON")
                continue
            if isinstance(event, dict) and ("error" in event or event.get("type") == "error"):
                problems.extend(_error_problems(event, None, model_id, shape))
        return problems
    if status == 405 and "allow" not in response.headers:
        return ["405 without the Allow header"]
    try:
        body = response.json()
    except ValueError:
        return [f"{status} body is not JSON"]
    return _error_problems(body, status, model_id, shape)


def _error_problems(body: Any, status: int | None, model_id: str, shape: str) -> list[str]:
    """What is wrong with an error answer; `status` None for an error event inside a stream that began as 200."""
    where = "error event in a stream" if status is None else str(status)
    if status is None and shape == "openai" and body.get("type") == "error":
        # The Responses API's error event: {"type": "error", "code", "message", "param", "sequence_number"}.
        body = {"error": {"message": body.get("message"), "type": "server_error" if body.get("code") in
                          UNAVAILABLE_CODES else "invalid_request_error", "param": body.get("param"),
                          "code": body.get("code")}}
    problem = {"openai": _envelope_problem, "anthropic": _anthropic_problem, "ollama": _ollama_problem}[shape](body)
    if problem:
        return [f"{where} not in the {shape} error shape: {problem}"]
    error = body["error"]
    message = error if shape == "ollama" else error["message"]
    if status is None:
        failed = error.get("type") in ("server_error", "api_error", "overloaded_error") if shape != "ollama" else False
    else:
        failed = status >= 500
    if not failed:
        return []
    if status not in (None, 503) or (shape == "openai" and error["code"] not in UNAVAILABLE_CODES):
        return [f"{where} ({message[:80]}): only a model that cannot serve may fail a request"]
    if model_id in message:
        return [f"{where} blaming the default model, which is loadable: a request's own fault counted against it"]
    return []


def _anthropic_problem(body: Any) -> str | None:
    """Why `body` is not {"type": "error", "error": {"type": str, "message": str}}, or None."""
    if not isinstance(body, dict) or body.get("type") != "error" or not isinstance(body.get("error"), dict):
        return f"not {{'type': 'error', 'error': {{...}}}}: {body!r:.200}"
    if not isinstance(body["error"].get("type"), str) or not isinstance(body["error"].get("message"), str):
        return f"type/message not strings: {body!r:.200}"
    return None


def _ollama_problem(body: Any) -> str | None:
    """Why `body` is not {"error": str}, or None."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], str):
        return f"not {{'error': '...'}}: {body!r:.200}"
    return None


def _envelope_problem(body: Any) -> str | None:
    """Why `body` is not {"error": {"message": str, "type": str, "param": str|null, "code": str|null}}, or None."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"not {{'error': {{...}}}}: {body!r:.200}"
    error = body["error"]
    if set(error) != {"message", "type", "param", "code"}:
        return f"keys {sorted(error)}"
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        return f"message/type not strings: {error!r:.200}"
    if not all(error[key] is None or isinstance(error[key], str) for key in ("param", "code")):
        return f"param/code neither string nor null: {error!r:.200}"
    return None


def _restore(served: Served, model_id: str, strategy: str) -> None:
    """Put back what the fuzz may have changed on the default model and the router."""
    patch = {"enabled": True, "aliases": [], "reset_capabilities": True, "weight": 1.0, "fallbacks": [],
             "replicas": 1, "quota": {}}
    with httpx.Client(base_url=served.base_url, headers=ADMIN, timeout=TIMEOUT_S) as client:
        responses = (client.patch(f"/api/models/{model_id}", json=patch),
                     client.post(f"/api/models/{model_id}/pin", json={"pinned": False}),
                     client.put("/api/router", json={"strategy": strategy}))
    for response in responses:
        assert response.status_code == 200, (response.request.url, response.text)


def _still_serves(served: Served, model_id: str, findings: Findings) -> None:
    health = httpx.get(f"{served.base_url}/health", headers=ADMIN, timeout=TIMEOUT_S)
    if health.status_code != 200:
        findings.add("after the fuzz", f"/health answered {health.status_code}", health.text[:500])
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=TIMEOUT_S)
    try:
        answer = client.chat.completions.create(model=model_id, temperature=0, max_tokens=MAX_TOKENS,
                                                messages=[{"role": "user", "content": "Say hello."}])
    except openai.APIError as exc:
        findings.add("after the fuzz", "a normal chat completion failed", repr(exc))
        return
    if not answer.choices[0].message.content:
        findings.add("after the fuzz", "a normal chat completion answered nothing", repr(answer))
