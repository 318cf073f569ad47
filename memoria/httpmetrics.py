"""ASGI middleware counting the API's requests and timing them, by route template.

Labels are the route's template (``/memories/{memory_id}``, never the id: a label value per
memory would grow without bound), the method and the status code; a request no route matched
counts as ``unmatched``.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import RuntimeMetrics

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: RuntimeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # what the client sees if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # the router wrote the matched route into this same scope
            route: Any = scope.get("route")
            template = str(getattr(route, "path", "unmatched"))
            method = scope.get("method", "")
            self.metrics.observe_request(
                method if method in _METHODS else "other",
                template,
                code,
                time.perf_counter() - started,
            )
