"""The deployment is valid offline: the image, docker compose and the Kubernetes manifests.

Every overlay is rendered with `kubectl kustomize` and every rendered object is validated
against the Kubernetes JSON schemas (kubernetes-validate, pinned versions). The custom
resources (ServiceMonitor, ScaledObject, PrometheusRule, the RabbitMQ topology operator's
User/Permission/TopicPermission, ...) have no schema there: they are checked structurally
(test_broker_accounts.py has a schema of its own for the broker accounts), and against the
objects they point at.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.market import PricingRule

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The oldest and the newest Kubernetes minor that the manifests promise to work on.
KUBERNETES_VERSIONS = ("1.31", "1.37")

SERVICES = ("clock", "order-intake", "matcher", "meter-collector", "ledger-writer")
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
REGION_SETTINGS = (
    "MICROTE_REGION",
    "MICROTE_ROUND_SECONDS",
    "MICROTE_CLOSE_STEPS",
    "MICROTE_TIMEZONE",
    "MICROTE_PRICING_RULE",
    "MICROTE_GRID_PRICE",
    "MICROTE_FEE_RATIO",
    "MICROTE_PRICE_CAP",
    "MICROTE_HORIZON_S",
    "MICROTE_READING_DEADLINE_S",
    "MICROTE_HTTP_PORT",
    "MICROTE_LOG_LEVEL",
    "MICROTE_SERVICE_USERS",
)
# Secret keys of the environment variables that carry credentials; {service} is the Deployment.
SECRET_ENV = {
    "MICROTE_AMQP_URL": "amqp-url-{service}",  # every service its own broker account
    "MICROTE_SERVICE_KEY": "service-key",
    "MICROTE_REDIS_URL": "redis-url",
    "MICROTE_LEDGER_URL": "ledger-url",
}
CREDENTIALS_SECRET = "microte-credentials"
PRICING_RULES = {str(rule) for rule in PricingRule}
REGION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Kinds whose schemas are not in kubernetes-validate: the tests below check them by hand.
CUSTOM_KINDS = {
    "monitoring.coreos.com/v1": {"ServiceMonitor", "PrometheusRule", "PodMonitor"},
    "keda.sh/v1alpha1": {"ScaledObject", "TriggerAuthentication"},
    "rabbitmq.com/v1beta1": {"RabbitmqCluster", "User", "Permission", "TopicPermission"},
    "postgresql.cnpg.io/v1": {"Cluster"},
    "redis.redis.opstreelabs.in/v1beta2": {"Redis"},
}


# --------------------------------------------------------------------------- helpers


@functools.cache
def _render(kubectl: str, directory: Path, *flags: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run([kubectl, "kustomize", *flags, str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def render(kubectl: str, directory: Path) -> tuple[dict[str, Any], ...]:
    flags = ("--load-restrictor", "LoadRestrictionsNone") if directory.name == "monitoring" else ()
    return _render(kubectl, directory, *flags)


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert name in found, f"no {kind} {name} (have {sorted(found)})"
    return found[name]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: expected one container"
    return containers[0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def region_config(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("microte-region")]
    assert len(maps) == 1, "exactly one region ConfigMap"
    return maps[0]


def every_kustomization() -> Iterator[Path]:
    yield K8S / "base"
    for name in OVERLAYS:
        yield K8S / "overlays" / name
    yield K8S / "monitoring"
    yield K8S / "infra"


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, kubectl: str) -> tuple[str, tuple[dict[str, Any], ...]]:
    return request.param, render(kubectl, K8S / "overlays" / request.param)


# --------------------------------------------------------------------------- rendering and schemas


def test_there_are_overlays_for_at_least_two_regions() -> None:
    assert len(OVERLAYS) >= 2, OVERLAYS


@pytest.mark.parametrize("directory", list(every_kustomization()), ids=lambda p: str(p.relative_to(K8S)))
def test_every_kustomization_renders_with_kubectl_kustomize(kubectl: str, directory: Path) -> None:
    objects = render(kubectl, directory)
    assert objects, f"{directory} rendered nothing"
    for o in objects:
        assert {"apiVersion", "kind", "metadata"} <= o.keys(), o
        assert o["metadata"].get("name"), o


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", list(every_kustomization()), ids=lambda p: str(p.relative_to(K8S)))
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(
    kubectl: str, directory: Path, version: str
) -> None:
    checked = 0
    for o in render(kubectl, directory):
        name = f"{o['kind']} {o['metadata']['name']}"
        if o["kind"] in CUSTOM_KINDS.get(o["apiVersion"], set()):
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{name}: {o['apiVersion']} is not a Kubernetes {version} API and not a known custom kind")
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{name} is invalid for Kubernetes {version} at {path}: {exc.message}")
        checked += 1
    if directory.parent.name == "overlays" or directory.name == "base":
        assert checked >= 20, f"only {checked} objects validated"


def test_no_overlay_renders_a_secret_or_a_credential(overlay: tuple[str, tuple[dict[str, Any], ...]]) -> None:
    _, objects = overlay
    assert not of_kind(objects, "Secret"), "credentials must come from a Secret the operator creates"
    for value in region_config(objects)["data"].values():
        assert not re.search(r"://[^/\s]*@", value), f"a URL with credentials in the ConfigMap: {value}"


# --------------------------------------------------------------------------- regions


def test_each_overlay_sets_its_region_id_consistently(overlay: tuple[str, tuple[dict[str, Any], ...]]) -> None:
    region, objects = overlay
    config = region_config(objects)["data"]
    assert config["MICROTE_REGION"] == region, "MICROTE_REGION must equal the overlay's directory name"
    assert REGION_ID.match(region)
    namespaces = of_kind(objects, "Namespace")
    assert list(namespaces) == [f"microte-{region}"]
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == f"microte-{region}", f"{o['kind']} {o['metadata']['name']}"
        assert o["metadata"]["labels"].get("microte.io/region") == region, f"{o['kind']} {o['metadata']['name']}"
    for d in of_kind(objects, "Deployment").values():
        assert pod_labels(d).get("microte.io/region") == region, d["metadata"]["name"]
    queue = one(objects, "ScaledObject", "order-intake")["spec"]["triggers"][0]["metadata"]["queueName"]
    assert queue == f"microte.{region}.order-intake"


def test_the_regions_differ_in_id_and_timezone(kubectl: str) -> None:
    configs = {name: region_config(render(kubectl, K8S / "overlays" / name))["data"] for name in OVERLAYS}
    assert len({c["MICROTE_REGION"] for c in configs.values()}) == len(configs)
    assert len({c["MICROTE_TIMEZONE"] for c in configs.values()}) == len(configs)


def test_the_region_config_map_holds_every_market_setting_with_a_sane_value(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    data = region_config(objects)["data"]
    assert not set(REGION_SETTINGS) - data.keys(), f"missing: {set(REGION_SETTINGS) - data.keys()}"
    assert data["MICROTE_PRICING_RULE"] in PRICING_RULES
    assert data["MICROTE_HTTP_PORT"] == "8000"
    assert data.get("MICROTE_HTTP_HOST") == "0.0.0.0", "the services bind loopback by default: probes would fail"
    for key in ("MICROTE_ROUND_SECONDS", "MICROTE_CLOSE_STEPS", "MICROTE_HORIZON_S", "MICROTE_READING_DEADLINE_S"):
        assert int(data[key]) > 0, key
    for key in ("MICROTE_GRID_PRICE", "MICROTE_FEE_RATIO", "MICROTE_PRICE_CAP"):
        assert float(data[key]) > 0, key
    assert "/" in data["MICROTE_TIMEZONE"] or data["MICROTE_TIMEZONE"] == "UTC"


def test_settings_come_from_the_config_map_and_credentials_from_secret_references(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    config_name = region_config(objects)["metadata"]["name"]
    for name, d in of_kind(objects, "Deployment").items():
        c = container(d)
        assert c.get("envFrom") == [{"configMapRef": {"name": config_name}}], name
        env = {e["name"]: e for e in c.get("env", [])}
        wanted = {"MICROTE_AMQP_URL", "MICROTE_REDIS_URL", "MICROTE_SERVICE_KEY"}
        if name == "ledger-writer":
            wanted.add("MICROTE_LEDGER_URL")
        assert wanted <= env.keys(), f"{name} lacks {wanted - env.keys()}"
        for var in env.keys() & SECRET_ENV.keys():
            ref = env[var].get("valueFrom", {}).get("secretKeyRef")
            key = SECRET_ENV[var].format(service=name)
            assert ref == {"name": CREDENTIALS_SECRET, "key": key}, f"{name} {var} must be a secretKeyRef to {key}"
        if name != "ledger-writer":
            assert "MICROTE_LEDGER_URL" not in env, f"{name} does not need the ledger's credentials"
        assert not env.keys() & set(REGION_SETTINGS), f"{name}: region settings belong in the ConfigMap"


# --------------------------------------------------------------------------- deployments


def test_every_service_has_a_deployment_that_serves_it(overlay: tuple[str, tuple[dict[str, Any], ...]]) -> None:
    _, objects = overlay
    deployments = of_kind(objects, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, d in deployments.items():
        c = container(d)
        assert c.get("args") == ["serve", name] and "command" not in c, f"{name} must run `microte serve {name}`"
        assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}], name


def test_every_deployment_has_probes_resources_and_a_graceful_shutdown(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    for name, d in of_kind(objects, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        c = container(d)
        assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}, name
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] in {"/live", "/health"}, name
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, f"{name}: give the start 30 s"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys(), f"{name} {kind}"
        # the services drain for up to 15 s after SIGTERM: leave them room
        assert 20 <= pod["terminationGracePeriodSeconds"] <= 60, name


def test_every_pod_runs_as_non_root_with_a_read_only_root_filesystem(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    for name, d in of_kind(objects, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        c = container(d)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] >= 1000, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert pod["automountServiceAccountToken"] is False, name
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: a writable /tmp on a read-only root"


def test_the_clock_is_one_replica_that_is_recreated_never_rolled(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    clock = one(objects, "Deployment", "clock")
    assert clock["spec"]["replicas"] == 1
    assert clock["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in container(clock)["env"]}
    assert env["MICROTE_CLOCK_MODE"] == "realtime"
    assert float(env["MICROTE_ROUND_TIMEOUT_S"]) > 0
    assert not [
        h
        for h in of_kind(objects, "HorizontalPodAutoscaler").values()
        if h["spec"]["scaleTargetRef"]["name"] == "clock"
    ]
    assert not [s for s in of_kind(objects, "ScaledObject").values() if s["spec"]["scaleTargetRef"]["name"] == "clock"]


def test_the_matcher_and_the_ledger_writer_run_two_replicas_and_autoscaled_services_none(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    deployments = of_kind(objects, "Deployment")
    assert deployments["matcher"]["spec"]["replicas"] == 2
    assert deployments["ledger-writer"]["spec"]["replicas"] == 2
    for name in ("order-intake", "meter-collector"):
        assert "replicas" not in deployments[name]["spec"], f"{name}: the autoscaler owns the replica count"


def test_every_replicated_service_has_a_disruption_budget_that_selects_its_pods(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget")
    for name in ("order-intake", "matcher", "meter-collector", "ledger-writer"):
        matching = [b for b in budgets.values() if selects(b["spec"]["selector"], pod_labels(deployments[name]))]
        assert len(matching) == 1, f"{name}: {len(matching)} budgets"
        assert matching[0]["spec"].get("minAvailable") == 1 or matching[0]["spec"].get("maxUnavailable") == 1
    for b in budgets.values():
        assert sum(selects(b["spec"]["selector"], pod_labels(d)) for d in deployments.values()) == 1


def test_images_are_pinned_to_a_version(overlay: tuple[str, tuple[dict[str, Any], ...]]) -> None:
    _, objects = overlay
    for name, d in of_kind(objects, "Deployment").items():
        image = container(d)["image"]
        assert re.match(r"^[^:@]+(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", image), f"{name}: {image}"
        assert not image.endswith(":latest"), f"{name}: {image}"


# --------------------------------------------------------------------------- scaling


def test_order_intake_scales_with_keda_on_its_queue_with_credentials_from_the_secret(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    region, objects = overlay
    scaled = one(objects, "ScaledObject", "order-intake")["spec"]
    target = scaled["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target["name"] == "order-intake"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    assert scaled["cooldownPeriod"] > 0 and scaled["pollingInterval"] > 0
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    meta = trigger["metadata"]
    assert meta["mode"] == "QueueLength" and float(meta["value"]) > 0
    assert meta["queueName"] == f"microte.{region}.order-intake"
    assert "host" not in meta, "the AMQP URL with its password belongs in the TriggerAuthentication"
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    # KEDA's own broker account, which may only look at that queue (components/broker-accounts)
    keda = {"parameter": "host", "name": CREDENTIALS_SECRET, "key": "amqp-url-keda"}
    assert auth["spec"]["secretTargetRef"] == [keda]


def test_meter_collector_scales_on_cpu_which_its_pods_request(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    (hpa,) = [
        h
        for h in of_kind(objects, "HorizontalPodAutoscaler").values()
        if h["spec"]["scaleTargetRef"]["name"] == "meter-collector"
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert container(one(objects, "Deployment", "meter-collector"))["resources"]["requests"]["cpu"]


# --------------------------------------------------------------------------- services, scraping, network


def test_every_service_selects_exactly_the_pods_of_its_deployment(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    deployments = of_kind(objects, "Deployment")
    services = of_kind(objects, "Service")
    assert set(services) == set(SERVICES)
    for name, svc in services.items():
        chosen = [d for d, dep in deployments.items() if selects(svc["spec"]["selector"], pod_labels(dep))]
        assert chosen == [name], f"Service {name} selects {chosen}"
        assert selects(deployments[name]["spec"]["selector"], pod_labels(deployments[name]))
        (port,) = svc["spec"]["ports"]
        assert port["name"] == "http" and port["targetPort"] == "http"


def test_the_service_monitor_scrapes_the_metrics_of_every_service(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    services = of_kind(objects, "Service")
    scraped = sorted(n for n, s in services.items() if selects(spec["selector"], s["metadata"]["labels"]))
    assert scraped == sorted(SERVICES)
    assert "namespaceSelector" not in spec or spec["namespaceSelector"].get("any") is not True
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True, "keep the services' own region label"
    assert any(r.get("targetLabel") == "region" for r in endpoint.get("relabelings", []))
    for name in SERVICES:  # the relabeling reads the Service's region label
        assert "microte.io/region" in services[name]["metadata"]["labels"]


def test_network_policies_deny_by_default_and_allow_only_the_needed_traffic(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    policies = list(of_kind(objects, "NetworkPolicy").values())
    deployments = of_kind(objects, "Deployment")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "a default-deny policy for ingress and egress"

    def egress_ports(service: str) -> set[int]:
        labels = pod_labels(deployments[service])
        return {
            port["port"]
            for p in policies
            if selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("egress", [])
            for port in rule.get("ports", [])
        }

    def ingress_ports(service: str) -> set[int]:
        labels = pod_labels(deployments[service])
        return {
            port["port"]
            for p in policies
            if selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("ingress", [])
            for port in rule.get("ports", [])
        }

    for name in SERVICES:
        assert {53, 5672, 6379} <= egress_ports(name), name
        assert (5432 in egress_ports(name)) == (name == "ledger-writer"), f"{name}: PostgreSQL only for the ledger"
        assert ingress_ports(name) == {8000}, f"{name}: only Prometheus's scrape comes in"


# --------------------------------------------------------------------------- monitoring and infrastructure


def test_the_prometheus_rule_is_generated_from_the_compose_alert_rules(kubectl: str) -> None:
    rules = of_kind(render(kubectl, K8S / "monitoring"), "PrometheusRule")
    assert set(rules) == {"microte"}
    source = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rules["microte"]["spec"]["groups"] == source["groups"], "run scripts/gen-prometheusrule.py"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-prometheusrule.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_no_region_overlay_carries_its_own_copy_of_the_alert_rules(
    overlay: tuple[str, tuple[dict[str, Any], ...]],
) -> None:
    _, objects = overlay
    assert not of_kind(objects, "PrometheusRule"), "one cluster-wide copy (deploy/k8s/monitoring), not one per region"


def test_the_monitoring_kustomization_ships_both_dashboards_to_the_grafana_sidecar(kubectl: str) -> None:
    maps = of_kind(render(kubectl, K8S / "monitoring"), "ConfigMap")
    (dashboards,) = maps.values()
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {"market.json", "operations.json"}
    for name, text in dashboards["data"].items():
        assert text == (DEPLOY / "grafana" / "dashboards" / name).read_text()


def test_the_infrastructure_examples_are_complete_custom_resources(kubectl: str) -> None:
    objects = render(kubectl, K8S / "infra")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"microte-infra"}
    rabbit = one(objects, "RabbitmqCluster", "microte-rabbitmq")["spec"]
    assert rabbit["replicas"] >= 3 and rabbit["persistence"]["storage"]
    assert "prometheus.return_per_object_metrics = true" in rabbit["rabbitmq"]["additionalConfig"]
    monitor = one(objects, "ServiceMonitor", "microte-rabbitmq")["spec"]
    assert monitor["endpoints"][0]["port"] == "prometheus"
    pg = one(objects, "Cluster", "microte-ledger")["spec"]
    assert pg["instances"] >= 2 and pg["storage"]["size"] and pg["bootstrap"]["initdb"]["database"] == "microte"
    redis = one(objects, "Redis", "microte-redis")["spec"]
    assert redis["kubernetesConfig"]["image"] and redis["storage"]["volumeClaimTemplate"]
    config = one(objects, "ConfigMap", redis["redisConfig"]["additionalRedisConfig"])
    assert "appendonly yes" in config["data"]["redis-additional.conf"]
    # the regions' NetworkPolicies allow egress to this namespace
    base_policies = " ".join(str(p) for p in of_kind(render(kubectl, K8S / "base"), "NetworkPolicy").values())
    assert "microte-infra" in base_policies


# --------------------------------------------------------------------------- docker compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_docker_compose_config_is_valid(require_tool: Callable[[str], str]) -> None:
    docker_compose = require_tool("docker-compose")  # fails, never skips, when it is missing
    done = subprocess.run([docker_compose, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"docker-compose config -q failed:\n{done.stderr}"


def test_compose_runs_the_infrastructure_the_five_services_a_community_and_monitoring() -> None:
    services = compose()["services"]
    assert {"rabbitmq", "redis", "postgres", "simulator", "prometheus", "grafana", *SERVICES} <= services.keys()
    for name in SERVICES:
        command = services[name]["command"]
        assert command == ["serve", name], name
    assert services["simulator"]["command"][0] == "simulate"
    assert {"--participants", "--rounds"} <= set(services["simulator"]["command"])
    env_file = ROOT / services["clock"]["env_file"][0]
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and line[0] != "#")
    assert settings["MICROTE_REGION"] == "r1"
    assert not set(REGION_SETTINGS) - settings.keys()
    assert services["ledger-writer"]["environment"]["MICROTE_LEDGER_URL"].startswith("postgresql://")


def test_every_compose_dependency_waits_for_a_healthy_service() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
            check = services[dep].get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), f"{dep} has no healthcheck"
    for name in SERVICES:
        assert "/health" in " ".join(services[name]["healthcheck"]["test"]), name
        assert {"rabbitmq", "redis"} <= services[name]["depends_on"].keys(), name
    assert "postgres" in services["ledger-writer"]["depends_on"]


def test_compose_prometheus_scrapes_every_service_and_rabbitmq_and_loads_the_alerts() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for s in job["static_configs"] for t in s["targets"]] for job in config["scrape_configs"]
    }
    for name in SERVICES:
        assert targets[name] == [f"{name}:8000"], name
    assert targets["rabbitmq"] == ["rabbitmq:15692"]
    assert config["rule_files"] == ["alerts.yml"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_rabbitmq_enables_management_and_prometheus_with_per_object_metrics() -> None:
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert re.fullmatch(r"\s*\[([a-z_]+,?)+\]\.\s*", plugins), "an Erlang list term ending with a dot"
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(plugins.strip().strip("[].").split(","))
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    assert re.search(r"^prometheus\.return_per_object_metrics\s*=\s*true$", conf, re.M)
    mounts = compose()["services"]["rabbitmq"]["volumes"]
    assert any(m.endswith(":/etc/rabbitmq/enabled_plugins:ro") for m in mounts)
    assert any(m.endswith(":/etc/rabbitmq/rabbitmq.conf:ro") for m in mounts)


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboards_from_the_repository() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in grafana["volumes"] if m.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/microte.yml").read_text())["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    (source,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


# --------------------------------------------------------------------------- the image


def test_the_dockerfile_builds_a_small_non_root_image_of_the_project_without_dev_dependencies() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert len(stages) >= 2, "multi-stage: build, then a runtime without build leftovers"
    runtime = text.split(f"AS {stages[-1]}", 1)[1]
    assert "--constraint constraints.txt" in text
    assert ".[dev]" not in text and "[dev]" not in text
    assert re.search(r"^USER 10001(:10001)?$", runtime, re.M), "a numeric non-root user (runAsNonRoot can check it)"
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", runtime, re.M)
    assert 'ENTRYPOINT ["microte"]' in runtime
    cmd = re.search(r"^CMD (\[.*\])$", runtime, re.M)
    assert cmd and yaml.safe_load(cmd.group(1))[0] == "serve"
    assert "MICROTE_HTTP_HOST=0.0.0.0" in runtime


def test_the_dockerfile_passes_hadolint(require_tool: Callable[[str], str]) -> None:
    hadolint = require_tool("hadolint")
    done = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"hadolint Dockerfile:\n{done.stdout}{done.stderr}"


def test_the_dockerignore_keeps_the_build_context_to_what_the_image_needs() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "**", "exclude everything, then allow the package"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "shared", "services"}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M))
    sources = {s for line in copied for s in line.split()}
    assert sources <= allowed, sources - allowed
