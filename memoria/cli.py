"""``memoria serve``: run one region's API, sync and scheduler."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import SettingsError, StoreError


def _configure_logging() -> None:
    level = os.environ.get("MEMORIA_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(host: str, port: int, disable_schedulers: bool) -> int:
    import uvicorn

    from .api import create_app
    from .settings import load_settings

    try:
        settings = load_settings()
        app = create_app(settings, disable_schedulers=disable_schedulers)
    except (SettingsError, StoreError) as exc:
        print(f"memoria: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep our logging format
        access_log=False,
        # SIGTERM: stop accepting, let in-flight requests finish, then shut the runtime down
        timeout_graceful_shutdown=20,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memoria", description="Memoria region runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the region's HTTP API")
    p_serve.add_argument("--host", default=os.environ.get("MEMORIA_HOST", "127.0.0.1"))
    p_serve.add_argument("--port", type=int, default=int(os.environ.get("MEMORIA_PORT", "8080")))
    p_serve.add_argument(
        "--disable-schedulers",
        action="store_true",
        help="never run the daily decrement here (same as DISABLE_SCHEDULERS=true)",
    )
    args = parser.parse_args(argv)
    _configure_logging()
    return serve(args.host, args.port, args.disable_schedulers)


if __name__ == "__main__":
    sys.exit(main())
