"""A request as the router sees it, the decision it makes, and how the request ended.

Plain values shared by the router, the engine and the observers of a finished request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core.catalog import capabilities as caps
from app.core.routing.needs import QueryNeeds
from app.core.routing.strategies.base import Outcome, RouteContext, Target
from app.core.runtime.pool import worker_key

AUTO = "auto"
ENDPOINT_CAPABILITY = {"chat": caps.CHAT, "completion": caps.COMPLETION, "embeddings": caps.EMBEDDINGS}


@dataclass(frozen=True, slots=True)
class RouteRequest:
    endpoint: str  # "chat" | "completion" | "embeddings"
    model: str | None = None
    capabilities: tuple[str, ...] = ()  # explicit, from the request's `capabilities` field
    needs: QueryNeeds | None = None  # what the query translator inferred (None: nothing inferred)
    session_key: str | None = None
    user: str | None = None
    api_key_id: str | None = None
    request_id: str = ""
    surface: str = "openai"  # the API it came through: "openai" | "responses" | "anthropic" | "ollama"

    @property
    def hard(self) -> frozenset[str]:
        inferred = self.needs.hard if self.needs else frozenset()
        return inferred | {c.lower() for c in self.capabilities} | {ENDPOINT_CAPABILITY[self.endpoint]}

    @property
    def soft(self) -> frozenset[str]:
        return self.needs.soft if self.needs else frozenset()

    @property
    def min_context(self) -> int:
        return self.needs.min_context if self.needs else 0


@dataclass(frozen=True, slots=True)
class Candidate:
    model_id: str
    score: float
    filtered: bool
    reason: str
    replica: int = 0


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    model_id: str
    strategy: str
    reason: str
    total_score: float = 0.0
    candidates: tuple[Candidate, ...] = ()
    replica: int = 0
    retried_from: str | None = None  # the model that failed before this one was tried
    detail: Mapping[str, Any] = field(default_factory=dict)
    target: Target | None = None
    context: RouteContext | None = None

    @property
    def key(self) -> str:
        return worker_key(self.model_id, self.replica)

    def explain(self) -> dict[str, Any]:
        """The dry-run shape of the management API."""
        return {
            "model_id": self.model_id,
            "replica": self.replica,
            "strategy": self.strategy,
            "reason": self.reason,
            "total_score": self.total_score,
            "retried_from": self.retried_from,
            "detail": dict(self.detail),
            "candidates": [
                {"model_id": c.model_id, "replica": c.replica, "score": c.score, "filtered": c.filtered,
                 "reason": c.reason}
                for c in self.candidates
            ],
        }


@dataclass(frozen=True, slots=True)
class Finished:
    """A request that ended, however it ended: what every observer of a finished request is told."""

    decision: RoutingDecision
    request: RouteRequest
    outcome: Outcome
    status: int  # the HTTP status it ended with (499: the client went away)
    ended_at: float  # monotonic seconds
