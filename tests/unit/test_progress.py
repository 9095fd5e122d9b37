"""A run's progress: a bar on a terminal (rich), plain lines elsewhere."""

from __future__ import annotations

import io
import re

import pytest

from services.progress import RoundProgress

START = 1782064800  # 2026-06-21 11:00 in Vancouver


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_shows_the_round_the_market_time_the_rate_and_the_eta(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    screen = Terminal()
    progress = RoundProgress(total=5, every=100, timezone="America/Vancouver", stream=screen)
    for n in range(1, 4):
        progress.round(n, START + 60 * (n - 1), answers=10 * n, rejections=0)
    progress.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # without the terminal's control codes
    last = shown.strip().splitlines()[-1]
    assert re.search(r"round\s+3/5\b", last), last
    assert "market time 2026-06-21 11:02 PDT" in last
    assert re.search(r"\d+\.\d rounds/s", last) and "ETA" in last, last


def test_elsewhere_plain_lines_for_the_first_round_every_so_many_rounds_and_the_last() -> None:
    log = io.StringIO()
    progress = RoundProgress(total=0, every=2, timezone="UTC", stream=log)
    for n in range(1, 5):
        progress.round(n, START + 60 * n, answers=n, rejections=0, last=n == 4)
    progress.close()
    assert [int(line.split()[1]) for line in log.getvalue().splitlines()] == [1, 3, 4]
