"""Docker for the compose tests (tests/integration/test_compose.py), on a machine that reaches no
image registry and whose containers reach no package index.

* :func:`standin_images`: stand-ins for the images the project names (``python:3.11-slim``,
  ``redis:7``, ``haproxy:2.6``), each made from Debian's packages (``debootstrap --variant=minbase``
  with the mirror apt already uses, then ``docker import``) and behaving as the official image does
  where the project relies on it. They are tagged ``relay-standin/NAME:DIGEST``, the digest taken
  over everything that makes them, and kept between runs: a second run finds them and builds
  nothing; a changed recipe builds anew and removes the stand-in it replaces.
* :func:`fill_wheelhouse`: the wheels the relay image installs, built on the host by the same
  Python the image has (Debian's ``python3``: environment markers such as redis-py's
  ``async-timeout`` for Python below 3.11.3 come out as in the image), cached by the digest of
  ``pyproject.toml``, and copied into ``deploy/wheelhouse/`` for the image's build.
* :class:`Compose`: the project's own ``docker-compose.yml`` under a project name of the test's,
  with Debian's ``docker-compose`` or the compose plugin, whichever answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import ROOT, timeout

CACHE = Path(os.environ.get("RELAY_TEST_CACHE", Path.home() / ".cache" / "relay-tests"))
WHEELHOUSE = ROOT / "deploy" / "wheelhouse"
LABEL = "relay.standin"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The official Redis image starts a server given no config file with --protected-mode no: without
# it, a server with no password refuses every client that is not on its own loopback.
_REDIS_ENTRYPOINT = """#!/bin/sh
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ] && [ "${2%.conf}" = "${2:-}" ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
"""

# The official HAProxy image runs haproxy in the foreground as a master process (-W -db).
_HAPROXY_ENTRYPOINT = """#!/bin/sh
set -e
if [ "${1#-}" != "$1" ]; then set -- haproxy "$@"; fi
if [ "$1" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
"""


@dataclass(frozen=True)
class StandIn:
    """How to make one stand-in: Debian packages, files added, and ``docker import`` changes."""

    name: str
    stands_for: str
    packages: tuple[str, ...]
    changes: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = ()  # (path in the image, text of an executable)
    remove: tuple[str, ...] = ()

    def digest(self, suite: str, mirror: str) -> str:
        recipe = json.dumps([suite, mirror, self.packages, self.changes, self.files, self.remove])
        return hashlib.sha256(recipe.encode()).hexdigest()[:12]


STANDINS = (
    StandIn(
        "python",
        "python:3.11-slim",
        ("python3", "python3-pip", "python3-venv", "python-is-python3"),
        ("ENV LANG=C.UTF-8", 'CMD ["python3"]'),
        # the official image's Python is its own: pip installs into it without complaint
        remove=("usr/lib/python3.11/EXTERNALLY-MANAGED",),
    ),
    StandIn(
        "redis",
        "redis:7",
        ("redis-server",),
        (
            "WORKDIR /data",
            "VOLUME /data",
            "EXPOSE 6379",
            'ENTRYPOINT ["docker-entrypoint.sh"]',
            'CMD ["redis-server"]',
        ),
        files=(("usr/local/bin/docker-entrypoint.sh", _REDIS_ENTRYPOINT),),
    ),
    StandIn(
        "haproxy",
        "haproxy:2.6",
        ("haproxy",),
        (
            "USER haproxy",
            "WORKDIR /var/lib/haproxy",  # (the official image stops on SIGUSR1: import takes no STOPSIGNAL)
            'ENTRYPOINT ["docker-entrypoint.sh"]',
            'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]',
        ),
        files=(("usr/local/bin/docker-entrypoint.sh", _HAPROXY_ENTRYPOINT),),
    ),
)


def run(command: list[str], within: float, **kwargs: Any) -> str:
    """Run a command to its end; its output, or an error with the output in it."""
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout(within),
        stdin=subprocess.DEVNULL,
        check=False,
        **kwargs,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def apt_source() -> tuple[str, str]:
    """The Debian suite and mirror this machine's apt uses (deb822 sources or sources.list)."""
    release = dict(
        line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
    )
    suite = release.get("VERSION_CODENAME", "bookworm").strip('"')
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        fields = dict(
            line.split(":", 1) for line in path.read_text().splitlines() if ":" in line and line[0] != "#"
        )
        if suite in fields.get("Suites", "").split():
            return suite, fields["URIs"].split()[0]
    listed = Path("/etc/apt/sources.list")
    for line in listed.read_text().splitlines() if listed.exists() else []:
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return suite, words[1]
    return suite, "http://deb.debian.org/debian"


def _as_root(command: list[str]) -> list[str]:
    return command if os.geteuid() == 0 else ["sudo", "-n", *command]


def image_exists(tag: str) -> bool:
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    return found.returncode == 0


def _make(standin: StandIn, tag: str, suite: str, mirror: str) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=f"rootfs-{standin.name}-") as work:
        root = Path(work) / "root"
        try:
            include = ",".join(standin.packages)
            run(
                _as_root(
                    ["debootstrap", "--variant=minbase", f"--include={include}", suite, str(root), mirror]
                ),
                600,
            )
            for relative, text in standin.files:
                path = root / relative
                path.write_text(text)
                path.chmod(0o755)
            for relative in standin.remove:
                (root / relative).unlink(missing_ok=True)
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (root / cache).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            archive = Path(work) / "root.tar"
            run(_as_root(["tar", "--numeric-owner", "-C", str(root), "-cf", str(archive), "."]), 300)
            changes = [*standin.changes, f"ENV PATH={_PATH}", f"LABEL {LABEL}={standin.name}"]
            run(["docker", "import", *(a for c in changes for a in ("--change", c)), str(archive), tag], 300)
        finally:
            if root.exists():
                run(_as_root(["rm", "-rf", "--one-file-system", str(root)]), 120)


def _forget_others(standin: StandIn, tag: str) -> None:
    listed = run(
        [
            "docker",
            "images",
            "--filter",
            f"label={LABEL}={standin.name}",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ],
        30,
    )
    stale = [name for name in listed.split() if name != tag]
    if stale:
        subprocess.run(["docker", "rmi", *stale], capture_output=True, check=False)


def standin_images() -> dict[str, str]:
    """``{"python:3.11-slim": tag, ...}``: every stand-in, made where none is cached."""
    suite, mirror = apt_source()
    tags = {s.name: f"relay-standin/{s.name}:{s.digest(suite, mirror)}" for s in STANDINS}
    missing = [s for s in STANDINS if not image_exists(tags[s.name])]
    if missing and shutil.which("debootstrap") is None:
        raise AssertionError("debootstrap is not installed (scripts/test installs it)")
    with ThreadPoolExecutor(len(STANDINS)) as pool:
        for made in [pool.submit(_make, s, tags[s.name], suite, mirror) for s in missing]:
            made.result()
    for standin in STANDINS:
        _forget_others(standin, tags[standin.name])
    return {s.stands_for: tags[s.name] for s in STANDINS}


def fill_wheelhouse(python_image: str) -> list[str]:
    """Put into deploy/wheelhouse/ every wheel ``pip install .`` needs in ``python_image``.

    The wheels are built by Debian's own ``python3`` on the host, which must be the image's version.
    Returns the names of the files put there, for :func:`empty_wheelhouse`."""
    image_python = run(["docker", "run", "--rm", python_image, "python3", "-c", _VERSION], 60).strip()
    host_python = run(["/usr/bin/python3", "-c", _VERSION], 30).strip()
    if host_python != image_python:
        raise AssertionError(f"expected the host's /usr/bin/python3 to be {image_python}, got {host_python}")
    project = (ROOT / "pyproject.toml").read_bytes()
    wheels = CACHE / f"wheelhouse-{host_python}-{hashlib.sha256(project).hexdigest()[:12]}"
    if not wheels.is_dir():
        _build_wheels(wheels, tomllib.loads(project.decode())["build-system"]["requires"])
    made = []
    for wheel in sorted(wheels.glob("*.whl")):
        shutil.copy2(wheel, WHEELHOUSE / wheel.name)
        made.append(wheel.name)
    return made


_VERSION = "import platform; print(platform.python_version())"


def _build_wheels(into: Path, build_requires: Iterable[str]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="wheelhouse-") as work:
        venv, wheels = Path(work) / "venv", Path(work) / "wheels"
        run(["/usr/bin/python3", "-m", "venv", str(venv)], 120)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        run([*pip, "wheel", "--wheel-dir", str(wheels), str(ROOT)], 600)
        run([*pip, "download", "--dest", str(wheels), "--only-binary=:all:", *build_requires], 300)
        for own in wheels.glob("relay-*.whl"):
            own.unlink()  # the image builds the project from its own sources
        for old in CACHE.glob("wheelhouse-*"):
            if old.is_dir() and old.name != into.name and old != Path(work):
                shutil.rmtree(old, ignore_errors=True)
        wheels.rename(into)


def empty_wheelhouse(names: Iterable[str]) -> None:
    for name in names:
        (WHEELHOUSE / name).unlink(missing_ok=True)


@dataclass
class Compose:
    """``docker compose -p PROJECT -f FILE ...`` with the test's variables."""

    project: str
    env: dict[str, str]
    file: str = "docker-compose.yml"
    command: list[str] = field(default_factory=lambda: compose_command())

    def __call__(self, *args: str, within: float = 120) -> str:
        return run(
            [*self.command, "-p", self.project, "-f", str(ROOT / self.file), *args],
            within,
            env={**os.environ, **self.env},
            cwd=ROOT,
        )

    def containers(self, service: str) -> list[str]:
        """Ids of the service's running containers."""
        return self("ps", "-q", service, within=30).split()

    def down(self) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "5", within=120)


def compose_command() -> list[str]:
    """The compose plugin where it answers, else Debian's docker-compose."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise AssertionError(
        "neither `docker compose` nor docker-compose is installed (scripts/test installs docker-compose)"
    )


def inspect(container: str, template: str) -> str:
    return run(["docker", "inspect", "--format", template, container], 30).strip()
