"""Limits on what enters through the HTTP API, applied before any parsing.

A request body larger than ``MEMORIA_MAX_BODY_BYTES`` (1 MiB by default) is answered 413 without
being parsed: a declared ``Content-Length`` is refused at once, and a body sent without one
(chunked) is counted as it arrives and refused as soon as it passes the limit. Bodies within the
limit are buffered once and handed to the application unchanged.

Error answers are capped too (:func:`capped_problems`): a body with a million unknown keys gets
twenty of them named and a count of the rest, not a 43 MB echo.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_PROBLEMS = 20
MAX_TEXT = 200


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if too_big:
                await _answer(send, 413, f"request body larger than {self.limit} bytes")
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _answer(send, 413, f"request body larger than {self.limit} bytes")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as usual

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, detail: str) -> None:
    payload = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def capped_problems(problems: dict[str, str]) -> dict[str, Any]:
    """At most :data:`MAX_PROBLEMS` problems, each path and message cut to :data:`MAX_TEXT`
    characters, and how many more there were."""
    out: dict[str, Any] = {}
    for path, message in list(problems.items())[:MAX_PROBLEMS]:
        out[path[:MAX_TEXT]] = message[:MAX_TEXT]
    if len(problems) > MAX_PROBLEMS:
        out["..."] = f"{len(problems) - MAX_PROBLEMS} more problem(s) not shown"
    return out
