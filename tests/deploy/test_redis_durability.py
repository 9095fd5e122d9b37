"""Redis holds the regions' round state, so every Redis the deployment runs persists it:
an append-only file fsynced every second, on a volume that outlives the container.

See docs/deploy.md, "Redis durability", for what is at stake and what each setting loses.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.test_manifests import K8S, one, render

ROOT = Path(__file__).resolve().parents[2]
DURABLE = {"appendonly": "yes", "appendfsync": "everysec"}


def redis_directives(lines: list[str]) -> dict[str, str]:
    """The last value of each directive, as Redis reads a config file or `--name value` arguments."""
    settings: dict[str, str] = {}
    for line in lines:
        words = line.split("#", 1)[0].split()
        if words:
            settings[words[0].lower().lstrip("-")] = " ".join(words[1:])
    return settings


def compose_redis() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    return service


def test_the_compose_redis_writes_an_append_only_file_fsynced_every_second() -> None:
    command = compose_redis()["command"]
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    assert words[0] == "redis-server", words
    assert not any(w.endswith(".conf") for w in words[1:]), "settings are given as arguments, not a file"
    args = words[1:]
    assert all(a.startswith("--") for a in args[::2]) and len(args) % 2 == 0, f"expected --name value pairs: {args}"
    settings = redis_directives([f"{name} {value}" for name, value in zip(args[::2], args[1::2], strict=True)])
    assert {k: settings.get(k) for k in DURABLE} == DURABLE
    assert settings.get("maxmemory-policy") == "noeviction", "round state must never be evicted"


def test_the_compose_redis_keeps_its_data_in_a_named_volume() -> None:
    volumes = yaml.safe_load((ROOT / "docker-compose.yml").read_text()).get("volumes") or {}
    mounts = [str(m).split(":") for m in compose_redis()["volumes"]]
    data = [m[0] for m in mounts if len(m) >= 2 and m[1] == "/data"]
    assert data and data[0] in volumes, f"/data must be a named volume declared under volumes: {mounts}"


def test_the_kubernetes_redis_writes_an_append_only_file_on_a_persistent_volume(kubectl: str) -> None:
    objects = render(kubectl, K8S / "infra")
    redis = one(objects, "Redis", "microte-redis")["spec"]
    config = one(objects, "ConfigMap", redis["redisConfig"]["additionalRedisConfig"])
    settings = redis_directives(config["data"]["redis-additional.conf"].splitlines())
    assert {k: settings.get(k) for k in DURABLE} == DURABLE
    assert settings.get("maxmemory-policy") == "noeviction", "round state must never be evicted"
    claim = redis["storage"]["volumeClaimTemplate"]["spec"]
    assert "ReadWriteOnce" in claim["accessModes"] and claim["resources"]["requests"]["storage"]


def test_the_redis_durability_trade_off_is_documented() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "### Redis durability" in doc
    section = doc.split("### Redis durability", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    for word in ("appendonly yes", "appendfsync everysec", "always", "fence", "claims", "membership"):
        assert word in section, f"docs/deploy.md, Redis durability, does not mention {word!r}"
