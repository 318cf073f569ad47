"""The operator process's probe endpoints, served from start to exit.

kopf's own liveness endpoint only exists once kopf runs, but a standby replica waits for the
operator Lease before starting kopf and must still answer its probe. So the process serves its
own, and kopf is never given a liveness endpoint (two servers on one port is how the operator
used to die with ``address already in use`` the moment it won its Lease):

* ``/healthz`` (liveness): 200 while standing by (the election loop is alive), and 200 while
  leading as long as the leadership loop has ticked recently; 503 otherwise, so a wedged
  operator gets restarted.
* ``/readyz`` (readiness): 200 only while the API server answered within ``unreachable_after``
  seconds. A replica cut off from the API server can neither act nor stand by usefully, and the
  pod says so instead of looking Ready.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlparse

# starting: before the election; standby: waiting for the operator Lease; leading: kopf runs
LivenessState = Literal["starting", "standby", "leading"]


class Liveness:
    def __init__(self, stale_after: float = 60.0, unreachable_after: float = 15.0) -> None:
        self.stale_after = stale_after
        self.unreachable_after = unreachable_after
        self.state: LivenessState = "starting"
        self.last_beat = time.monotonic()
        self.last_api_answer: float | None = None  # monotonic time of the last API answer

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def api_answered(self) -> None:
        """The API server answered a request (any status but a transport failure or 5xx)."""
        self.last_api_answer = time.monotonic()

    def readiness(self) -> tuple[int, dict[str, object]]:
        if self.last_api_answer is None:
            return 503, {"state": self.state, "api": "never reached"}
        age = time.monotonic() - self.last_api_answer
        body: dict[str, object] = {"state": self.state, "seconds_since_api_answer": round(age, 1)}
        return (200 if age < self.unreachable_after else 503), body

    def report(self) -> tuple[int, dict[str, object]]:
        age = time.monotonic() - self.last_beat
        alive = self.state in ("starting", "standby") or age < self.stale_after
        return (200 if alive else 503), {"state": self.state, "seconds_since_tick": round(age, 1)}

    def serve(self, url: str) -> ThreadingHTTPServer:
        parsed = urlparse(url)
        path = parsed.path or "/healthz"
        routes = {path: self.report, "/readyz": self.readiness}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                code, body = route()
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return  # probes every few seconds are not worth a log line

        server = ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 8080), Handler)  # noqa: S104
        threading.Thread(target=server.serve_forever, name="liveness", daemon=True).start()
        return server


#: the one liveness state of this process
LIVENESS = Liveness()
