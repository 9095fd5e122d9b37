"""A minimal microte agent: each round it offers 200 Wh of solar for the next open slot at
the grid's sell price, reports its meter for the slot being delivered, says it is done,
and prints what it sold and what the ledger recorded for it.

    python examples/agent.py amqp://guest:guest@127.0.0.1:5672/ <region> <participant id> [rounds]
"""

import asyncio
import sys

from microte import Client, ReadingItem, RoundStarted, SettlementsNotice, Statement, ask


async def main(url: str, region: str, me: str, rounds: int) -> None:
    async with Client(url, region, me) as market:
        await market.join()
        played = 0
        async for event in market.events():
            if isinstance(event, RoundStarted) and played < rounds:
                grid = next(q for q in event.grid if q.slot == event.next_settle)
                answers = await market.submit_round(
                    orders=[ask(200, grid.sell_price, event.next_settle)],
                    reading=ReadingItem(slot=event.current_round, import_wh=150, export_wh={"solar": 40}),
                    finish_round=event.current_round.start)
                played += 1
                print(f"round {event.current_round.start}: {len(answers.refused)} refused")
            elif isinstance(event, SettlementsNotice):
                sold = sum(s.quantity_wh for s in event.settlements if s.seller == me)
                print(f"slot {event.slot.start}: sold {sold} Wh")
            elif isinstance(event, Statement):
                print(f"slot {event.slot.start}: {len(event.entries)} ledger entries")
            if played == rounds:
                break
        await market.leave()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 10))
