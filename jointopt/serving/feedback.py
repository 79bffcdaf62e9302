"""``POST /v1/feedback`` and ``GET /metrics``: labelled outcomes for the serving monitor
and its counters (:mod:`jointopt.serving.monitor`, :mod:`jointopt.serving.metrics`).

``POST /v1/feedback`` takes ``{"id": "<response id>", "correct": true}`` or
``{"id": ..., "reference": "<the right answer>"}`` (matched with the policy's own
matcher) and answers with the policy's current accuracy bounds, the active policy and
the event it caused (``switched``, ``alert`` or null). Each response takes one feedback;
an unknown id is a 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from jointopt.errors import JointoptError
from jointopt.serving.errors import status_of
from jointopt.serving.metrics import CONTENT_TYPE

__all__ = ["FeedbackRequest", "add_monitor_routes"]


class FeedbackRequest(BaseModel):
    """A ``POST /v1/feedback`` body."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    """The ``id`` of the proxy's response."""
    correct: bool | None = None
    """Whether the answer was right."""
    reference: str | None = Field(None, max_length=100_000)
    """The right answer (instead of ``correct``), matched with the policy's matcher."""


def add_monitor_routes(app: FastAPI) -> None:
    """Add the two routes; the monitor is ``app.state.monitor``."""

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
        monitor = request.app.state.monitor
        try:
            outcome = monitor.feedback(body.id, correct=body.correct, reference=body.reference)
        except JointoptError as exc:
            raise status_of(exc) from None
        return {"object": "feedback", "id": body.id, **outcome}

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.app.state.monitor.metrics_text(),
                                 media_type=CONTENT_TYPE)
