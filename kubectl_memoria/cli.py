"""``kubectl memoria``: the command line (installed as the ``kubectl-memoria`` console script, so
a kubectl on the same PATH finds it as a plugin).

Exit status (see :class:`.exits.Exit`): 0 fine, 1 something needs a look (status) or the
operator refused (promote), 2 bad command line, 3 no such region or no region at all,
4 the API server could not be asked, 5 the operator did not answer in time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .exits import Exit
from .kube import Cluster, KubeError
from .render import Output, Painter, dump, status_lines, use_colour
from .status import read

if TYPE_CHECKING:
    from .actions import Outcome

EPILOG = """\
exit status: 0 fine, 1 a problem is shown (status) or the promotion was refused,
2 bad usage, 3 not found, 4 API server unreachable or forbidden, 5 no answer in time
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace of the regions (default: context's)")
    common.add_argument("--kubeconfig", help="path of the kubeconfig (default: $KUBECONFIG)")
    common.add_argument("--context", help="kubeconfig context to use")
    common.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help="format"
    )
    parser = argparse.ArgumentParser(
        prog="kubectl memoria",
        description="Day-2 operations on MemoriaRegions: status, switchover, fencing, report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser(
        "status", parents=[common], help="leader, Lease and health of each group and region"
    )
    status.add_argument("group", nargs="?", help="only this group (spec.group)")
    for name, text in (
        ("promote", "switch leadership of its group over to REGION"),
        ("fence", "keep REGION from leading (moves leadership away if it leads)"),
        ("unfence", "let REGION lead again (it does not take leadership back by itself)"),
    ):
        action = sub.add_parser(name, parents=[common], help=text)
        action.add_argument("region", metavar="REGION", help="MemoriaRegion name")
        action.add_argument(
            "--timeout", type=float, default=60, help="seconds to wait for the operator's answer"
        )
        action.add_argument(
            "--no-wait", action="store_true", help="write the request and return at once"
        )
    report = sub.add_parser(
        "report", parents=[common], help="support bundle (tar.gz), secrets redacted"
    )
    report.add_argument("-f", "--file", help="where to write it (default: ./memoria-report-...)")
    report.add_argument(
        "--operator-namespace", help="where the operator's pods run (default: search all)"
    )
    return parser


def _status(cluster: Cluster, namespace: str, group: str | None, output: Output) -> int:
    groups = read(cluster, namespace, group).report()
    if output != "table":
        dump([g.to_dict() for g in groups], output)
    else:
        for line in status_lines(groups, Painter(use_colour(sys.stdout))):
            print(line)
    if not groups:
        what = f"group {group}" if group else "MemoriaRegions"
        print(f"no {what} in namespace {namespace}", file=sys.stderr)
        return Exit.NOT_FOUND
    return Exit.PROBLEM if any(g.problems for g in groups) else Exit.OK


def _show(outcome: Outcome, output: Output) -> int:
    from .render import event_lines

    if output != "table":
        dump(outcome.to_dict(), output)
        return outcome.exit
    paint = Painter(use_colour(sys.stdout))
    colour = {"done": "green", "written": None, "refused": "red"}.get(outcome.result, "yellow")
    print(f"{outcome.action} {outcome.region}: {paint(outcome.result, colour)}: {outcome.message}")
    if outcome.result != "written":
        print("Events:")
        for line in event_lines(outcome.events, paint):
            print(line)
    return outcome.exit


def _report(cluster: Cluster, args: argparse.Namespace, namespace: str) -> int:
    from .report import build_bundle, summary

    bundle = build_bundle(cluster, namespace, args.operator_namespace)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(args.file or f"memoria-report-{namespace}-{stamp}.tar.gz")
    path.write_bytes(bundle.tarball())
    path.chmod(0o600)
    summary(bundle, str(path), args.output)
    return Exit.OK


def run(args: argparse.Namespace) -> int:
    cluster = Cluster.from_kubeconfig(args.kubeconfig, args.context)
    namespace = args.namespace or cluster.namespace
    if args.command == "status":
        return _status(cluster, namespace, args.group, args.output)
    if args.command == "report":
        return _report(cluster, args, namespace)
    from .actions import promote, set_fenced

    wait = not args.no_wait
    if args.command == "promote":
        outcome = promote(cluster, namespace, args.region, wait=wait, timeout=args.timeout)
    else:
        fenced = args.command == "fence"
        outcome = set_fenced(
            cluster, namespace, args.region, fenced, wait=wait, timeout=args.timeout
        )
    return _show(outcome, args.output)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(run(args))
    except KubeError as exc:
        print(f"kubectl memoria: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
