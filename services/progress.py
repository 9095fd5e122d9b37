"""A run's progress: one line a round on a terminal, drawn by rich (round M/N, a bar, the
local market time, rounds per second, elapsed time and ETA); elsewhere (a pipe, a log, a
test) plain lines for the first round and every ``every`` rounds after it, and the last."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any, TextIO

from shared.market.timezones import zone


def shows_progress(round_no: int, every: int) -> bool:
    """A progress line for the first round and every ``every`` rounds after it (1, 1 + every, ...)."""
    return (round_no - 1) % max(1, every) == 0


class RoundProgress:
    def __init__(self, *, total: int, every: int, timezone: str, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.every, self.tz = total, max(1, every), zone(timezone)
        self._began = time.monotonic()
        self._bar: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("round"), MofNCompleteColumn(), BarColumn(),
                                 TextColumn("market time {task.fields[market]}"),
                                 TextColumn("{task.fields[rate]} rounds/s"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(file=self.stream))
            self._task = self._bar.add_task("rounds", total=total or None, market="-", rate="-")
            self._bar.start()

    def round(self, n: int, start: int, answers: int, rejections: int, *, last: bool = False) -> None:
        """Round ``n`` of the run started, at market time ``start`` (UNIX seconds)."""
        if self._bar is not None:
            elapsed = time.monotonic() - self._began
            local = datetime.fromtimestamp(start, self.tz).strftime("%Y-%m-%d %H:%M %Z")
            self._bar.update(self._task, completed=n, market=local,
                             rate=f"{n / elapsed:.1f}" if elapsed > 0 else "-")
        elif shows_progress(n, self.every) or last:
            print(f"  round {n:5d}  market time {start}  answers {answers:7d}  rejections {rejections:4d}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
