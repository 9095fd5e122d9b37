#!/usr/bin/env python3
"""Writes deploy/k8s/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml.

deploy/prometheus/alerts.yml is the one source of the alert rules: docker compose's
Prometheus loads it as it is, and the Prometheus Operator gets the same groups wrapped in
a PrometheusRule. Run this after editing the rules; tests/deploy fails while the two
differ.

Usage: scripts/gen-prometheusrule.py [--check]
  --check  write nothing; exit 1 when the PrometheusRule is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "deploy/prometheus/alerts.yml"
TARGET = ROOT / "deploy/k8s/monitoring/prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by scripts/gen-prometheusrule.py.
# Do not edit: change alerts.yml and run the script (tests/deploy checks they agree).
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "microte",
            "labels": {
                "app.kubernetes.io/name": "microte",
                "app.kubernetes.io/part-of": "microte",
                "app.kubernetes.io/component": "alerting",
            },
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run scripts/gen-prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
