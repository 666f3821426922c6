"""Replicated acknowledgement: wait until each primary's replicas hold what it has written.

Redis replication is asynchronous: a reply means the primary applied the write (and, with AOF
everysec, that it reaches its disk within about a second), not that a replica has it. A primary
killed right after replying can lose its last writes when its replica is promoted.

`WAIT numreplicas timeout` closes that gap, but it waits for the writes of the connection that
sends it, and a cluster client spreads one batch over pooled connections of several primaries.
So, per primary, one connection writes a small beacon key (in a slot that primary owns) and
sends WAIT right behind it: the replication stream is ordered, so a replica that acknowledges
the beacon holds every write the primary applied before it, the whole batch included.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.crc import key_slot

from app.redis.connect import is_cluster, node_name, primaries

BEACON_TTL_MS = 60_000  # one small key per primary, rewritten by every acknowledged batch


@dataclass(frozen=True)
class Replicated:
    ok: bool  # every primary had `replicas` replicas acknowledge its writes in time
    lagging: tuple[str, ...]  # primaries (host:port) that did not
    waited_ms: float


def beacon_keys(client: redis.Redis, prefix: str) -> dict[str, str]:
    """host:port of each primary -> a key whose slot that primary serves."""
    if not is_cluster(client):
        return {node_name(client): f"{prefix}ack:{{b}}"}
    cluster = cast(Any, client)
    out: dict[str, str] = {}
    wanted = {node_name(n) for n in primaries(client)}
    i = 0
    while wanted - set(out) and i < 100_000:
        key = f"{prefix}ack:{{b{i}}}"
        node = cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        out.setdefault(f"{node.host}:{node.port}", key)
        i += 1
    return out


def wait_replicated(
    client: redis.Redis, prefix: str, *, replicas: int = 1, timeout_ms: int = 100
) -> Replicated:
    """Block until every primary's writes so far reached `replicas` replicas, or timeout."""
    start = time.perf_counter()
    beacons = beacon_keys(client, prefix)

    def ack(node: redis.Redis) -> tuple[str, bool]:
        name = node_name(node)
        pipe = node.pipeline(transaction=False)  # one connection: WAIT covers the SET
        pipe.set(beacons[name], "1", px=BEACON_TTL_MS)
        pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
        _, acked = pipe.execute()
        return name, int(acked) >= replicas

    nodes = primaries(client)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        results = list(pool.map(ack, nodes))
    lagging = tuple(sorted(name for name, ok in results if not ok))
    return Replicated(not lagging, lagging, (time.perf_counter() - start) * 1000)
