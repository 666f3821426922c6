"""docker-compose.yml, validated statically (no Docker engine on CI machines)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_is_sound() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "redis8"} <= set(services)
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
        assert "healthcheck" in svc, f"{name}: needs a healthcheck"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: bind {port} to localhost"
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], f"{name}: named volume {volume}"
    assert "--appendonly yes" in services["redis"]["environment"]["REDIS_ARGS"]
    assert "redis/redis-stack:7.4" in services["redis"]["image"]
    assert "8001:8001" in " ".join(services["redis"]["ports"])  # RedisInsight
