"""The deploy tools install into the project's own folder and change nothing else on the machine.

scripts/install-deploy-tools.sh runs on a fresh, empty venv here (as `make test` does on a
fresh clone): every tool it installs must land in that venv, and neither the system's
program folders nor its package database may change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.deploy.conftest import INSTALL_SCRIPT, ROOT

SYSTEM_PLACES = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/usr/local/sbin", "/usr/lib/python3/dist-packages")
PACKAGE_DATABASE = Path("/var/lib/dpkg/status")


def _listing() -> dict[str, frozenset[str]]:
    return {place: frozenset(os.listdir(place)) if os.path.isdir(place) else frozenset() for place in SYSTEM_PLACES}


def _database() -> tuple[int, int] | None:
    if not PACKAGE_DATABASE.exists():
        return None
    stat = PACKAGE_DATABASE.stat()
    return stat.st_mtime_ns, stat.st_size


def test_the_deploy_tools_install_into_the_venv_only(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    before, database_before = _listing(), _database()

    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        cwd=ROOT,
        env={**os.environ, "MICROTE_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=600,
    )

    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert _listing() == before, f"the installer changed the system's program folders:\n{log}"
    assert _database() == database_before, f"the installer installed a system package:\n{log}"
    for tool in ("docker-compose", "hadolint"):
        installed = venv / "bin" / tool
        assert installed.exists(), log
        assert installed.resolve().is_relative_to(venv.resolve()), f"{tool} -> {installed.resolve()}"
        assert (
            subprocess.run(
                [str(installed), "version" if tool == "docker-compose" else "--version"],
                capture_output=True,
                timeout=60,
            ).returncode
            == 0
        )
    for tool in ("kubectl", "promtool"):  # a copy on PATH is used; otherwise it goes into the venv
        assert f"ok   {tool} (" in log, log
        found = log.split(f"ok   {tool} (", 1)[1].split(")", 1)[0]
        assert Path(found).is_relative_to(venv) or Path(found).parent in {Path(p) for p in SYSTEM_PLACES}, found
    compose = subprocess.run(
        [str(venv / "bin" / "docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compose.returncode == 0, compose.stderr
