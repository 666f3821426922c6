"""The local cluster launcher (app/redis/cluster.py): restart on its folder, shape checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.core.errors import RedisSetupError
from app.redis.cluster import LocalCluster
from app.redis.connect import connect

pytestmark = pytest.mark.cluster


def test_a_restart_on_the_same_folder_brings_the_cluster_and_its_data_back(
    tmp_path: Path,
) -> None:
    base = tmp_path / "cluster"
    first = LocalCluster(base, 3, search_node=False).start()
    try:
        with connect(first.url) as client:
            for i in range(30):
                client.set(f"k{i}", i)
        time.sleep(1.2)  # AOF everysec: let the last second reach the disk
    finally:
        first.stop()
    again = LocalCluster(base, 3, search_node=False).start()
    try:
        assert again.url == first.url  # the same ports: nodes.conf names them
        with connect(again.url) as client:
            assert [client.get(f"k{i}") for i in range(30)] == [str(i).encode() for i in range(30)]
    finally:
        again.stop()
    with pytest.raises(RedisSetupError, match="remove that folder"):
        LocalCluster(base, 4, search_node=False).start()


def test_fewer_than_three_masters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RedisSetupError, match="at least 3 masters"):
        LocalCluster(tmp_path / "c", 2).start()
