"""Container images without a registry, for the test bed's node.

No public container registry can be reached here, so every image a pod runs is made on this
machine and loaded straight into the node's containerd:

* **pause**, the pod sandbox: ``build/pause/linux/pause.c`` from the pinned ``k8s.io/kubernetes``
  module (already in the Go module cache after the binaries' build), compiled with
  ``gcc -static`` and written as a one-file image archive by :func:`write_docker_archive`;
* **the project's image**, from the repository's own ``Dockerfile``, built by a private dockerd
  (own data root, own sockets, no bridge and no iptables: it only builds) on a local stand-in for
  ``python:3.11-slim-bookworm``: ``docker/local-base/Dockerfile`` on top of a
  ``debootstrap --variant=minbase bookworm`` root that carries this machine's extra CA
  certificates (pip verifies PyPI through them).

Everything is cached under ``~/.cache/memoria-operator/images`` by content: the debootstrap root
by suite, package list and CA certificates; the stand-in by that and its Dockerfile; our image by
the bytes of its inputs (Dockerfile, docker/requirements.lock, pyproject.toml, README.md,
memoria/, operator/). A warm run builds nothing and starts no dockerd: it only imports the cached
``docker save`` archives into containerd (``ctr -n k8s.io images import``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import REPO
from .processes import ManagedProcess, terminate_pid, wait_until

CACHE_ROOT = Path(
    os.environ.get("MEMORIA_CACHE_DIR", str(Path.home() / ".cache" / "memoria-operator"))
)
IMAGE_CACHE = CACHE_ROOT / "images"
BUILD_LOG = CACHE_ROOT / "image-build.log"  # the last build's docker output
LOCAL = "memoria.local"  # the registry-less name every local image carries

# Bump when a recipe below changes in a way its inputs do not show.
_RECIPE = "1"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("MEMORIA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("ca-certificates",)
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
STAND_IN_DOCKERFILE = REPO / "docker" / "local-base" / "Dockerfile"
PUBLIC_BASE = "python:3.11-slim-bookworm"  # the Dockerfile's default BASE_IMAGE
PROJECT_INPUTS = (
    "Dockerfile",
    "pyproject.toml",
    "README.md",
    "docker/requirements.lock",
    "memoria",
    "operator",
)


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ImageArchive:
    """A ``docker save``-format archive of one tagged image, ready for ``ctr images import``."""

    ref: str
    path: Path
    facts: dict[str, Any]  # how it was made: build seconds, sizes (read from a sidecar file)


def _sha256(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def tree_digest(root: Path, names: Iterable[str]) -> str:
    """A digest of files by path, bytes and executable bit (caches and bytecode left out)."""
    h = hashlib.sha256()
    for name in names:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
                continue
            h.update(_sha256(rel, path.read_bytes(), str(os.access(path, os.X_OK))).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder at a time per cache (several test sessions may share a machine)."""
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    with (IMAGE_CACHE / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _finish(tmp: Path, out: Path, facts: dict[str, Any]) -> ImageArchive:
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2))
    tmp.replace(out)
    return ImageArchive(facts["ref"], out, facts)


def _built_once(out: Path, build: Callable[[Path], dict[str, Any]]) -> ImageArchive:
    """The archive ``out`` from the cache, else made by ``build(tmp)`` (which writes the archive
    to ``tmp`` and returns its facts, ``ref`` among them) under the cache lock, checked again
    once the lock is held: another session may have built it meanwhile."""
    cached = _cached(out)
    if cached:
        return cached
    with _cache_lock():
        cached = _cached(out)
        if cached:
            return cached
        tmp = out.with_suffix(".tmp")
        return _finish(tmp, out, build(tmp))


def _save(docker: DockerDaemon, ref: str, tmp: Path) -> int:
    """``docker save`` of ``ref`` to ``tmp``; returns the image's size in bytes."""
    size = int(
        docker.docker("image", "inspect", "--format", "{{.Size}}", ref, capture=True).stdout.strip()
    )
    docker.docker("save", "-o", tmp, ref)
    return size


def _drop_archives(prefix: str, keep: set[str]) -> None:
    """Delete cached archives ``<prefix>*.tar`` (and their facts) whose stem is not in ``keep``."""
    for tar in IMAGE_CACHE.glob(f"{prefix}*.tar"):
        if tar.stem not in keep:
            tar.unlink(missing_ok=True)
            tar.with_suffix(".json").unlink(missing_ok=True)


def _cached(out: Path) -> ImageArchive | None:
    meta = out.with_suffix(".json")
    if not (out.is_file() and meta.is_file()):
        return None
    facts = json.loads(meta.read_text())
    return ImageArchive(facts["ref"], out, facts)


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _run(*argv: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], text=True, check=True, **kwargs)


# -- a one-layer image written directly (no dockerd needed) -----------------------------------


def write_docker_archive(
    out: Path, ref: str, files: dict[str, tuple[bytes, int]], config: dict[str, Any]
) -> None:
    """Write a ``docker save``-format archive of a one-layer image holding ``files``
    (path -> (bytes, mode)), owned by root, with the image ``config`` (Entrypoint, User...)."""

    def tar_bytes(members: Iterable[tuple[str, bytes, int]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data, mode in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, 0
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    layer = tar_bytes((name, data, mode) for name, (data, mode) in sorted(files.items()))
    diff_id = hashlib.sha256(layer).hexdigest()
    image_config = {
        "architecture": _arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "memoria testbed"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]
    outer = tar_bytes(
        [
            (config_name, config_bytes, 0o644),
            (f"{diff_id}/layer.tar", layer, 0o644),
            ("manifest.json", json.dumps(manifest).encode(), 0o644),
        ]
    )
    out.write_bytes(outer)


# -- pause -------------------------------------------------------------------------------------


def kubernetes_module_dir(version: str) -> Path:
    """The ``k8s.io/kubernetes`` module's source in the Go module cache (downloaded if missing)."""
    proc = _run(
        "go", "mod", "download", "-json", f"k8s.io/kubernetes@v{version}", stdout=subprocess.PIPE
    )
    return Path(json.loads(proc.stdout)["Dir"])


def pause_image(k8s_version: str) -> ImageArchive:
    """The pod sandbox image, from the pinned Kubernetes module's own ``pause.c``."""
    src_dir = kubernetes_module_dir(k8s_version) / "build" / "pause"
    source = (src_dir / "linux" / "pause.c").read_bytes()
    tag = "3"
    for line in (src_dir / "Makefile").read_text().splitlines():
        if line.startswith("TAG ?="):
            tag = line.split("=", 1)[1].strip()
    key = _sha256(_RECIPE, source, tag)[:12]
    ref = f"{LOCAL}/pause:{tag}"

    def build(tmp: Path) -> dict[str, Any]:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="memoria-pause-") as work:
            binary = Path(work) / "pause"
            _run(
                "gcc",
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                f"-DVERSION=v{tag}-memoria",
                "-o",
                binary,
                src_dir / "linux" / "pause.c",
            )
            _run("strip", binary)
            write_docker_archive(
                tmp,
                ref,
                {"pause": (binary.read_bytes(), 0o755)},
                {"Entrypoint": ["/pause"], "User": "65535:65535"},
            )
        facts = {
            "ref": ref,
            "built_in_seconds": round(time.monotonic() - start, 1),
            "archive_bytes": tmp.stat().st_size,
        }
        _log(f"built {ref} from {src_dir / 'linux' / 'pause.c'} ({facts['archive_bytes']} bytes)")
        return facts

    return _built_once(IMAGE_CACHE / f"pause-{tag}-{key}.tar", build)


# -- the Debian base ---------------------------------------------------------------------------


def extra_ca_certificates() -> list[Path]:
    """This machine's own CA certificates (``update-ca-certificates``' local directory)."""
    return sorted(EXTRA_CA_DIR.rglob("*.crt")) if EXTRA_CA_DIR.is_dir() else []


def _base_key() -> str:
    certs = [p.read_bytes() for p in extra_ca_certificates()]
    return _sha256(
        _RECIPE, DEBIAN_SUITE, "minbase", DEBIAN_MIRROR, ",".join(BASE_PACKAGES), *certs
    )[:12]


def unmount_under(root: Path) -> None:
    """Unmount everything mounted at or below ``root``, deepest first (lazy as a last resort)."""
    prefix = str(root.resolve())
    mounts = []
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", target], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def debian_base_rootfs() -> Path:
    """A tarball of ``debootstrap --variant=minbase`` plus ca-certificates and this machine's
    extra CA certificates (cached; about a minute the first time)."""
    out = IMAGE_CACHE / f"debian-{DEBIAN_SUITE}-minbase-{_base_key()}.tar"
    if out.is_file():
        return out
    if not shutil.which("debootstrap"):
        raise RuntimeError(
            "debootstrap not found: run hack/bootstrap.sh (apt-get install debootstrap)"
        )
    start = time.monotonic()
    root = IMAGE_CACHE / f".rootfs-{out.stem}"
    unmount_under(root)
    shutil.rmtree(root, ignore_errors=True)
    _log(f"debootstrap --variant=minbase {DEBIAN_SUITE} from {DEBIAN_MIRROR} (first use only)")
    try:
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE,
            root,
            DEBIAN_MIRROR,
            stdout=subprocess.DEVNULL,
        )
        certs = extra_ca_certificates()
        if certs:
            dest = root / "usr" / "local" / "share" / "ca-certificates"
            dest.mkdir(parents=True, exist_ok=True)
            for cert in certs:
                shutil.copy2(cert, dest / cert.name)
            _run("chroot", root, "update-ca-certificates", stdout=subprocess.DEVNULL)
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for item in (root / junk).glob("*"):
                if item.is_file() and item.name != "lock":
                    item.unlink()
        for item in (root / "var" / "cache" / "apt").glob("*.bin"):
            item.unlink()
        tmp = out.with_suffix(".tmp")
        _run("tar", "--numeric-owner", "-C", root, "-cf", tmp, ".")
        tmp.replace(out)
    finally:
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
    _log(
        f"debian base root: {out.stat().st_size // 2**20} MiB tar, "
        f"{time.monotonic() - start:.0f}s; {len(extra_ca_certificates())} extra CA certificate(s)"
    )
    return out


# -- a private dockerd, only to build ----------------------------------------------------------


class DockerDaemon:
    """dockerd with its own data root (kept, for its layer cache), exec root and socket; no
    bridge, no iptables, no IP forwarding: builds run with ``--network host``."""

    def __init__(
        self, data_root: Path | None = None, run_dir: Path = Path("/run/memoria-testbed-docker")
    ) -> None:
        self.data_root = data_root or CACHE_ROOT / "docker"
        self.run_dir = run_dir
        self.socket = run_dir / "docker.sock"
        self.pidfile = run_dir / "dockerd.pid"
        self.log = CACHE_ROOT / "dockerd.log"
        self.proc: ManagedProcess | None = None
        cli = Path("/usr/bin/docker")  # Debian's client, the daemon's own version
        found = shutil.which("docker")
        self.cli = str(cli) if cli.exists() else found or "docker"

    def _stop_stale(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            terminate_pid(int(self.pidfile.read_text().strip()), "dockerd")
        unmount_under(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def start(self, timeout: float = 60.0) -> None:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not Path(dockerd).exists():
            raise RuntimeError(
                "dockerd not found: run hack/bootstrap.sh (apt-get install docker.io)"
            )
        self._stop_stale()
        self.run_dir.mkdir(parents=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        argv = [
            dockerd,
            f"--data-root={self.data_root}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--pidfile={self.pidfile}",
            f"--host=unix://{self.socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--storage-driver=overlay2",
            "--log-level=warn",
        ]
        self.proc = ManagedProcess("dockerd", argv, self.log)
        self.proc.start()

        def up() -> bool:
            if self.proc is None or not self.proc.running:
                raise RuntimeError(f"dockerd exited\n{self.proc.log_tail() if self.proc else ''}")
            return self.docker("version", check=False, capture=True).returncode == 0

        wait_until(up, timeout, f"dockerd on {self.socket}", 0.25)

    def docker(
        self, *args: str | Path, check: bool = True, capture: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker client against this daemon; output goes to the build log unless
        captured, and a failure raises with the log's last lines."""
        env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "0",  # the classic builder uses local base images as they are
            "DOCKER_CONFIG": str(self.run_dir / "client"),
        }
        argv = [self.cli, *map(str, args)]
        if capture:
            return subprocess.run(argv, env=env, text=True, check=check, capture_output=True)
        with BUILD_LOG.open("a") as log:
            log.write(f"\n$ docker {' '.join(map(str, args))}\n")
            log.flush()
            proc = subprocess.run(argv, env=env, text=True, check=False, stdout=log, stderr=log)
        if check and proc.returncode != 0:
            tail = "\n".join(BUILD_LOG.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"docker {args[0]} failed ({proc.returncode}); {BUILD_LOG}:\n{tail}")
        return proc

    def has_image(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False, capture=True).returncode == 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)
            self.proc = None
        unmount_under(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> DockerDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the project's image -----------------------------------------------------------------------


def _stand_in_ref() -> tuple[str, str]:
    base_key = _base_key()
    stand_in_key = _sha256(base_key, STAND_IN_DOCKERFILE.read_bytes())[:12]
    return (
        f"{LOCAL}/debian:{DEBIAN_SUITE}-{base_key}",
        f"{LOCAL}/python:3.11-slim-{DEBIAN_SUITE}-{stand_in_key}",
    )


def project_image_key() -> str:
    return _sha256(_RECIPE, _stand_in_ref()[1], tree_digest(REPO, PROJECT_INPUTS))[:12]


def _ensure_stand_in(docker: DockerDaemon) -> str:
    base_ref, stand_in_ref = _stand_in_ref()
    if not docker.has_image(stand_in_ref):
        if not docker.has_image(base_ref):
            rootfs = debian_base_rootfs()
            docker.docker("import", "--change", 'CMD ["bash"]', rootfs, base_ref)
        start = time.monotonic()
        _log(f"building the stand-in base {stand_in_ref}")
        docker.docker(
            "build",
            "--network=host",
            "--build-arg",
            f"DEBIAN_BASE={base_ref}",
            "-t",
            stand_in_ref,
            STAND_IN_DOCKERFILE.parent,
        )
        _log(f"built {stand_in_ref} in {time.monotonic() - start:.0f}s")
    # also under the Dockerfile's default base name, so a plain `docker build .` against this
    # daemon works too (our build passes BASE_IMAGE explicitly)
    docker.docker("tag", stand_in_ref, PUBLIC_BASE, capture=True)
    return stand_in_ref


def project_image() -> ImageArchive:
    """The repository's Dockerfile built on the local stand-in, as a cached archive."""
    key = project_image_key()
    ref = f"{LOCAL}/memoria-operator:{key}"

    def build(tmp: Path) -> dict[str, Any]:
        start = time.monotonic()
        BUILD_LOG.write_text("")
        _log(f"building {ref} from the Dockerfile (first use of these inputs; log: {BUILD_LOG})")
        with DockerDaemon() as docker, tempfile.TemporaryDirectory(prefix="memoria-ctx-") as ctx:
            stand_in = _ensure_stand_in(docker)
            # a clean context holding exactly the hashed inputs (no .venv, caches or .git)
            for name in PROJECT_INPUTS:
                src, dst = REPO / name, Path(ctx) / name
                if src.is_dir():
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            build_start = time.monotonic()
            docker.docker(
                "build", "--network=host", "--build-arg", f"BASE_IMAGE={stand_in}", "-t", ref, ctx
            )
            build_seconds = time.monotonic() - build_start
            size = _save(docker, ref, tmp)
            _prune(docker, keep={ref, stand_in, _stand_in_ref()[0]})
        facts = {
            "ref": ref,
            "base": stand_in,
            "built_in_seconds": round(time.monotonic() - start, 1),
            "docker_build_seconds": round(build_seconds, 1),
            "image_bytes": size,
            "archive_bytes": tmp.stat().st_size,
        }
        _log(
            f"built {ref}: {size / 2**20:.0f} MiB, docker build {build_seconds:.0f}s, "
            f"{facts['built_in_seconds']:.0f}s in all"
        )
        return facts

    return _built_once(IMAGE_CACHE / f"memoria-operator-{key}.tar", build)


def _prune(docker: DockerDaemon, keep: set[str]) -> None:
    """Keep the caches bounded: older local images go, from dockerd and from disk."""
    listed = docker.docker("images", "--format", "{{.Repository}}:{{.Tag}}", capture=True)
    old = [ref for ref in listed.stdout.split() if ref.startswith(f"{LOCAL}/") and ref not in keep]
    if old:
        docker.docker("rmi", *old, check=False, capture=True)
    docker.docker("image", "prune", "-f", check=False, capture=True)
    _drop_archives("memoria-operator-", {f"memoria-operator-{r.rsplit(':', 1)[1]}" for r in keep})


SERVICES = REPO / "docker"  # docker/<name>/Dockerfile: the brokers the node runs as pods


def service_image(name: str) -> ImageArchive:
    """A Debian package on the debootstrap base (``docker/<name>/``: ``redis``, ``postgres``), as
    a cached archive: the guide's brokers run as pods from these."""
    context = SERVICES / name
    base_ref = _stand_in_ref()[0]
    files = sorted(p for p in context.iterdir() if p.is_file())
    key = _sha256(_RECIPE, base_ref, *(p.name.encode() + p.read_bytes() for p in files))[:12]
    ref = f"{LOCAL}/{name}:{key}"

    def build(tmp: Path) -> dict[str, Any]:
        start = time.monotonic()
        _log(f"building {ref} from {context.relative_to(REPO)}/Dockerfile (first use only)")
        with DockerDaemon() as docker:
            if not docker.has_image(base_ref):
                docker.docker("import", "--change", 'CMD ["bash"]', debian_base_rootfs(), base_ref)
            docker.docker(
                "build", "--network=host", "--build-arg", f"DEBIAN_BASE={base_ref}",
                "-t", ref, context,
            )  # fmt: skip
            size = _save(docker, ref, tmp)
        _drop_archives(f"{name}-", {f"{name}-{key}"})
        facts = {
            "ref": ref,
            "built_in_seconds": round(time.monotonic() - start, 1),
            "image_bytes": size,
            "archive_bytes": tmp.stat().st_size,
        }
        _log(f"built {ref}: {size / 2**20:.0f} MiB in {facts['built_in_seconds']:.0f}s")
        return facts

    return _built_once(IMAGE_CACHE / f"{name}-{key}.tar", build)


# -- into the node's containerd ----------------------------------------------------------------


def import_into_containerd(address: Path, archives: Iterable[ImageArchive]) -> float:
    """``ctr -n k8s.io images import`` each archive (unpacked for the overlayfs snapshotter);
    returns the seconds spent."""
    start = time.monotonic()
    for archive in archives:
        _run(
            "ctr",
            "--address",
            address,
            "--namespace",
            "k8s.io",
            "images",
            "import",
            archive.path,
            stdout=subprocess.DEVNULL,
        )
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.images``: build (or reuse) the images and print their facts."""
    from .binaries import k8s_version

    del argv
    facts = {
        "pause": pause_image(k8s_version()).facts,
        "memoria-operator": project_image().facts,
    }
    print(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
