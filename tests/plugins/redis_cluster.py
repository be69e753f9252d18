"""A real Redis Cluster (3 primaries, 1 replica each) from Debian's ``redis-server``, once per session.

``redis_cluster`` (session) yields a ``RedisClusterServers`` with ``.url``
(``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,.../``), ``.nodes``, ``.primaries()``, ``.kill(port)`` and
``.restart(port)``. ``redis_cluster_url`` (function) waits until the cluster is whole, empties every
primary and yields the URL. Without ``redis-server`` or ``redis-cli`` the tests skip; with ``CI=true``
they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from plugins.redis_server import RedisServer, free_port, redis_binary

CLI_HINT = "redis-cli not found: install it with `sudo apt-get install -y redis-tools`"
PRIMARIES = 3


class ClusterNodeServer(RedisServer):
    """One cluster node: a ``RedisServer`` started with ``--cluster-enabled yes``."""

    def __init__(self, binary: str, workdir: Path, port: int) -> None:
        super().__init__(binary, workdir, port)
        self.bus_port = free_port()

    def extra_args(self) -> tuple[str, ...]:
        """Cluster mode on; the node keeps its identity in ``nodes.conf`` across restarts."""
        return (
            *super().extra_args(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            # the bus port of its own: the default (port + 10000) may not exist for a high free port
            "--cluster-port", str(self.bus_port),
            # a lost primary is detected and replaced within a few seconds
            "--cluster-node-timeout", "1000",
            "--cluster-replica-validity-factor", "0",
            # replicas in sync at once, not after the default 5 s diskless-sync delay
            "--repl-diskless-sync-delay", "0",
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: the node vanishes as a crashed host would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


def wait_until(cond: object, timeout: float, what: str) -> None:
    """Poll ``cond()`` every 50 ms until true, or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0.05)


class RedisClusterServers:
    """Six ``ClusterNodeServer`` processes joined by ``redis-cli --cluster create``."""

    def __init__(self, binary: str, cli: str, workdir: Path) -> None:
        self.cli = cli
        self.nodes: dict[int, ClusterNodeServer] = {}
        for _ in range(2 * PRIMARIES):
            port = free_port()
            node_dir = workdir / str(port)
            node_dir.mkdir()
            self.nodes[port] = ClusterNodeServer(binary, node_dir, port)

    @property
    def url(self) -> str:
        """The store URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.nodes) + "/"

    def start(self) -> None:
        """Start every node and create the cluster."""
        for node in self.nodes.values():
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_whole()

    def cli_run(self, *args: str, timeout: float = 120) -> str:
        """Run ``redis-cli`` and return its output (raises on failure)."""
        done = subprocess.run([self.cli, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"redis-cli {' '.join(args)} exited with {done.returncode}:\n{done.stdout[-3000:]}")
        return done.stdout

    def _view(self, port: int) -> dict[str, dict[str, object]]:
        client = self.nodes[port].client()
        try:
            return dict(client.execute_command("CLUSTER NODES"))
        finally:
            client.close()

    def primaries(self) -> list[int]:
        """Ports of the primaries that hold slots, as a running node sees them."""
        port = next(p for p, n in self.nodes.items() if n.running)
        return sorted(
            int(addr.rsplit(":", 1)[1])
            for addr, node in self._view(port).items()
            if "master" in str(node["flags"]) and "fail" not in str(node["flags"]) and node["slots"]
        )

    def whole(self) -> bool:
        """All six nodes up, each reports cluster_state:ok, and every replica's link to its primary is up."""
        if not all(n.running for n in self.nodes.values()):
            return False
        for node in self.nodes.values():
            client = node.client()
            try:
                if dict(client.execute_command("CLUSTER INFO")).get("cluster_state") != "ok":
                    return False
                view = self._view(node.port).values()
                if len(view) != len(self.nodes) or any(
                    "fail" in str(n["flags"]) or "handshake" in str(n["flags"]) for n in view
                ):
                    return False
                replication = client.info("replication")
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False  # a replica still syncing would lose acknowledged writes in a failover
            except redis.RedisError:
                return False
            finally:
                client.close()
        return len(self.primaries()) == PRIMARIES

    def agree(self) -> bool:
        """``redis-cli --cluster check`` passes: every node agrees about the slot map, no slot open."""
        port = next(p for p, n in self.nodes.items() if n.running)
        done = subprocess.run([self.cli, "--cluster", "check", f"127.0.0.1:{port}"], capture_output=True, timeout=30)
        return done.returncode == 0

    def in_sync(self) -> bool:
        """Every replica has applied its primary's whole replication stream (offsets equal)."""
        offsets: dict[int, int] = {}
        replicas: list[tuple[int, int]] = []
        for port, node in self.nodes.items():
            client = node.client()
            try:
                info = client.info("replication")
            except redis.RedisError:
                return False
            finally:
                client.close()
            if info.get("role") == "master":
                offsets[port] = int(info["master_repl_offset"])
            else:
                replicas.append((int(info["master_port"]), int(info.get("slave_repl_offset", -1))))
        return all(offsets.get(primary) == offset for primary, offset in replicas)

    def repair(self) -> None:
        """Give a primary back the slots every other node says it owns but its own view lost.

        Seen here: after a reshard, a kill and a restart, the promoted primary dropped one slot from its
        own view (``cluster_state:fail`` on it alone, ``--cluster check``: nodes disagree, a slot
        uncovered) while the others still routed that slot to it; Redis never heals this by itself, so
        every later test in the session would wait for a whole cluster in vain."""
        views = {p: self._view(p) for p, n in self.nodes.items() if n.running}
        for port, view in views.items():
            me = next((n for n in view.values() if "myself" in str(n["flags"])), None)
            if me is None or "master" not in str(me["flags"]):
                continue
            own = {s for lo_hi in me["slots"] for s in range(int(lo_hi[0]), int(lo_hi[-1]) + 1)}
            addr = f"127.0.0.1:{port}"
            claimed = [
                {s for lo_hi in other[addr]["slots"] for s in range(int(lo_hi[0]), int(lo_hi[-1]) + 1)}
                for p, other in views.items()
                if p != port and addr in other
            ]
            lost = set.intersection(*claimed) - own if claimed else set()
            if lost:
                client = self.nodes[port].client()
                try:
                    client.execute_command("CLUSTER ADDSLOTS", *sorted(lost))
                except redis.RedisError:
                    pass  # another node holds it in this node's view: leave it to the next poll
                finally:
                    client.close()

    def wait_whole(self, timeout: float = 120, *, synced: bool = True) -> None:
        """Wait until the cluster is whole again (after a kill and restart, or moved slots): every node up
        and agreeing, and (``synced``) every replica in sync. A primary that lost a slot from its own view is
        repaired. While writes flow, replication offsets never line up at the instant they are read: pass
        ``synced=False`` there."""
        deadline = time.monotonic() + timeout
        while not (self.whole() and self.agree() and (not synced or self.in_sync())):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become whole")
            with contextlib.suppress(redis.RedisError):
                self.repair()
            time.sleep(0.2)

    def flush(self) -> None:
        """Empty every primary (replicas follow)."""
        for port in self.primaries():
            client = self.nodes[port].client()
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes.values():
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-primary, 3-replica Redis Cluster on loopback ports for the whole session."""
    binary = redis_binary()
    cli = shutil.which("redis-cli")
    if cli is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(CLI_HINT)
        pytest.skip(CLI_HINT)
    cluster = RedisClusterServers(binary, cli, tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> Iterator[str]:
    """The session cluster's URL, whole and with every primary emptied."""
    for node in redis_cluster.nodes.values():
        node.start()
    redis_cluster.wait_whole()
    redis_cluster.flush()
    yield redis_cluster.url
