"""The dashboards and alert rules are valid and reference only the metrics microte exports.

The exported metrics are listed once, in exported_metrics.txt (the service contract); a
test that scrapes running services compares that list with their real /metrics output.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).parent
DEPLOY = HERE.parents[1] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
# Series that Prometheus itself makes for every target.
PROMETHEUS_SYNTHETIC = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metrics() -> dict[str, str]:
    """Metric name -> the source section ('services', 'rabbitmq') it is listed under."""
    source, names = "", {}
    for line in (HERE / "exported_metrics.txt").read_text().splitlines():
        line = line.strip()
        if m := re.match(r"#\s*source:\s*(\S+)", line):
            source = m.group(1)
        elif line and not line.startswith("#"):
            assert line not in names, f"{line} is listed twice"
            names[line] = source
    return names


# --------------------------------------------------------------------------- a small PromQL reader

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(?:[smhdwy]|ms)?(?![\w:])")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}


def metric_names(expr: str) -> set[str]:
    """The metric names that a PromQL expression (or a Grafana query with $variables) selects."""
    text = _STRINGS.sub(" ", expr)  # label values, label_replace's arguments
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries, [$__rate_interval]
    text = _GROUPING.sub(" ", text)  # by (region), on (region), ...
    text = re.sub(r"\$\{?\w+(?::\w+)?\}?", " ", text)  # Grafana variables outside strings
    text = _NUMBER.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        if word.lower() in _KEYWORDS:
            continue
        if text[m.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        names.add(word)
    return names


def known(name: str, metrics: dict[str, str]) -> bool:
    if name in metrics or name in PROMETHEUS_SYNTHETIC:
        return True
    return any(name.endswith(s) and name[: -len(s)] in metrics for s in HISTOGRAM_SUFFIXES)


def test_the_promql_reader_finds_metric_names_and_nothing_else() -> None:
    expr = """
      label_replace(max by (vhost, queue) (rabbitmq_queue_consumers{queue=~`microte\\..+`}), "region", "$1",
        "queue", "microte\\\\.([^.]+)") == 0
      or histogram_quantile(0.99, sum by (le) (rate(microte_round_duration_seconds_bucket{region=~"$region"}[5m])))
        > 1e-9 and on (region) sum(microte_rounds_total offset 10m) / 3.6e6
      unless max_over_time(microte_clock_leader[$__rate_interval]) * -1 > bool 0x1f
    """
    assert metric_names(expr) == {
        "rabbitmq_queue_consumers",
        "microte_round_duration_seconds_bucket",
        "microte_rounds_total",
        "microte_clock_leader",
    }
    assert metric_names('sum(rate(x_total{a="b,c}"}[1m]))') == {"x_total"}
    assert metric_names("up == 0") == {"up"}


# --------------------------------------------------------------------------- the metric list


def test_the_exported_metric_list_follows_the_prometheus_naming_conventions() -> None:
    metrics = exported_metrics()
    assert set(metrics.values()) == {"services", "rabbitmq"}
    for name, source in metrics.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert name.startswith({"services": "microte_", "rabbitmq": "rabbitmq_"}[source])
        assert not name.endswith((*HISTOGRAM_SUFFIXES, "_created")), f"{name}: list histograms by base name"
        # base units (seconds, joules, bytes); a price may be quoted per kWh, as tariffs are
        assert not re.search(r"_(milliseconds|ms|minutes|hours)(_|$)|(?<!_per)_k?wh(_|$)", name), f"{name}: base units"


def test_the_services_section_lists_exactly_the_metrics_that_the_services_declare() -> None:
    """shared/runtime/metrics.py defines every microte_ metric once; the list must follow it
    (names as exposed: counters with _total, histograms by their base name)."""
    from prometheus_client.exposition import generate_latest

    from shared.runtime.metrics import create_metrics

    exposition = generate_latest(create_metrics().registry).decode()
    declared = set(re.findall(r"^# TYPE (\S+) ", exposition, re.MULTILINE))
    listed = {n for n, s in exported_metrics().items() if s == "services"}
    assert sorted(declared - listed) == [], "declared in shared/runtime/metrics.py, missing from the list"
    assert sorted(listed - declared) == [], "listed, but no service declares them"


# --------------------------------------------------------------------------- alert rules


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        yield from group["rules"]


def test_the_alert_rules_parse_into_named_groups_of_unique_alerts() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    names = [r["alert"] for r in alert_rules()]
    assert len(set(names)) == len(names)
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        assert rule["expr"].strip(), rule["alert"]


def test_the_alert_rules_cover_the_failures_that_matter() -> None:
    by_name = {r["alert"]: r for r in alert_rules()}
    wanted = {
        "MicroteQueueWithoutConsumer": {"rabbitmq_queue_consumers"},
        "MicroteRoundStuck": {"microte_rounds_total"},
        "MicroteLedgerEnergyImbalance": {"microte_ledger_energy_imbalance_joules"},
        "MicroteLedgerMoneyImbalance": {"microte_ledger_money_imbalance_dollars"},
        "MicroteDeadLetters": {"microte_dead_letters_total"},
        "MicroteLedgerBacklogGrowing": {"microte_ledger_backlog_records"},
        "MicroteOrderRejectionsSpiking": {"microte_orders_total"},
    }
    for name, metrics in wanted.items():
        assert name in by_name, f"missing alert {name}"
        assert metrics <= metric_names(by_name[name]["expr"]), name


def test_every_metric_in_the_alert_rules_is_exported() -> None:
    metrics = exported_metrics()
    for rule in alert_rules():
        unknown = {n for n in metric_names(rule["expr"]) if not known(n, metrics)}
        assert not unknown, f"{rule['alert']} uses metrics nobody exports: {sorted(unknown)}"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook() -> None:
    doc = (DEPLOY.parent / "docs" / "deploy.md").read_text().lower()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {anchor}" in doc.replace("`", ""), f"docs/deploy.md has no section for {anchor}"


def test_the_alert_rules_pass_promtool_and_their_unit_tests(require_tool: Callable[[str], str]) -> None:
    promtool = require_tool("promtool")
    prometheus = DEPLOY / "prometheus"
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ):
        done = subprocess.run([promtool, *args], cwd=prometheus, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_every_alert_of_the_first_importance_has_a_promtool_unit_test() -> None:
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    critical = {r["alert"] for r in alert_rules() if r["labels"]["severity"] == "critical"} - {
        "MicroteServiceDown",
        "MicroteNoClockLeader",
        "MicroteLedgerMoneyImbalance",
    }  # plain thresholds
    assert critical <= tested, f"untested: {critical - tested}"


# --------------------------------------------------------------------------- dashboards


def dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])  # panels of collapsed rows


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for p in panels(board):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*", q)
            assert m, f"variable {v['name']}: expected label_values(...), got {q}"
            yield f"variable {v['name']}", m.group(1) or ""


def provisioned_uid() -> str:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uid: str = source["uid"]
    return uid


def test_there_is_a_market_and_an_operations_dashboard() -> None:
    assert {p.name for p in DASHBOARDS} == {"market.json", "operations.json"}
    uids = [dashboard(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_the_dashboard_is_valid_grafana_json_whose_panels_all_have_targets(path: Path) -> None:
    board = dashboard(path)
    assert {"uid", "title", "schemaVersion", "panels", "templating", "time"} <= board.keys()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    ids = [p["id"] for p in panels(board)]
    assert len(set(ids)) == len(ids), "panel ids are unique"
    for p in panels(board):
        pos = p["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap"}, p["type"]
        assert p.get("title") and p.get("targets"), f"panel {p.get('title')!r} has no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
    # panels do not overlap
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        pos = p["gridPos"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"panel {p['title']!r} overlaps another"
        cells |= area


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_queries_the_provisioned_prometheus_datasource(path: Path) -> None:
    board = dashboard(path)
    (var,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    assert var["current"]["value"] == provisioned_uid(), "the default datasource is the provisioned one"
    allowed = {provisioned_uid(), "${" + var["name"] + "}", "$" + var["name"]}
    for p in panels(board):
        if p["type"] == "row":
            continue
        for ds in [p["datasource"], *(t["datasource"] for t in p["targets"])]:
            assert ds["type"] == "prometheus" and ds["uid"] in allowed, f"panel {p['title']!r}: {ds}"
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] in allowed


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_the_dashboard_has_a_region_variable_that_every_microte_query_filters_on(path: Path) -> None:
    board = dashboard(path)
    (region,) = [v for v in board["templating"]["list"] if v["name"] == "region"]
    assert region["multi"] and region["includeAll"]
    for where, expr in queries(board):
        if where.startswith("variable"):
            continue
        assert "$region" in expr, f"{where} ignores the region variable: {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_metric_in_the_dashboard_is_exported(path: Path) -> None:
    metrics = exported_metrics()
    for where, expr in queries(dashboard(path)):
        unknown = {n for n in metric_names(expr) if not known(n, metrics)}
        assert not unknown, f"{path.name} {where} uses metrics nobody exports: {sorted(unknown)}"


def used(path: Path) -> set[str]:
    names = set()
    for _, expr in queries(dashboard(path)):
        for n in metric_names(expr):
            names.add(next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n))
    return names


def test_the_market_dashboard_shows_prices_volumes_and_grid_exchange() -> None:
    assert {
        "microte_slot_price_dollars_per_kwh",
        "microte_slot_matched_energy_joules",
        "microte_matched_energy_joules_total",
        "microte_grid_energy_joules_total",
        "microte_orders_total",
    } <= used(DEPLOY / "grafana" / "dashboards" / "market.json")


def test_the_operations_dashboard_shows_rates_latencies_queues_errors_rounds_and_the_ledger() -> None:
    assert {
        "microte_messages_received_total",
        "microte_batch_duration_seconds",
        "microte_batch_size",
        "microte_order_ack_latency_seconds",
        "microte_clearing_duration_seconds",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_consumers",
        "microte_dead_letters_total",
        "microte_handler_failures_total",
        "microte_round_duration_seconds",
        "microte_ledger_backlog_records",
        "microte_ledger_energy_imbalance_joules",
        "microte_ledger_money_imbalance_dollars",
    } <= used(DEPLOY / "grafana" / "dashboards" / "operations.json")


def test_every_exported_metric_is_watched_by_a_dashboard_or_an_alert() -> None:
    watched = set().union(*(used(p) for p in DASHBOARDS))
    for rule in alert_rules():
        watched |= {
            next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n) for n in metric_names(rule["expr"])
        }
    assert not set(exported_metrics()) - watched, f"unwatched: {sorted(set(exported_metrics()) - watched)}"
