"""Rollouts where no kubelet runs: the deployment controller's and the kubelet's part for the
region bed's ``control: env`` regions, whose pods read ``DISABLE_SCHEDULERS`` only when they
start.

When a region's Deployment has a generation not rolled out yet, :class:`RolloutPlayer` does
what a ``Recreate`` rollout does, in order: the old process (the old pod) is stopped with SIGTERM
and has exited, a new process starts with the environment of the new template, and only then the
Deployment's status says so (``observedGeneration``, ``updatedReplicas``, Available). The status
never claims more than is true: while it says the old generation, the operator cannot count the
rollout as complete. A region that is *held* is not rolled at all (its part of the cluster is
down), so its Deployment's status stays behind its spec until it is released.

Each region is rolled by a thread of its own, as a cluster rolls Deployments independently: the
order of two regions' rollouts is the operator's doing, never the player's. Every rollout is
recorded (region, generation, when it started, when its status was written), so tests can check
that order without timing anything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memoria.contract import load_api_client
from memoria_operator.kube import Kube, path_for

if TYPE_CHECKING:
    from .regions import RegionBed


@dataclass(frozen=True)
class Rollout:
    region: str
    generation: int
    started: float  # time.monotonic() when the old process was told to stop
    finished: float  # ... when the status said the new generation is rolled out
    disable_schedulers: str  # DISABLE_SCHEDULERS of the new template


def rolled_out_status(generation: int) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "observedGeneration": generation,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "rolled out by the test bed's rollout player (no kubelet here)",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            }
        ],
    }


class RolloutPlayer:
    def __init__(self, bed: RegionBed, names: list[str], interval: float = 0.1) -> None:
        self.bed = bed
        self.names = names
        self.interval = interval
        self.kube = Kube(load_api_client(str(bed.kube.kubeconfig)))
        self.rolled: dict[str, int] = {}  # the generation each region runs
        self.history: list[Rollout] = []
        self.errors: list[str] = []
        self._held: set[str] = set()
        self._locks = {name: threading.Lock() for name in names}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"rollouts-{n}", daemon=True)
            for n in names
        ]

    def _path(self, name: str) -> str:
        return path_for("apps/v1", "Deployment", self.bed.namespace, f"memoria-{name}")

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def hold(self, name: str) -> None:
        """From now on, ``name`` is not rolled (the node or its part of the cluster is down);
        a rollout under way finishes first."""
        with self._locks[name]:
            self._held.add(name)

    def release(self, name: str) -> None:
        with self._locks[name]:
            self._held.discard(name)

    def _run(self, name: str) -> None:
        while not self._stop.is_set():
            with self._locks[name]:
                if name not in self._held:
                    try:
                        self._step(name)
                    except Exception as exc:  # an API hiccup: the next round looks again
                        self.errors.append(f"{name}: {exc}")
            self._stop.wait(self.interval)

    def _step(self, name: str) -> None:
        deployment = self.kube.get(self._path(name))
        if deployment is None:
            return
        generation = int(deployment["metadata"].get("generation") or 0)
        if self.rolled.get(name) == generation:
            return
        started = time.monotonic()
        old = self.bed.processes.get(name)
        if old is not None:
            old.stop()  # SIGTERM and wait: the old pod is gone before the new one starts
        self.bed.start(name, deployment=deployment)
        self.kube.merge_patch(
            self._path(name) + "/status", {"status": rolled_out_status(generation)}
        )
        self.rolled[name] = generation
        env = deployment["spec"]["template"]["spec"]["containers"][0].get("env") or []
        switch = next((e.get("value") for e in env if e["name"] == "DISABLE_SCHEDULERS"), "")
        self.history.append(Rollout(name, generation, started, time.monotonic(), switch or ""))

    def rollouts_of(self, name: str) -> list[Rollout]:
        return [r for r in self.history if r.region == name]
