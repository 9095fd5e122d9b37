"""clock: broadcasts round boundaries, in simulation or real-time mode."""

from __future__ import annotations

from services.clock.handlers import LISTEN, LOOP, Clock
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.service import Batch, Service
from shared.runtime.settings import Settings

NAME, PORT = "clock", 9101


def create(settings: Settings) -> Service:
    svc = Service(NAME, settings, PORT)
    clock = Clock(svc)
    keys = svc.keys
    svc.consume(
        {
            keys.request(k.FINISH): {t.FinishRound: Batch(clock.on_finishes, checks_state=True)},
            keys.fact(k.SLOT_CLEARED): {t.SlotCleared: clock.on_slot_cleared},
            keys.fact(k.SLOT_RECORDED): {t.SlotRecorded: clock.on_slot_recorded},
        },
        prefetch=256,
        single_active=True,
    )
    svc.background(clock.run, name=LOOP)
    svc.background(clock.listen, name=LISTEN)
    svc.on_stop(clock.close)
    return svc
