"""Private Redis and PostgreSQL servers from the Debian packages, on free loopback ports.

Each server keeps its port and data across :meth:`stop` / :meth:`start`, so a test can take a
broker away in the middle of a stream and bring the same one back (``restart``), or crash it
(``kill``). Nothing here mocks anything: these are the real ``redis-server`` and ``postgres``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from .processes import ManagedProcess, free_port, wait_until

HOST = "127.0.0.1"


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _find(binary: str, candidates: list[str]) -> str:
    found = shutil.which(binary)
    if found:
        return found
    for path in candidates:
        if Path(path).exists():
            return path
    raise FileNotFoundError(
        f"{binary} not found: install the Debian package (apt-get install redis-server "
        "postgresql) or put it on PATH"
    )


class _LocalServer:
    """Lifecycle shared by the servers: the same port and data directory across restarts."""

    dir: Path
    _proc: ManagedProcess | None
    stop_signal = signal.SIGTERM  # the server's graceful shutdown signal

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def stop(self) -> None:
        """Graceful shutdown: data is kept and flushed, as in a planned restart."""
        if self._proc:
            self._proc.stop(sig=self.stop_signal)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self._proc:
            self._proc.kill()
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_LocalServer):
    """A ``redis-server`` with append-only persistence, optionally a replica of another one."""

    def __init__(self, replica_of: RedisServer | None = None, port: int | None = None) -> None:
        self.port = port or free_port(HOST)
        self.replica_of = replica_of
        self.dir = Path(tempfile.mkdtemp(prefix="memoria-redis-"))
        self._binary = _find("redis-server", ["/usr/bin/redis-server"])
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
            # replicas attach at once instead of after the default 5 s batching delay, and a
            # primary does not wait 10 s for lagging replicas when it is told to stop
            "--repl-diskless-sync-delay",
            "0",
            "--shutdown-timeout",
            "1",
        ]
        if self.replica_of is not None:
            argv += ["--replicaof", HOST, str(self.replica_of.port)]
        return argv

    def start(self, timeout: float = 30.0) -> None:
        self._proc = ManagedProcess("redis-server", self._argv(), self.dir / "redis.log")
        self._proc.repeat_signal = True  # it ignores SIGTERM while writing its first AOF
        self._proc.start()
        wait_until(
            self.ping, timeout, f"redis-server on port {self.port}", 0.05, self._proc.log_tail
        )

    def ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _postgres_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; when we are root, run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer(_LocalServer):
    """A PostgreSQL cluster made by ``initdb`` in a temp dir, trust auth on loopback only."""

    stop_signal = signal.SIGINT  # "fast" shutdown: clients are disconnected, data is kept

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port(HOST)
        self.dir = Path(tempfile.mkdtemp(prefix="memoria-postgres-"))
        self.data = self.dir / "data"
        self._user = _postgres_user()
        bindir = self._bindir()
        self._initdb = str(bindir / "initdb")
        self._postgres = str(bindir / "postgres")
        self._proc: ManagedProcess | None = None
        self._initialised = False

    @staticmethod
    def _bindir() -> Path:
        found = shutil.which("pg_config")
        if found:
            out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
            if out.returncode == 0 and Path(out.stdout.strip(), "initdb").exists():
                return Path(out.stdout.strip())
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
        if versions:
            return versions[0].parent
        return Path(_find("initdb", [])).parent

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def _init(self) -> None:
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        subprocess.run(
            [
                self._initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
        )
        self._initialised = True

    def start(self, timeout: float = 30.0) -> None:
        if not self._initialised:
            self._init()
        argv = [
            self._postgres,
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"unix_socket_directories={self.dir}",
            "-c",
            "max_connections=300",
            # test data only: no fsync, and a larger WAL so bulk benchmarks do not checkpoint often
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_wal_size=4GB",
            "-c",
            "shared_buffers=256MB",
        ]
        run_as = (self._user.pw_uid, self._user.pw_gid) if self._user else None
        self._proc = ManagedProcess("postgres", argv, self.dir / "postgres.log", run_as=run_as)
        self._proc.start()
        wait_until(
            self._accepting, timeout, f"postgres on port {self.port}", 0.1, self._proc.log_tail
        )

    def _accepting(self) -> bool:
        assert self._proc is not None
        if not self._proc.running:
            raise RuntimeError(f"postgres exited during start-up\n{self._proc.log_tail()}")
        if not _tcp_open(self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """Create a database (if missing) and return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)
