"""``memoria-operator run``: the operator process (kopf, plus the operator's own election)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from memoria.errors import SettingsError


def run(namespaces: list[str], liveness: str | None, leader_election: bool) -> int:
    import kopf

    from memoria.contract import load_api_client

    from . import handlers  # noqa: F401 - registers the handlers
    from .config import load_config
    from .election import OperatorElection
    from .kube import Kube

    try:
        config = load_config()
    except SettingsError as exc:
        print(f"memoria-operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .liveness import LIVENESS

    if liveness:
        LIVENESS.serve(liveness)
    election = None
    if leader_election and config.leader_election:
        LIVENESS.state = "standby"
        election = OperatorElection(Kube(load_api_client()), config)
        election.acquire()
        election.keep_renewing()
    LIVENESS.state = "leading"
    LIVENESS.beat()
    verbose = os.environ.get("MEMORIA_OPERATOR_VERBOSE") == "1"
    logging.getLogger().handlers.clear()  # kopf installs its own handler: no double lines
    kopf.configure(verbose=verbose)
    if not verbose:
        # kopf logs every handler run at INFO; our own modules say what matters
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=not namespaces,
                namespaces=namespaces,
                # no liveness_endpoint: LIVENESS above already serves that port
                standalone=True,
            )
        )
    finally:
        if election is not None:
            election.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memoria-operator")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the operator")
    scope = p_run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all namespaces",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    p_run.add_argument(
        "--liveness",
        default=os.environ.get("MEMORIA_OPERATOR_LIVENESS"),
        help="serve the liveness probe, e.g. http://0.0.0.0:8080/healthz (answers while "
        "standing by too)",
    )
    p_run.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act at once, without the operator Lease (one replica only)",
    )
    args = parser.parse_args(argv)
    return run(args.namespace, args.liveness, not args.no_leader_election)


if __name__ == "__main__":
    sys.exit(main())
