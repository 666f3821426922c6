"""docker-compose.yml and the Dockerfile, validated statically (no Docker engine on CI machines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
JOBS = {"catalog", "replay", "train"}
CLUSTER_JOBS = {"cluster-init", "catalog-cluster", "replay-cluster", "train-cluster"}
ENGINE = {"app", "worker", *JOBS}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def test_compose_file_is_sound() -> None:
    services = SERVICES
    assert {"redis", "redis8", "app", "worker", *JOBS} <= set(services)
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
        if name not in JOBS | CLUSTER_JOBS:
            assert "healthcheck" in svc, f"{name}: needs a healthcheck"
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: bind {port} to localhost"
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in compose_volumes(), f"{name}: named volume {volume}"
    assert "--appendonly yes" in services["redis"]["environment"]["REDIS_ARGS"]
    assert "redis/redis-stack:7.4" in services["redis"]["image"]
    assert "8001:8001" in " ".join(services["redis"]["ports"])  # RedisInsight
    assert services["redis"]["volumes"] == ["redis-data:/data"]
    assert services["redis8"]["profiles"] == ["redis8"]
    assert "--appendonly" in services["redis8"]["command"]


def compose_volumes() -> dict[str, Any]:
    return dict(COMPOSE.get("volumes") or {})


def test_app_is_hypercorn_with_workers_behind_a_healthy_redis() -> None:
    app = SERVICES["app"]
    assert app["build"]["context"] == "." and (ROOT / app["build"]["dockerfile"]).is_file()
    cmd = app["command"]
    assert cmd[:2] == ["hypercorn", "app.api.app:app_factory()"]
    workers = int(cmd[cmd.index("--workers") + 1])
    assert workers >= 2
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0:8000"
    assert "127.0.0.1:8000:8000" in app["ports"]
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/health" in " ".join(app["healthcheck"]["test"])
    # The factory hypercorn evaluates exists.
    tree = ast.parse((ROOT / "app" / "api" / "app.py").read_text())
    assert "app_factory" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("name", sorted(ENGINE))
def test_engine_services_share_the_image_and_run_modules_that_exist(name: str) -> None:
    svc = SERVICES[name]
    assert svc["image"] == SERVICES["app"]["image"]
    assert svc["build"] == SERVICES["app"]["build"]
    env = svc["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    # No secret in the file: the admin key is read from the environment, empty by default.
    assert env["RETAIL_ADMIN_KEY"] in ("${RETAIL_ADMIN_KEY:-}", "${RETAIL_ADMIN_KEY}")
    for secret in ("RETAIL_SERVER_KEYS", "RETAIL_IDENTITY_SECRET"):
        assert env[secret] in (f"${{{secret}:-}}", f"${{{secret}}}")
    cmd = svc["command"]
    if cmd[0] == "python":
        assert cmd[1] == "-m"
        module = ROOT / (cmd[2].replace(".", "/") + ".py")
        assert module.is_file(), f"{name}: {cmd[2]} does not exist"
        source = module.read_text()
        assert 'if __name__ == "__main__":' in source, f"{name}: {cmd[2]} is not runnable"
    for dep, spec in svc["depends_on"].items():
        assert dep in SERVICES and spec["condition"] in CONDITIONS, (name, dep)
        if spec["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dep], (name, dep)
    if name in JOBS:
        assert svc["restart"] == "no"
    else:
        assert svc["restart"] == "unless-stopped"


def test_jobs_run_in_order_without_cycles() -> None:
    assert SERVICES["catalog"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for job in ("replay", "train"):
        cond = SERVICES[job]["depends_on"]["catalog"]["condition"]
        assert cond == "service_completed_successfully"
    assert SERVICES["worker"]["depends_on"]["app"]["condition"] == "service_healthy"
    assert "online-retail" in SERVICES["catalog"]["command"]

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        for dep in SERVICES[name].get("depends_on", {}):
            visit(dep, (*path, name))

    for name in SERVICES:
        visit(name, ())


def test_the_loader_commands_parse() -> None:
    """The arguments the jobs pass are accepted by the loaders' own parsers."""
    from loaders import catalog

    args = catalog.build_parser().parse_args(SERVICES["catalog"]["command"][3:])
    assert args.kind == "online-retail" and args.no_progress
    for job in ("replay", "train"):
        flags = SERVICES[job]["command"][3:]
        source = (ROOT / "loaders" / f"{job}.py").read_text()
        for flag in flags:
            assert f'"{flag}"' in source, f"{job}: unknown flag {flag}"


def test_dockerfile_is_slim_pinned_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    assert all("slim" in b for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, flags=re.MULTILINE)
    assert cmd is not None
    assert ast.literal_eval(cmd.group(1))[:2] == ["hypercorn", "app.api.app:app_factory()"]
    assert "HEALTHCHECK" in text
    # Everything the code reads next to app/ is copied into the image.
    for folder in ("app", "loaders", "lua", "indexes", "features", "data"):
        assert re.search(rf"^COPY\s+{folder}\s", text, flags=re.MULTILINE), folder
        assert (ROOT / folder).is_dir(), folder
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", "var", ".git"} <= set(ignored)


def test_cluster_profile_runs_the_engine_on_three_masters_and_a_search_node() -> None:
    """`docker compose --profile cluster up`: docs/cluster.md."""
    cluster = {n for n, s in SERVICES.items() if s.get("profiles") == ["cluster"]}
    nodes = {"redis-c1", "redis-c2", "redis-c3"}
    assert nodes | {"redis-search", "cluster-init", "app-cluster", "worker-cluster"} <= cluster
    assert cluster >= CLUSTER_JOBS
    for node in nodes:
        args = SERVICES[node]["environment"]["REDIS_ARGS"]
        assert "--cluster-enabled yes" in args and "--appendonly yes" in args, node
        assert "redis-stack-server:7.4" in SERVICES[node]["image"]
    assert "--cluster-enabled" not in SERVICES["redis-search"]["environment"]["REDIS_ARGS"]
    create = SERVICES["cluster-init"]["command"][-1]
    assert "--cluster create" in create and all(f"{n}:6379" in create for n in nodes)
    assert "cluster_state:ok" in create  # a second `up` does not try to create it again
    assert set(SERVICES["cluster-init"]["depends_on"]) == nodes
    for name in cluster - nodes - {"redis-search", "cluster-init"}:
        svc = SERVICES[name]
        assert svc["image"] == SERVICES["app"]["image"], name
        env = svc["environment"]
        assert env["REDIS_URL"].startswith("redis+cluster://"), name
        assert all(f"{n}:6379" in env["REDIS_URL"] for n in nodes), name
        assert env["CATALOG_REDIS_URL"].startswith("redis://redis-search:6379"), name
        assert env["RETAIL_ADMIN_KEY"] in ("${RETAIL_ADMIN_KEY:-}", "${RETAIL_ADMIN_KEY}")
        assert svc["restart"] == ("no" if name in CLUSTER_JOBS else "unless-stopped"), name
        for dep, spec in svc["depends_on"].items():
            assert dep in cluster and spec["condition"] in CONDITIONS, (name, dep)
    # The URL parses into the three seeds the engine's connect() takes.
    from urllib.parse import urlsplit

    url = SERVICES["app-cluster"]["environment"]["REDIS_URL"]
    assert urlsplit(url).netloc.split(",") == [f"{n}:6379" for n in sorted(nodes)]
