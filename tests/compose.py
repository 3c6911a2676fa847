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
* :class:`Compose`: one of the project's compose files under a project name of the test's, with
  Debian's ``docker-compose`` or the compose plugin, whichever answers; :func:`launched` brings it
  up as the README does (``up -d --build``) on the stand-ins, with its balancer published on a free
  port of 127.0.0.1, and takes it down (containers, network, volumes, the relay image it built).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect as source
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tests.support import ROOT, free_port, timeout, wait_until

CACHE = Path(os.environ.get("RELAY_TEST_CACHE", Path.home() / ".cache" / "relay-tests"))
WHEELHOUSE = ROOT / "deploy" / "wheelhouse"
LABEL = "relay.standin"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The official Redis image runs redis-server with protected mode off, config file or not, unless
# that file sets protected-mode itself (its build changes the default; older images did it in their
# entrypoint, as this one does): with it on, a server with no password refuses every client that
# is not on its own loopback, replicas and sentinels included.
_REDIS_ENTRYPOINT = """#!/bin/sh
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
  shift
  config=
  if [ -f "${1:-}" ]; then
    config=$1
    shift
  fi
  if [ -z "$config" ] || ! grep -q '^protected-mode' "$config"; then set -- --protected-mode no "$@"; fi
  if [ -n "$config" ]; then set -- "$config" "$@"; fi
  set -- redis-server "$@"
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
        """Over everything that makes the image: the recipe, how it is made (:func:`_make`), where
        from, and for the Python one the host's Python (a new patch release of Debian's python3 on the
        host makes it again, so that the wheelhouse and the image agree)."""
        made = source.getsource(_make) + _PATH + LABEL + (_debian_python() if self.name == "python" else "")
        recipe = json.dumps([suite, mirror, self.packages, self.changes, self.files, self.remove, made])
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
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
            )
            if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", "deb").split():
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
    for stale in CACHE.glob("rootfs-*") if missing else ():  # left by a run that was killed
        run(_as_root(["rm", "-rf", "--one-file-system", str(stale)]), 120)
    with ThreadPoolExecutor(len(STANDINS)) as pool:
        for made in [pool.submit(_make, s, tags[s.name], suite, mirror) for s in missing]:
            made.result()
    for standin in STANDINS:
        _forget_others(standin, tags[standin.name])
    return {s.stands_for: tags[s.name] for s in STANDINS}


def fill_wheelhouse(python_image: str) -> list[str]:
    """Put into deploy/wheelhouse/ every wheel ``pip install .`` needs in ``python_image``.

    The wheels are built by Debian's own ``python3`` on the host, which must be the image's version.
    Returns the names of the files put there, for :func:`empty_wheelhouse`; they are listed in
    ``.filled-by-tests`` too, so that a run that was interrupted before emptying it is cleaned up
    by the next. A wheel of the same name already there (the user's own) is used and left alone."""
    empty_wheelhouse()
    image_python = run(["docker", "run", "--rm", python_image, "python3", "-c", _VERSION], 60).strip()
    host_python = _debian_python()
    if host_python != image_python:
        raise AssertionError(
            f"expected the host's /usr/bin/python3 to be {image_python}, got {host_python!r}"
        )
    project = (ROOT / "pyproject.toml").read_bytes()
    wheels = CACHE / f"wheelhouse-{host_python}-{hashlib.sha256(project).hexdigest()[:12]}"
    if not wheels.is_dir():
        _build_wheels(wheels, tomllib.loads(project.decode())["build-system"]["requires"])
    made = [wheel.name for wheel in sorted(wheels.glob("*.whl")) if not (WHEELHOUSE / wheel.name).exists()]
    _FILLED.write_text("".join(f"{name}\n" for name in made))
    for name in made:
        shutil.copy2(wheels / name, WHEELHOUSE / name)
    return made


_FILLED = WHEELHOUSE / ".filled-by-tests"


def empty_wheelhouse() -> None:
    """Take out of deploy/wheelhouse/ what :func:`fill_wheelhouse` put there (and only that)."""
    if _FILLED.exists():
        for name in _FILLED.read_text().split():
            (WHEELHOUSE / name).unlink(missing_ok=True)
        _FILLED.unlink()


_VERSION = "import platform; print(platform.python_version())"


def _debian_python() -> str:
    found = subprocess.run(["/usr/bin/python3", "-c", _VERSION], capture_output=True, text=True, check=False)
    return found.stdout.strip()


def _build_wheels(into: Path, build_requires: Iterable[str]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="building-wheels-") as work:
        venv, wheels = Path(work) / "venv", Path(work) / "wheels"
        run(["/usr/bin/python3", "-m", "venv", str(venv)], 120)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        run([*pip, "wheel", "--wheel-dir", str(wheels), str(ROOT)], 600)
        run([*pip, "download", "--dest", str(wheels), "--only-binary=:all:", *build_requires], 300)
        for own in wheels.glob("relay-*.whl"):
            own.unlink()  # the image builds the project from its own sources
        for old in [*CACHE.glob("wheelhouse-*"), *CACHE.glob("building-wheels-*")]:
            if old.is_dir() and old.name != into.name and old != Path(work):
                shutil.rmtree(old, ignore_errors=True)
        wheels.rename(into)


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
        """Ids of the service's running containers (by the labels compose gives them)."""
        labels = [
            f"label=com.docker.compose.project={self.project}",
            f"label=com.docker.compose.service={service}",
        ]
        listed = run(
            ["docker", "ps", "-q", "--no-trunc", *(a for label in labels for a in ("--filter", label))], 30
        )
        return sorted(listed.split())

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


@dataclass
class Stack:
    """A compose project that is up: ``url`` is its balancer on 127.0.0.1."""

    compose: Compose
    url: str

    def relays(self) -> list[str]:
        return self.compose.containers("relay")

    def health(self, container: str) -> str:
        return inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}")

    def redis_cli(self, *args: str, service: str = "redis") -> str:
        return self.compose("exec", "-T", service, "redis-cli", *args, within=30)

    def wait_replicas(self, count: int, within: float = 90) -> list[str]:
        """Until ``count`` relay containers run, each healthy, and the balancer reaches them all;
        their ids."""

        def healthy() -> bool:
            relays = self.relays()
            return len(relays) == count and all(self.health(c) == "healthy" for c in relays)

        wait_until(healthy, within, f"{count} healthy relay containers", interval=0.5)
        relays = self.relays()
        wait_until(
            lambda: self.seen_instances(count) == hostnames(relays),
            within,
            "the balancer to reach them all",
            interval=0.5,
        )
        return relays

    def seen_instances(self, count: int) -> set[str]:
        """The containers (their hostnames) that answer ``/readyz`` through the balancer, asked
        up to ``4 * count`` times (it takes turns among the least busy)."""
        seen: set[str] = set()
        with httpx2.Client(timeout=timeout(5)) as http:
            for _ in range(4 * count):
                answer = http.get(f"{self.url}/readyz")
                if answer.status_code == 200:
                    seen.add(answer.json()["instance"].rsplit("-", 1)[0])
                if len(seen) == count:
                    break
        return seen


def hostnames(containers: list[str]) -> set[str]:
    return {c[:12] for c in containers}  # a container's hostname is its short id


def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def launched(file: str, project: str, replicas: int = 3) -> Iterator[Stack]:
    """``docker compose -f FILE up -d --build`` on the stand-ins, until its replicas are healthy
    and reached through the balancer; everything the project made is removed afterwards (unless
    ``RELAY_TEST_KEEP_STACK=1``), the logs of its containers printed first (pytest shows them when
    a test failed)."""
    if not docker_answers():
        raise AssertionError("no Docker engine answers (scripts/test installs docker.io and starts dockerd)")
    images = standin_images()
    port = free_port()
    relay_image = f"{project}/relay:latest"
    compose = Compose(
        project,
        {
            "RELAY_IMAGE": relay_image,
            "PYTHON_IMAGE": images["python:3.11-slim"],
            "REDIS_IMAGE": images["redis:7"],
            "HAPROXY_IMAGE": images["haproxy:2.6"],
            "PIP_NO_INDEX": "1",
            "RELAY_LB_PORT": f"127.0.0.1:{port}",
        },
        file,
    )
    compose.down()  # what an interrupted run left
    subprocess.run(
        ["docker", "rmi", relay_image], capture_output=True, check=False
    )  # so none is left untagged
    stack = Stack(compose, f"http://127.0.0.1:{port}")
    try:
        try:
            fill_wheelhouse(images["python:3.11-slim"])
            compose("up", "-d", "--build", within=900)  # the README's line
        finally:
            empty_wheelhouse()
        stack.wait_replicas(replicas)
        yield stack
    finally:
        if os.environ.get("RELAY_TEST_KEEP_STACK") != "1":
            try:  # a failure here is printed, not raised over the test's own
                print(compose("logs", "--no-color", "--tail", "40", within=60))
                compose.down()
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                print(f"taking {project} down failed (the next run tries again): {exc}")
            subprocess.run(["docker", "rmi", relay_image], capture_output=True, check=False)


def consumers_on(container: str) -> float:
    """The consumer connections one replica holds, from its own /metrics (inside the container:
    the balancer does not pass /metrics)."""
    code = (
        "import re, urllib.request;"
        "t = urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=5).read().decode();"
        "m = re.search(r'^relay_connections\\{role=\"consumer\"\\} (\\S+)$', t, re.M);"
        "print(m[1] if m else 0)"
    )
    return float(run(["docker", "exec", container, "python", "-c", code], 30))
