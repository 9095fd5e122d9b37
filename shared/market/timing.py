"""Slot arithmetic (docs/market.md section 2). Pure functions of their inputs: no clock reads.

While round ``[T, T+d)`` is current:

- ``next_settle = [T + d*close_steps, T + d*(close_steps+1))`` is the first open slot;
- ``last_settle = [T + d*(close_steps-1), T + d*close_steps)`` has just closed;
- ``current_round = [T, T+d)`` is being delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.market.reasons import RejectReason


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """A half-open delivery interval ``[start, end)`` of UNIX seconds."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"slot end {self.end} must be after its start {self.start}")

    @property
    def seconds(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class RoundWindows:
    current_round: Slot
    last_settle: Slot
    next_settle: Slot


@dataclass(frozen=True, slots=True)
class Schedule:
    """A region's round timing: ``duration`` seconds a round, gate ``close_steps`` ahead."""

    duration: int = 60
    close_steps: int = 2
    horizon_s: int = 86_400

    def __post_init__(self) -> None:
        if self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.close_steps < 1:
            raise ValueError("close_steps must be at least 1")
        if self.horizon_s < self.duration * (self.close_steps + 1):
            raise ValueError("horizon must reach at least next_settle")

    def round_containing(self, t: int) -> Slot:
        start = t - t % self.duration
        return Slot(start, start + self.duration)

    def is_round_start(self, t: int) -> bool:
        return t % self.duration == 0

    def windows(self, round_start: int) -> RoundWindows:
        if not self.is_round_start(round_start):
            raise ValueError(f"{round_start} is not a round boundary for {self.duration}s rounds")
        d, k = self.duration, self.close_steps
        return RoundWindows(
            current_round=Slot(round_start, round_start + d),
            last_settle=Slot(round_start + d * (k - 1), round_start + d * k),
            next_settle=Slot(round_start + d * k, round_start + d * (k + 1)),
        )

    def is_aligned(self, slot: Slot) -> bool:
        return slot.start % self.duration == 0 and slot.end % self.duration == 0

    def gate_closed(self, slot: Slot, round_start: int) -> bool:
        """A slot's gate closed when the round ``close_steps - 1`` rounds before it began."""
        return slot.start < round_start + self.duration * self.close_steps

    def closes_at(self, slot: Slot) -> int:
        """The round start at which ``slot``'s gate closes (and it is matched)."""
        return slot.start - self.duration * (self.close_steps - 1)

    def check_order_slot(self, slot: Slot, round_start: int) -> RejectReason | None:
        """Why an order for ``slot`` cannot be accepted while ``round_start`` is current."""
        if not self.is_aligned(slot):
            return RejectReason.MISALIGNED_SLOT
        if self.gate_closed(slot, round_start):
            return RejectReason.GATE_CLOSED
        if slot.end > round_start + self.horizon_s:
            return RejectReason.BEYOND_HORIZON
        return None
