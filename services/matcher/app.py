"""matcher: clears each slot at gate closure. One active consumer per region, one at a time."""

from __future__ import annotations

from services.matcher.handlers import Matcher
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.service import Service
from shared.runtime.settings import Settings

NAME, PORT = "matcher", 9103


def create(settings: Settings) -> Service:
    svc = Service(NAME, settings, PORT)
    matcher = Matcher(svc)
    svc.consume(
        {
            svc.keys.fact(k.ROUND_STARTED): {t.RoundStarted: matcher.on_round_started},
            svc.keys.fact(k.SLOT_RECORDED): {t.SlotRecorded: matcher.on_slot_recorded},
        },
        prefetch=1,
        single_active=True,
    )
    return svc
