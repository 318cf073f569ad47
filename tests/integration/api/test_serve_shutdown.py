"""SIGTERM during a burst of writes loses no accepted write and no event."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from memoria.store import MemoryStore
from testbed import MemoriaProcess, RedisServer, wait_until
from testbed.inprocess import Broker, Region, sqlite_url

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_sigterm_during_burst_loses_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    broker = Broker("redis", redis_server.url, redis_server.url)
    sync_env = {
        "MEMORIA_SYNC__ENABLED": "true",
        "MEMORIA_SYNC__BACKEND": "redis",
        "MEMORIA_SYNC__CONNECTION_URL": redis_server.url,
        "MEMORIA_SYNC__CHANNEL": broker.channel,
        "DISABLE_SCHEDULERS": "true",
    }
    a = MemoriaProcess("region-a", sync_env, workdir=tmp_path / "a")
    (tmp_path / "a").mkdir()
    a.start()
    b = Region("region-b", sqlite_url(tmp_path, "b"), broker.sync(reader=True)).start()
    accepted: list[str] = []
    refused = 0
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            status, body = a.request("POST", "/memories", {"text": f"w{n}-{i}", "y_coord": 0})
            i += 1
            with lock:
                if status == 201:
                    accepted.append(body["id"])
                else:
                    refused += 1
                    if status == 0:
                        time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(accepted) > 300, what="a burst under way")
    a.stop()  # SIGTERM in the middle of it
    stop.set()
    for t in threads:
        t.join()
    assert refused > 0  # writes kept coming after the shutdown began
    store = MemoryStore(a.env["MEMORIA_DATABASE__CONNECTION_STRING"])
    try:
        stored = {m.id for m in store.list_memories(limit=100_000)}
        assert set(accepted) <= stored, "an accepted write is missing from the store"
        queued = store.outbox_depth("region-a")
    finally:
        store.close()
    if queued:
        a.start()  # what the shutdown could not flush goes out at the next start
    wait_until(lambda: set(accepted) <= b.ids(), timeout=30, what="every accepted write at b")
    assert b.store.count_memories() == len(accepted)
    b.stop()
    a.stop()
    assert "Application shutdown complete" in a.log_path.read_text()


def test_invalid_settings_stop_serve_naming_the_variable(tmp_path: Path) -> None:
    proc = MemoriaProcess(
        "bad",
        {
            "MEMORIA_SYNC__BACKEND": "kafka",
            "MEMORIA_SYNC__CONNECTION_URL": "redis://:hunter2@r:6379/0",
        },
        workdir=tmp_path,
    )
    proc.start(wait=False)
    assert proc.proc is not None and proc.proc.proc is not None
    code = proc.proc.proc.wait(30)
    log = proc.log_path.read_text()
    assert code == 2
    assert "MEMORIA_SYNC__BACKEND" in log
    assert "hunter2" not in log
