"""Start-up safety: one server per data folder, busy ports found before anything loads, and
the shutdown confirmed (issue 16, items 1, 2 and 14)."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from app.core.errors import RedisSetupError
from app.redis import embedded as redis_stack


def test_a_second_server_on_the_same_data_folder_stops_at_once(tmp_path: Path) -> None:
    first = redis_stack.EmbeddedRedis(tmp_path / "redis").start()
    try:
        with redis.Redis.from_url(first.url) as client:
            client.set("k", "v")
        aof_dir = tmp_path / "redis" / "appendonlydir"
        before = sorted(p.name for p in aof_dir.iterdir())
        second = redis_stack.EmbeddedRedis(tmp_path / "redis")
        with pytest.raises(RedisSetupError) as err:
            second.start()
        message = str(err.value)
        assert "in use by pid" in message and str(tmp_path / "redis") in message
        assert "\n" not in message
        assert second.proc is None
        # The first server's files are untouched and it still answers.
        assert sorted(p.name for p in aof_dir.iterdir()) == before
        with redis.Redis.from_url(first.url) as client:
            assert client.get("k") == b"v"
    finally:
        first.stop()
    # Stopped: the folder is free again.
    again = redis_stack.EmbeddedRedis(tmp_path / "redis").start()
    try:
        with redis.Redis.from_url(again.url) as client:
            assert client.get("k") == b"v"
    finally:
        again.stop()


def test_the_lock_is_held_while_the_server_lives(tmp_path: Path) -> None:
    """The redis-server child keeps the lock: losing our descriptor does not free the folder."""
    server = redis_stack.EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert server._lock is not None
        server._lock.release()  # as if this process had died without stopping the server
        with pytest.raises(RedisSetupError, match="in use"):
            redis_stack.EmbeddedRedis(tmp_path / "redis").start()
    finally:
        server.stop()


def busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_a_busy_port_stops_the_demo_before_anything_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.main import main

    with busy_port() as sock:
        port = sock.getsockname()[1]
        monkeypatch.setenv("RETAIL_PORT", str(port))
        monkeypatch.setenv("RETAIL_DATA_DIR", str(tmp_path / "var"))
        monkeypatch.delenv("REDIS_URL", raising=False)
        for command in (["demo"], ["serve"]):
            assert main(command) == 2
            err = capsys.readouterr().err.strip()
            assert err == (
                f"error: port {port} on 127.0.0.1 is already in use, so the API cannot start "
                "there: stop the other server or set RETAIL_PORT (or --port)"
            )
    assert not (tmp_path / "var" / "redis").exists()  # no Redis started, nothing loaded


def test_shutdown_confirms_that_redis_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.common import redis_for
    from app.core.settings import load_settings

    settings = replace(load_settings(None), redis_url=None, data_dir=tmp_path)
    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        assert client.ping()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "stopping Redis ..."
    assert lines[-1] == f"Redis stopped; data kept in {tmp_path / 'redis'}"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_a_second_demo_on_a_held_data_folder_names_the_holder_before_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first demo holds both the folder and the port: the folder is what to report."""
    from app.cli.main import main

    server = redis_stack.EmbeddedRedis(tmp_path / "var" / "redis").start()
    try:
        with busy_port() as sock:
            monkeypatch.setenv("RETAIL_PORT", str(sock.getsockname()[1]))
            monkeypatch.setenv("RETAIL_DATA_DIR", str(tmp_path / "var"))
            monkeypatch.delenv("REDIS_URL", raising=False)
            assert main(["demo"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: data folder {tmp_path / 'var' / 'redis'} is in use by pid")
        assert "\n" not in err
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()  # the first one is untouched
    finally:
        server.stop()


def test_the_port_is_held_from_the_check_to_the_server() -> None:
    """A second start while the first is still loading found the port free, took it, and
    the first died after loading (`Address already in use`): the check now keeps it."""
    from app.cli.common import reserve_port
    from app.core.errors import ConfigError

    held = reserve_port("127.0.0.1", 0)
    try:
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            reserve_port("127.0.0.1", port)
    finally:
        held.close()


def test_sigterm_while_starting_stops_the_embedded_redis(tmp_path: Path) -> None:
    """SIGTERM before the server loop used to end the CLI at once, leaving its embedded Redis
    running (and holding the data folder)."""
    import os
    import signal
    import subprocess
    import sys

    from app.core.settings import ROOT

    with busy_port() as probe:  # a free port number, released before the CLI binds it
        port = probe.getsockname()[1]
    env = {**os.environ, "RETAIL_PORT": str(port), "RETAIL_DATA_DIR": str(tmp_path / "var"),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    env.pop("REDIS_URL", None)
    seen = []
    with subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                seen.append(line)
                if line.startswith("Redis Stack ready"):
                    proc.send_signal(signal.SIGTERM)  # the app is not serving yet
                    break
            rest = "".join(seen) + proc.stdout.read()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code in (0, 143), (code, rest)
    assert "Redis stopped; data kept in" in rest, (code, rest)
    # Nothing holds the folder any more: a new server can start on it.
    again = redis_stack.EmbeddedRedis(tmp_path / "var" / "redis").start()
    again.stop()


def test_an_ack_timeout_not_below_the_socket_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.core.settings import load_settings

    monkeypatch.setenv("RETAIL_ACK_TIMEOUT_MS", "2000")
    monkeypatch.setenv("RETAIL_REDIS_TIMEOUT_MS", "2000")
    with pytest.raises(ValueError, match=r"RETAIL_ACK_TIMEOUT_MS \(2000\) must be below"):
        load_settings(None)
    monkeypatch.setenv("RETAIL_ACK_TIMEOUT_MS", "1999")
    assert load_settings(None).ack_timeout_ms == 1999
