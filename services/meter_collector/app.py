"""meter-collector: takes meter readings and reconciles delivered slots."""

from __future__ import annotations

from services.meter_collector.handlers import MeterCollector
from shared.messages import types as t
from shared.runtime import topology as k
from shared.runtime.service import Batch, Service
from shared.runtime.settings import Settings

NAME, PORT = "meter-collector", 9104


def create(settings: Settings) -> Service:
    svc = Service(NAME, settings, PORT)
    collector = MeterCollector(svc)
    keys = svc.keys
    readings = Batch(collector.on_readings, checks_state=True)
    svc.consume(
        {
            # Readings drained together, single and batched, are one run (MeterCollector.on_readings).
            keys.request(k.READING): {t.SubmitReading: readings},
            keys.request(k.BATCH): {t.SubmitBatch: readings},
            keys.fact(k.SLOT_CLEARED): {t.SlotCleared: collector.on_slot_cleared},
            keys.fact(k.ROUND_STARTED): {t.RoundStarted: collector.on_round_started},
            keys.fact(k.SLOT_RECORDED): {t.SlotRecorded: collector.on_slot_recorded},
        },
        prefetch=512,
    )
    svc.background(collector.tick, name="reconcile-tick")
    return svc
