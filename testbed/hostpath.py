"""``python -m testbed.hostpath DIR``: make the hostPath provisioner's volumes writable by pods.

kube-controller-manager's hostPath provisioner (``--enable-hostpath-provisioner``) creates each
volume as ``/tmp/hostpath_pv/<uuid>``, owned by root with mode 0750, and the kubelet applies no
``fsGroup`` to hostPath volumes: a pod that runs as non-root, as ours do, cannot write to its own
claim ("unable to open database file"). Provisioners made for single-node clusters (kind's
local-path-provisioner) create 0777 directories instead; this small process, started with the
node, gives the hostPath provisioner's directories the same mode as soon as they appear, before
any pod can mount them (the claim is bound, the pod scheduled and the volume mounted after).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

_MODE = 0o777


def fix_once(base: Path, seen: set[str]) -> int:
    """Open every new volume directory under ``base`` to all users; returns how many."""
    fixed = 0
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name in seen or not entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.chmod(entry.path, _MODE)
            seen.add(entry.name)
            fixed += 1
    return fixed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    base = Path(args[0] if args else "/tmp/hostpath_pv")  # noqa: S108 - the provisioner's path
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    seen: set[str] = set()
    while running:
        fix_once(base, seen)
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
