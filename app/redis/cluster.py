"""A local Redis Cluster from the embedded Redis Stack binaries, plus the search node.

`python -m app.cli redis --cluster 3 [--replicas 1]` and the test suite's cluster pass use it:
N masters (and optionally R replicas per master), each a `redis-server` with the four modules,
`cluster-enabled yes`, its own data folder and AOF; the slots are assigned by the bundled
`redis-cli --cluster create`. Beside them runs one non-clustered Redis Stack, the search node,
which holds the catalog and its index (RediSearch 2.10 without a coordinator only indexes the
documents of its own shard; see docs/cluster.md).

The ports are chosen once and written to `<base>/cluster.json`: cluster nodes remember each
other by address (`nodes.conf`), so a restart on the same folder must reuse them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.core.errors import RedisSetupError
from app.redis import embedded

NODE_TIMEOUT_MS = 2000  # failure detection: a dead master's replica takes over ~2-4 s later


@dataclass
class LocalCluster:
    base_dir: Path
    masters: int = 3
    replicas: int = 0  # per master
    host: str = "127.0.0.1"
    search_node: bool = True
    appendfsync: str = "everysec"
    remove_on_stop: bool = False
    nodes: list[embedded.EmbeddedRedis] = field(default_factory=list, init=False)
    search: embedded.EmbeddedRedis | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The cluster URL the engine takes (`REDIS_URL`): every master as a seed node (one
        reachable seed is enough to start)."""
        seeds = ",".join(f"{self.host}:{n.port}" for n in self.nodes[: self.masters])
        return f"redis+cluster://{seeds}"

    @property
    def catalog_url(self) -> str:
        """`CATALOG_REDIS_URL`: the search node."""
        if self.search is None:
            raise RedisSetupError("this local cluster was started without a search node")
        return self.search.url

    @property
    def size(self) -> int:
        return self.masters * (1 + self.replicas)

    # -- start ----------------------------------------------------------------------------

    def _ports(self) -> tuple[list[int], int]:
        """Ports of the nodes and of the search node: reused from cluster.json when it fits."""
        state = self.base_dir / "cluster.json"
        if state.exists():
            saved = json.loads(state.read_text())
            if saved.get("masters") == self.masters and saved.get("replicas") == self.replicas:
                return [int(p) for p in saved["ports"]], int(saved["search_port"])
            raise RedisSetupError(
                f"{self.base_dir} holds a cluster of {saved.get('masters')} masters x "
                f"{saved.get('replicas')} replicas; remove that folder (or use another "
                "RETAIL_DATA_DIR) to start a different shape"
            )
        ports = self._free_ports(self.size + 1)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({
            "masters": self.masters, "replicas": self.replicas,
            "ports": ports[:-1], "search_port": ports[-1],
        }))  # fmt: skip
        return ports[:-1], ports[-1]

    def _free_ports(self, n: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < n:
            port = embedded.free_port(self.host)
            # The cluster bus listens on port + 10000: both must be free and below 65536.
            if port not in ports and port + 10000 < 65536 and port < 55000:
                ports.append(port)
        return ports

    def start(self, timeout: float = 60.0) -> LocalCluster:
        if self.masters < 3:
            raise RedisSetupError("a Redis Cluster needs at least 3 masters (failover votes)")
        ports, search_port = self._ports()
        fresh = not any((self.base_dir / f"node-{i}" / "nodes.conf").exists()
                        for i in range(self.size))  # fmt: skip
        self.nodes = [
            embedded.EmbeddedRedis(
                self.base_dir / f"node-{i}", port=port, host=self.host,
                appendfsync=self.appendfsync,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                ),
            )
            for i, port in enumerate(ports)
        ]  # fmt: skip
        if self.search_node:
            self.search = embedded.EmbeddedRedis(
                self.base_dir / "search",
                port=search_port,
                host=self.host,
                appendfsync=self.appendfsync,
            )
        # The OpenSSL 1.1 links every node's environment shares, made once before the threads.
        embedded.server_env(self.base_dir / ".runtime")
        try:
            # In parallel: each server spends most of its start-up loading the modules.
            with ThreadPoolExecutor(max_workers=len(self.nodes) + 1) as pool:
                started = [pool.submit(n.start) for n in [*self.nodes, *self._search_list()]]
                for fut in started:
                    fut.result()
            if fresh:
                self._create()
            self.wait_ok(timeout)
        except BaseException:
            self.stop()  # every node started so far (and a temporary folder)
            raise
        return self

    def _create(self) -> None:
        addrs = [f"{self.host}:{n.port}" for n in self.nodes]
        cmd = [str(embedded.cli_binary()), "--cluster", "create", *addrs,
               "--cluster-replicas", str(self.replicas), "--cluster-yes"]  # fmt: skip
        env = embedded.server_env(self.base_dir / ".runtime")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RedisSetupError(
                f"redis-cli --cluster create failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-800:]}"
            )

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every live node says cluster_state:ok and knows every other node."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            states = [self._state(n) for n in self.nodes if n.proc and n.proc.poll() is None]
            if states and all(s == "ok" for s in states):
                return
            last = ", ".join(states)
            if time.monotonic() > deadline:
                raise RedisSetupError(f"the cluster did not become ready in {timeout}s: {last}")
            time.sleep(0.2)

    def _state(self, node: embedded.EmbeddedRedis) -> str:
        try:
            with redis.Redis(host=self.host, port=node.port, socket_timeout=2) as c:
                info = c.execute_command("CLUSTER INFO")
        except redis.RedisError as exc:
            return f"{node.port}: {exc}"
        if isinstance(info, bytes | str):  # unparsed on some redis-py versions
            text = info.decode() if isinstance(info, bytes) else info
            info = dict(line.split(":", 1) for line in text.split() if ":" in line)
        fields = {str(k): str(v) for k, v in info.items()}
        if fields.get("cluster_state") != "ok":
            return f"{node.port}: {fields.get('cluster_state')}"
        if int(fields.get("cluster_known_nodes", 0)) < self.size:
            return f"{node.port}: knows {fields.get('cluster_known_nodes')} nodes"
        return self._replication_state(node)

    def _replication_state(self, node: embedded.EmbeddedRedis) -> str:
        """A master is ready once its replicas finished their initial sync (online)."""
        if not self.replicas:
            return "ok"
        with redis.Redis(host=self.host, port=node.port, socket_timeout=2) as c:
            info = c.info("replication")
        if info.get("role") != "master":
            return "ok"
        links = [info.get(f"slave{i}") for i in range(int(info.get("connected_slaves", 0)))]
        online = sum(
            1 for link in links if isinstance(link, dict) and link.get("state") == "online"
        )
        return "ok" if online >= self.replicas else f"{node.port}: {online} replicas online"

    # -- inspect / break ------------------------------------------------------------------

    def master_of(self, port_or_key: int | str) -> embedded.EmbeddedRedis:
        """The node now serving the slot of `key` (or the node on `port`)."""
        if isinstance(port_or_key, int):
            return next(n for n in self.nodes if n.port == port_or_key)
        alive = next(n for n in self.nodes if n.proc and n.proc.poll() is None)
        with redis.Redis(host=self.host, port=alive.port) as c:
            slot = int(c.execute_command("CLUSTER KEYSLOT", port_or_key))
            for start, end, primary, *_ in c.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.master_of(int(primary[1]))
        raise RedisSetupError(f"no node serves the slot of {port_or_key!r}")

    def masters_now(self) -> list[embedded.EmbeddedRedis]:
        """The nodes that are primaries now (after failovers too)."""
        alive = [n for n in self.nodes if n.proc and n.proc.poll() is None]
        with redis.Redis(host=self.host, port=alive[0].port) as c:
            slots = c.execute_command("CLUSTER SLOTS")
            ports = {int(primary[1]) for _s, _e, primary, *_ in slots}
        return [n for n in self.nodes if n.port in ports]

    # -- stop -----------------------------------------------------------------------------

    def _search_list(self) -> list[embedded.EmbeddedRedis]:
        return [self.search] if self.search is not None else []

    def _stop_nodes(self) -> None:
        def stop(node: embedded.EmbeddedRedis) -> None:
            with contextlib.suppress(Exception):
                node.stop()

        with ThreadPoolExecutor(max_workers=len(self.nodes) + 1) as pool:
            list(pool.map(stop, [*self.nodes, *self._search_list()]))

    def stop(self) -> None:
        try:
            self._stop_nodes()
        finally:
            if self.remove_on_stop:
                import shutil

                shutil.rmtree(self.base_dir.parent, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def temporary(masters: int = 3, replicas: int = 0, *, search_node: bool = True) -> LocalCluster:
    """A local cluster in a fresh temporary folder (tests and benchmarks)."""
    import tempfile

    return LocalCluster(
        Path(tempfile.mkdtemp(prefix="retail-cluster-")) / "cluster",
        masters=masters,
        replicas=replicas,
        search_node=search_node,
        remove_on_stop=True,
    )
