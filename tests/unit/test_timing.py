"""Round windows, gate closure and slot checks (docs/market.md section 2).

Expected windows are written out from section 2's formulas for round ``[T, T+d)``:
next_settle = [T + d*k, T + d*(k+1)), last_settle = [T + d*(k-1), T + d*k).
"""

from __future__ import annotations

import pytest

from shared.market import RejectReason, Schedule, Slot


@pytest.mark.parametrize(
    ("duration", "close_steps", "t", "current", "last", "next_"),
    [
        (60, 1, 600, (600, 660), (600, 660), (660, 720)),
        (60, 2, 600, (600, 660), (660, 720), (720, 780)),
        (60, 3, 600, (600, 660), (720, 780), (780, 840)),
        (900, 1, 9000, (9000, 9900), (9000, 9900), (9900, 10800)),
        (900, 2, 9000, (9000, 9900), (9900, 10800), (10800, 11700)),
        (900, 3, 9000, (9000, 9900), (10800, 11700), (11700, 12600)),
        (60, 2, 0, (0, 60), (60, 120), (120, 180)),
    ],
)
def test_the_round_windows_follow_the_formulas_of_section_2(
    duration: int, close_steps: int, t: int, current: tuple[int, int], last: tuple[int, int], next_: tuple[int, int]
) -> None:
    w = Schedule(duration=duration, close_steps=close_steps).windows(t)
    assert (w.current_round, w.last_settle, w.next_settle) == (Slot(*current), Slot(*last), Slot(*next_))


def test_the_default_schedule_is_sixty_second_rounds_two_steps_ahead_and_a_day_of_horizon() -> None:
    assert Schedule() == Schedule(duration=60, close_steps=2, horizon_s=86_400)


@pytest.mark.parametrize("t", [1, 59, 61, 899])
def test_windows_refuse_a_time_that_is_not_a_round_boundary(t: int) -> None:
    with pytest.raises(ValueError, match="round boundary"):
        Schedule(duration=60).windows(t)


@pytest.mark.parametrize(("duration", "t", "start"), [(60, 0, 0), (60, 59, 0), (60, 60, 60), (900, 1799, 900)])
def test_a_time_belongs_to_the_round_that_started_at_or_before_it(duration: int, t: int, start: int) -> None:
    assert Schedule(duration=duration).round_containing(t) == Slot(start, start + duration)
    assert Schedule(duration=duration).is_round_start(t) is (t == start)


# --- gate closure ----------------------------------------------------------------------


@pytest.mark.parametrize(("duration", "close_steps"), [(60, 1), (60, 2), (60, 3), (900, 1), (900, 2), (900, 3)])
def test_the_gate_of_next_settle_is_open_and_that_of_last_settle_is_closed(duration: int, close_steps: int) -> None:
    schedule = Schedule(duration=duration, close_steps=close_steps)
    t = 100 * duration
    w = schedule.windows(t)
    assert not schedule.gate_closed(w.next_settle, t)
    assert schedule.check_order_slot(w.next_settle, t) is None
    assert schedule.gate_closed(w.last_settle, t)
    assert schedule.check_order_slot(w.last_settle, t) is RejectReason.GATE_CLOSED
    assert schedule.check_order_slot(w.current_round, t) is RejectReason.GATE_CLOSED


@pytest.mark.parametrize(("duration", "close_steps"), [(60, 1), (60, 2), (60, 3), (900, 1), (900, 2), (900, 3)])
def test_a_slots_gate_closes_exactly_when_the_round_close_steps_minus_one_before_it_starts(
    duration: int, close_steps: int
) -> None:
    schedule = Schedule(duration=duration, close_steps=close_steps)
    slot = Slot(200 * duration, 201 * duration)
    closure = slot.start - duration * (close_steps - 1)
    assert schedule.closes_at(slot) == closure
    # Open for the whole round before closure, closed from the closing round's first second.
    assert not schedule.gate_closed(slot, closure - duration)
    assert schedule.gate_closed(slot, closure)
    assert schedule.check_order_slot(slot, closure - duration) is None
    assert schedule.check_order_slot(slot, closure) is RejectReason.GATE_CLOSED
    # At closure the slot is exactly the one being matched.
    assert schedule.windows(closure).last_settle == slot


def test_a_slot_already_delivered_is_gate_closed() -> None:
    assert Schedule().check_order_slot(Slot(0, 60), 6000) is RejectReason.GATE_CLOSED


# --- slot shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "slot"),
    [
        (60, Slot(7230, 7290)),  # both ends off the grid
        (60, Slot(7200, 7230)),  # half a round
        (60, Slot(7230, 7260)),
        (60, Slot(7200, 7290)),  # one and a half rounds
        (900, Slot(9060, 9960)),  # a 60 s alignment is not a 900 s one
        (900, Slot(9000, 9060)),
    ],
)
def test_a_misaligned_slot_is_rejected(duration: int, slot: Slot) -> None:
    schedule = Schedule(duration=duration)
    assert not schedule.is_aligned(slot)
    assert schedule.check_order_slot(slot, 0) is RejectReason.MISALIGNED_SLOT


@pytest.mark.parametrize(("duration", "rounds"), [(60, 2), (60, 5), (900, 4)])
def test_a_slot_of_several_whole_rounds_is_accepted(duration: int, rounds: int) -> None:
    schedule = Schedule(duration=duration)
    start = 10 * duration
    slot = Slot(start, start + rounds * duration)
    assert schedule.is_aligned(slot)
    assert schedule.check_order_slot(slot, start - 2 * duration) is None
    # Its gate closes by its start, like a one-round slot starting there.
    assert schedule.check_order_slot(slot, start - duration) is RejectReason.GATE_CLOSED


def test_a_slot_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError):
        Slot(60, 60)
    with pytest.raises(ValueError):
        Slot(120, 60)


# --- the horizon -----------------------------------------------------------------------


def test_a_slot_ending_at_the_horizon_is_accepted_and_one_round_later_is_beyond_it() -> None:
    schedule = Schedule(duration=60, close_steps=2, horizon_s=3600)
    t = 6000
    assert schedule.check_order_slot(Slot(t + 3540, t + 3600), t) is None
    assert schedule.check_order_slot(Slot(t + 3600, t + 3660), t) is RejectReason.BEYOND_HORIZON


def test_the_default_horizon_is_a_day() -> None:
    schedule, t = Schedule(), 60_000
    assert schedule.check_order_slot(Slot(t + 86_340, t + 86_400), t) is None
    assert schedule.check_order_slot(Slot(t + 86_400, t + 86_460), t) is RejectReason.BEYOND_HORIZON


def test_a_multi_round_slot_that_runs_past_the_horizon_is_beyond_it() -> None:
    schedule = Schedule(duration=900, close_steps=2, horizon_s=9000)
    assert schedule.check_order_slot(Slot(8100, 9900), 0) is RejectReason.BEYOND_HORIZON
    assert schedule.check_order_slot(Slot(7200, 9000), 0) is None


# --- invalid schedules -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"duration": 0},
        {"duration": -60},
        {"close_steps": 0},
        {"close_steps": -1},
        {"duration": 60, "close_steps": 2, "horizon_s": 179},  # shorter than next_settle's end
        {"duration": 900, "close_steps": 3, "horizon_s": 0},
    ],
)
def test_an_invalid_schedule_raises(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Schedule(**kwargs)


def test_the_shortest_horizon_that_reaches_next_settle_is_valid_and_accepts_next_settle() -> None:
    schedule = Schedule(duration=60, close_steps=2, horizon_s=180)
    w = schedule.windows(600)
    assert schedule.check_order_slot(w.next_settle, 600) is None
