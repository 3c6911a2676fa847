"""Real Redis topologies for integration tests, as subprocesses on free ports of 127.0.0.1.

* :class:`SentinelSet`: a master, its replicas and three sentinels that fail over within seconds
  (``down-after-milliseconds 1000``); ``kill_master()``, ``wait_failover()``, ``restart()``.
* :class:`ClusterSet`: a Redis Cluster of ``masters`` masters with ``replicas`` replicas each
  (``cluster-node-timeout 1000``); ``kill()``, ``wait_failover()``, live resharding with
  ``move_slot()`` (the documented SETSLOT/MIGRATE procedure) and ``reshard()`` (redis-cli).

``start()`` returns once the topology has settled (replicas in sync, every sentinel or node sees
the same picture), and closes what it started when it fails, the processes' logs added to the
error. ``close()`` stops every process (SIGTERM, then SIGKILL after a bounded wait) and is
idempotent; both classes are context managers. Tests build them in their own fixtures::

    @pytest.fixture
    def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
        with SentinelSet(tmp_path).start() as topology:
            yield topology
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
from redis.cluster import RedisCluster

from tests.support import free_port, timeout, wait_until

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node's bus listens on its port + 10000
T = TypeVar("T")
C = TypeVar("C", redis.Redis, RedisCluster)


def poll_for(get: Callable[[], T | None], within: float, what: str) -> T:
    """:func:`wait_until` for a value: poll ``get`` until it returns something other than None."""
    found: list[T] = []

    def ready() -> bool:
        value = get()
        if value is not None:
            found.append(value)
        return bool(found)

    wait_until(ready, within, what, interval=0.1)
    return found[0]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def distinct_ports(count: int, bus: bool = False) -> list[int]:
    """``count`` different free ports; with ``bus``, each one's port + 10000 free (and unpicked) too."""
    ports: list[int] = []
    taken: set[int] = set()
    for _ in range(count * 50):
        if len(ports) == count:
            break
        port = free_port()
        wanted = {port, port + BUS_OFFSET} if bus else {port}
        if wanted & taken or (bus and (port + BUS_OFFSET > 65535 or not _bindable(port + BUS_OFFSET))):
            continue
        ports.append(port)
        taken |= wanted
    if len(ports) < count:
        raise AssertionError(f"found only {len(ports)} of {count} free ports")
    return ports


def _client(port: int) -> redis.Redis:
    """A short-lived client for polling: it gives up quickly on a dead or hung server."""
    return redis.Redis(
        host=HOST, port=port, decode_responses=True, socket_connect_timeout=1, socket_timeout=2
    )


def _run(port: int, *command: Any) -> Any:
    """One command to the server on ``port``; its errors are raised."""
    with _client(port) as client:
        return client.execute_command(*command)


def _ask(port: int, *command: Any) -> Any:
    """One command to the server on ``port``; None when it does not answer."""
    try:
        return _run(port, *command)
    except redis.RedisError:
        return None


def _replication(port: int) -> dict[str, Any]:
    """``INFO replication`` of the server on ``port``; empty when it does not answer."""
    try:
        with _client(port) as client:
            return dict(client.info("replication"))
    except redis.RedisError:
        return {}


class RedisProcess:
    """One redis-server (data node or sentinel) in a directory of its own, logging to a file there;
    can be stopped and started again with the same arguments."""

    def __init__(self, port: int, workdir: Path, args: list[str]) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (scripts/test installs it)")
        self.port = port
        self.workdir = workdir
        self.command = [binary, *args]
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisProcess:
        assert not self.alive, f"redis-server on port {self.port} is running already"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        return self

    def answers(self) -> bool:
        """Whether it answers PING; raises when the process has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited with {self.process.returncode}")
        return _ask(self.port, "PING") is True

    def wait_answers(self, within: float = 10) -> None:
        wait_until(self.answers, within, f"redis-server on port {self.port} to answer")

    def kill(self) -> None:
        """SIGKILL: no AOF flush, no goodbye to replicas or peers."""
        if self.process is not None and self.alive:
            self.process.kill()
            self.process.wait(timeout(10))

    def terminate(self) -> None:
        if self.process is not None and self.alive:
            self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, within: float = 10) -> None:
        """Wait for an exit after :meth:`terminate`; SIGKILL when it takes too long."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout(within))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout(10))

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _server_args(port: int) -> list[str]:
    """Every data node's arguments; no diskless-sync delay, so a replica syncs at once."""
    args = ["--port", str(port), "--bind", HOST, "--daemonize", "no", "--dir", "."]
    return [*args, "--appendonly", "yes", "--save", "", "--repl-diskless-sync-delay", "0"]


class _Topology:
    """What both topologies share: their processes, their clients, closing, logs."""

    def __init__(self) -> None:
        self._processes: list[RedisProcess] = []
        self._clients: list[redis.Redis | RedisCluster] = []

    def _track(self, client: C) -> C:
        self._clients.append(client)
        return client

    @contextlib.contextmanager
    def _closing_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            exc.add_note(self.logs())
            self.close()
            raise

    def logs(self) -> str:
        """The end of every process's log, for an error message."""
        return "\n".join(f"--- {p.workdir.name} (port {p.port}):\n{p.log_tail()}" for p in self._processes)

    def close(self) -> None:
        """Stop everything: the clients, then every process (all at once, SIGKILL after 10 s)."""
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(redis.RedisError):
                client.close()
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.wait_exit()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- Sentinel -------------------------------------------------------------------------------------


class SentinelSet(_Topology):
    """A master, ``replicas`` replicas of it and three sentinels (quorum 2) monitoring it."""

    def __init__(self, workdir: Path, master_name: str = "relay", replicas: int = 1) -> None:
        super().__init__()
        self.workdir = workdir
        self.master_name = master_name
        ports = distinct_ports(1 + replicas + 3)
        self.initial_master = ports[0]
        self.servers: dict[int, RedisProcess] = {}
        for port in ports[: 1 + replicas]:
            args = _server_args(port)
            if port != self.initial_master:
                args += ["--replicaof", HOST, str(self.initial_master)]
            self.servers[port] = RedisProcess(port, workdir / f"redis-{port}", args)
        self._sentinels = [self._sentinel(port) for port in ports[1 + replicas :]]
        self._processes = [*self.servers.values(), *self._sentinels]

    def _sentinel(self, port: int) -> RedisProcess:
        """A sentinel with a config file of its own: sentinels rewrite theirs."""
        workdir = self.workdir / f"sentinel-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        name = self.master_name
        lines = [
            f"port {port}",
            f"bind {HOST}",
            "daemonize no",
            f"dir {workdir}",
            "sentinel resolve-hostnames no",
            f"sentinel announce-ip {HOST}",
            f"sentinel monitor {name} {HOST} {self.initial_master} 2",
            f"sentinel down-after-milliseconds {name} 1000",
            f"sentinel failover-timeout {name} 5000",
            f"sentinel parallel-syncs {name} 1",
        ]
        (workdir / "sentinel.conf").write_text("\n".join(lines) + "\n")
        return RedisProcess(port, workdir, ["sentinel.conf", "--sentinel"])

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(HOST, sentinel.port) for sentinel in self._sentinels]

    @property
    def sentinels_setting(self) -> str:
        """The sentinels as RELAY_REDIS_SENTINELS wants them: ``host:port,host:port,...``."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    def start(self) -> SentinelSet:
        """Start the servers, wait for the replicas to sync, then start the sentinels (so that each
        finds the replicas in the master's first INFO) and wait until each knows everything."""
        with self._closing_on_failure():
            for server in self.servers.values():
                server.start()
            for server in self.servers.values():
                server.wait_answers()
            for port in self.servers:
                if port != self.initial_master:
                    wait_until(partial(self._in_sync, port), 15, f"replica {port} to sync")
            for sentinel in self._sentinels:
                sentinel.start()
            for sentinel in self._sentinels:
                sentinel.wait_answers()
                what = f"sentinel {sentinel.port} to know the master, its replicas and the other sentinels"
                wait_until(partial(self._informed, sentinel.port), 15, what)
        return self

    def _in_sync(self, port: int, master: int | None = None) -> bool:
        info = _replication(port)
        return (
            info.get("role") == "slave"
            and info.get("master_link_status") == "up"
            and (master is None or info.get("master_port") == master)
        )

    def _informed(self, sentinel: int) -> bool:
        try:
            with _client(sentinel) as client:
                state: Any = client.sentinel_master(self.master_name)
        except redis.RedisError:
            return False
        return bool(
            state["num-slaves"] == len(self.servers) - 1
            and state["num-other-sentinels"] == len(self._sentinels) - 1
        )

    def _reported_master(self, sentinel: int) -> tuple[str, int] | None:
        try:
            with _client(sentinel) as client:
                address: Any = client.sentinel_get_master_addr_by_name(self.master_name)
        except redis.RedisError:
            return None
        return (str(address[0]), int(address[1])) if address else None

    def master_address(self) -> tuple[str, int]:
        """The master, as the first sentinel that answers names it."""
        for sentinel in self._sentinels:
            address = self._reported_master(sentinel.port)
            if address is not None:
                return address
        raise AssertionError(f"no sentinel names a master {self.master_name!r}")

    def master_client(self) -> redis.Redis:
        """A client for the current master; closed at :meth:`close`."""
        host, port = self.master_address()
        return self._track(redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=5))

    def kill_master(self) -> int:
        """SIGKILL the server that is master now; its port."""
        _, port = self.master_address()
        self.servers[port].kill()
        return port

    def wait_failover(self, old_port: int, within: float = 30) -> tuple[str, int]:
        """Until every live sentinel names a new master, other than ``old_port``, that says it is one."""

        def promoted() -> tuple[str, int] | None:
            named = {self._reported_master(s.port) for s in self._sentinels if s.alive}
            if len(named) != 1:
                return None
            (address,) = named
            if address is None or address[1] == old_port:
                return None
            role = _ask(address[1], "ROLE")
            return address if role and role[0] == "master" else None

        return poll_for(promoted, within, f"the sentinels to promote a replica of {old_port}")

    def restart(self, port: int, within: float = 30) -> None:
        """Start a killed server again as it was configured; wait until the sentinels have made it a
        replica of the current master (they wait some seconds before reconfiguring an old master)
        and it is in sync."""
        server = self.servers[port]
        server.start()
        server.wait_answers()

        def rejoined() -> bool:
            return self._in_sync(port, master=self.master_address()[1])

        wait_until(rejoined, within, f"{port} to rejoin as a replica of the current master")


# -- Cluster --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]  # inclusive ranges

    @classmethod
    def parse(cls, line: str) -> ClusterNode:
        node_id, address, flags, master, _ping, _pong, _epoch, _link, *slots = line.split()
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        ranges = []
        for entry in slots:
            if entry.startswith("["):  # a slot being imported or migrated: shown only on the node itself
                continue
            first, _, last = entry.partition("-")
            ranges.append((int(first), int(last or first)))
        return cls(
            node_id, port, frozenset(flags.split(",")), None if master == "-" else master, tuple(ranges)
        )

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        """Marked failed (``fail``) or suspected (``fail?``), or not yet (or no more) a peer."""
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def _expand(ranges: Iterable[tuple[int, int]]) -> set[int]:
    return {slot for first, last in ranges for slot in range(first, last + 1)}


def _cluster_view(port: int) -> list[ClusterNode] | None:
    """``CLUSTER NODES`` as the node on ``port`` sees the cluster; None when it does not answer."""
    text = _ask(port, "CLUSTER", "NODES")
    return [ClusterNode.parse(line) for line in text.splitlines() if line.strip()] if text else None


class ClusterSet(_Topology):
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0) -> None:
        if masters < 3:
            raise ValueError("redis-cli creates a cluster of 3 masters or more")
        super().__init__()
        self.workdir = workdir
        self.master_count = masters
        self.replicas = replicas
        self.ports = distinct_ports(masters * (1 + replicas), bus=True)
        self.nodes: dict[int, RedisProcess] = {}
        for port in self.ports:
            args = [*_server_args(port), "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "1000"]
            self.nodes[port] = RedisProcess(port, workdir / f"node-{port}", args)
        self._processes = list(self.nodes.values())
        self._held: dict[int, tuple[tuple[int, int], ...]] = {}  # the slots of each killed master

    @property
    def url(self) -> str:
        """The first node, a master when the cluster was created."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def start(self) -> ClusterSet:
        with self._closing_on_failure():
            for node in self.nodes.values():
                node.start()
            for node in self.nodes.values():
                node.wait_answers()
            command = ["redis-cli", "--cluster", "create", *(f"{HOST}:{port}" for port in self.ports)]
            self._redis_cli([*command, "--cluster-replicas", str(self.replicas), "--cluster-yes"])
            wait_until(self._formed, 30, "the new cluster to settle", interval=0.1)
        return self

    def _formed(self) -> bool:
        """Settled, with as many masters serving slots and as many replicas as asked for."""
        layout = self._settled()
        if layout is None:
            return False
        replicas = sum(not node.is_master for node in self._view())
        return len(layout) == self.master_count and replicas == self.master_count * self.replicas

    def _redis_cli(self, command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout(60), check=False)
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def _live(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.alive]

    def _settled(self) -> dict[int, frozenset[tuple[int, int]]] | None:
        """Every live node's layout (each master port with its slots), when all live nodes agree on it,
        say ``cluster_state:ok``, see every live peer as healthy, all slots are served by live
        masters and every live replica is in sync; otherwise None."""
        live = self._live()
        layouts = set()
        for port in live:
            info = _ask(port, "CLUSTER", "INFO")
            view = _cluster_view(port)
            if not info or "cluster_state:ok" not in info or view is None:
                return None
            if any(node.failing for node in view if node.port in live) or len(view) != len(self.nodes):
                return None
            layouts.add(frozenset((n.port, frozenset(n.slots)) for n in view if n.is_master and n.slots))
            replication = _replication(port)
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return None
        if len(layouts) != 1:
            return None
        layout = dict(layouts.pop())
        if any(port not in live for port in layout):
            return None
        served = sum(last - first + 1 for ranges in layout.values() for first, last in ranges)
        return layout if served == SLOTS else None

    def _view(self) -> list[ClusterNode]:
        """The cluster as the first live node that answers sees it."""
        for port in self._live():
            view = _cluster_view(port)
            if view is not None:
                return view
        raise AssertionError("no live cluster node answers CLUSTER NODES")

    def _node(self, port: int) -> ClusterNode:
        return next(node for node in self._view() if node.port == port)

    def masters(self) -> list[int]:
        """The ports of the masters a live node sees as healthy."""
        return sorted(node.port for node in self._view() if node.is_master and not node.failing)

    def client(self) -> RedisCluster:
        """A cluster client, started from a live master; closed at :meth:`close`."""
        return self._track(
            RedisCluster(host=HOST, port=self.masters()[0], decode_responses=True, socket_timeout=5)
        )

    def node_client(self, port: int) -> redis.Redis:
        """A plain client of one node; closed at :meth:`close`."""
        return self._track(redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5))

    def slot_of(self, key: str) -> int:
        slot = next(
            (s for s in (_ask(p, "CLUSTER", "KEYSLOT", key) for p in self._live()) if s is not None), None
        )
        if slot is None:
            raise AssertionError("no live cluster node answers CLUSTER KEYSLOT")
        return int(slot)

    def owner(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        owners = [node.port for node in self._view() if node.is_master and node.owns(slot)]
        if len(owners) != 1:
            raise AssertionError(f"slot {slot} is served by {owners or 'nobody'}")
        return owners[0]

    def master_of_key(self, key: str) -> int:
        return self.owner(self.slot_of(key))

    def kill(self, port: int) -> None:
        """SIGKILL one node (remembering the slots it served, for :meth:`wait_failover`)."""
        self._held[port] = self._node(port).slots
        self.nodes[port].kill()

    def wait_failover(self, old_port: int, within: float = 30) -> int:
        """Until one replica took over every slot the killed master ``old_port`` served and every live
        node says ``cluster_state:ok``; the new master's port."""
        held = self._held.get(old_port)
        if not held:
            raise ValueError(f"{old_port} was not a master serving slots when kill() killed it")

        def taken_over() -> int | None:
            layout = self._settled()
            if layout is None:
                return None
            heirs = [port for port, slots in layout.items() if set(held) <= slots]
            if not heirs or (_ask(heirs[0], "ROLE") or [""])[0] != "master":
                return None
            return heirs[0]

        return poll_for(taken_over, within, f"a replica to take over the slots of {old_port}")

    def move_slot(self, slot: int, to_port: int, batch: int = 100, within: float = 30) -> None:
        """Live resharding of one slot, keys and all, the documented way: IMPORTING on the target,
        MIGRATING on the source, MIGRATE its keys in batches, then SETSLOT NODE on every master."""
        view = self._view()
        source = next(node for node in view if node.is_master and node.owns(slot))
        target = next(node for node in view if node.port == to_port)
        if source.port == to_port:
            return
        _run(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        _run(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
        count = int(_run(source.port, "CLUSTER", "COUNTKEYSINSLOT", slot))
        for _ in range(count // batch + 2):  # new keys go to the target (ASK): the source only shrinks
            keys = _run(source.port, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            _run(source.port, "MIGRATE", HOST, to_port, "", 0, int(timeout(5) * 1000), "KEYS", *keys)
        else:
            raise AssertionError(f"slot {slot} still has keys on {source.port} after {count} were moved")
        others = [
            n.port for n in view if n.is_master and not n.failing and n.port not in (source.port, to_port)
        ]
        for port in [to_port, source.port, *others]:
            _run(port, "CLUSTER", "SETSLOT", slot, "NODE", target.id)
        self._wait_until_owned({slot}, to_port, within)

    def reshard(self, from_port: int, to_port: int, slots: int, within: float = 60) -> None:
        """Move ``slots`` slots (and their keys) from one master to another with redis-cli."""
        source, target = self._node(from_port), self._node(to_port)
        held = _expand(source.slots)
        command = ["redis-cli", "--cluster", "reshard", f"{HOST}:{from_port}"]
        command += ["--cluster-from", source.id, "--cluster-to", target.id]
        self._redis_cli([*command, "--cluster-slots", str(slots), "--cluster-yes"])

        def moved() -> bool:
            layout = self._settled()
            if layout is None:
                return False
            gone = held - _expand(layout.get(from_port, ()))
            return len(gone) == min(slots, len(held)) and gone <= _expand(layout.get(to_port, ()))

        wait_until(moved, within, f"every node to see {slots} slots moved to {to_port}", interval=0.1)

    def _wait_until_owned(self, slots: set[int], port: int, within: float) -> None:
        def owned() -> bool:
            layout = self._settled()
            return layout is not None and slots <= _expand(layout.get(port, ()))

        wait_until(owned, within, f"every node to see {len(slots)} slot(s) served by {port}", interval=0.1)
