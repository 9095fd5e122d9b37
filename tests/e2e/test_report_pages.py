"""The HTML report and the comparison page in a real browser: headless Chromium (Debian's,
unpacked into the venv by scripts/install-browser.sh) loads each page offline, with no
console message at all, every plot drawn with data, and takes its screenshot.

The screenshots in docs/ (linked from the README) are made the same way:
``.venv/bin/microte-chromium --headless=new --no-sandbox --disable-gpu --window-size=1200,4000
--virtual-time-budget=10000 --screenshot=docs/report.png file://$PWD/var/reports/<region>.html``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_cli_runs import PARTICIPANTS, run

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chromium() -> str:
    venv = Path(sys.executable).parent.parent
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install-browser.sh")], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "MICROTE_VENV": str(venv)}, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"no headless Chromium: {done.stdout}{done.stderr}", pytrace=False)
    return str(venv / "bin" / "microte-chromium")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A comparison of two rules; each run's demo writes its own report page too."""
    folder = tmp_path_factory.mktemp("pages")
    compare = folder / "compare.html"
    code, out, err = run("compare", "--rules", "midpoint,uniform", "--rounds", "10", "--participants",
                         str(PARTICIPANTS), "--start", "2026-06-21T11:00", "--ledger",
                         f"sqlite:///{folder / 'ledger.sqlite'}", "--out", str(compare), cwd=folder, timeout=600)
    assert code == 0, err
    report = re.search(r"HTML report \(key figures and plots\): (\S+)$", out, re.M)
    assert report, out
    return {"report": folder / report.group(1), "compare": compare}


def browse(chromium: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=10000", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(("name", "charts"), [("report", 6), ("compare", 4)])
def test_a_page_loads_offline_without_console_messages_and_draws_every_plot(
        chromium: str, pages: dict[str, Path], name: str, charts: int) -> None:
    done = browse(chromium, pages[name], "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no error, no warning, nothing
    drawn = done.stdout.split('class="plotly-graph-div')[1:]
    assert len(drawn) == charts
    for n, chart in enumerate(drawn):  # each plot has a trace with points, bars or a line
        assert 'class="trace ' in chart, f"chart {n} has no trace"
        assert re.search(r'class="(point|js-line)"', chart), f"chart {n} drew no data"


@pytest.mark.parametrize("name", ["report", "compare"])
def test_a_screenshot_of_each_page(chromium: str, pages: dict[str, Path], name: str, tmp_path: Path) -> None:
    shot = tmp_path / f"{name}.png"
    done = browse(chromium, pages[name], "--window-size=1200,2600", f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-3000:]
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 50_000  # a page of tables and plots, not a blank one
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 2600)
