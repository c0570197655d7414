"""A gateway stand-in for the SIGKILL test: the real store, Outbox and Uplink in their own process.

usage: uplink_worker.py STORE PORT [--fill N]

--fill puts N telemetry messages (ten devices), one alarm and one state item per 100, committed in batches of
200 as the ingest would, in rows of the uplink's 20 as the daemon writes them, then drains to the district broker
on PORT at a slow, bounded rate so the test can kill it mid-drain: 50 publishes a second, 6 s for the telemetry,
so the 40% left after the last kill outlasts the recorder falling behind on a loaded machine. Without --fill it
only drains what the store holds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.logs import setup
from gateway.outbox import Outbox
from gateway.site_config import BrokerConfig
from gateway.store import open_store
from gateway.uplink import Uplink
from protocol import district

T0 = 1_763_900_000.0
ITEMS = 20  # device messages a telemetry publish carries


def fill(outbox: Outbox, n: int) -> None:
    for i in range(n):
        dev = f"dev-{i % 10}"
        outbox.put_telemetry(dev, i // 10, 1, [{"n": "level", "u": "m", "t": T0 + i, "v": i / 10}])
        if i % 100 == 0:
            outbox.put_alarm({"id": f"alarm-{i}", "ev": "raised"})
            outbox.put_state(district.UP_STATE, {"n": i})
        if i % 200 == 199:
            outbox.flush()
            outbox.conn.commit()
    outbox.flush()
    outbox.conn.commit()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("port", type=int)
    parser.add_argument("--fill", type=int, default=0)
    args = parser.parse_args()
    setup("kv", "info")
    outbox = Outbox(open_store(args.store), 1 << 30, row_entries=ITEMS)
    fill(outbox, args.fill)
    print("filled", flush=True)
    broker = BrokerConfig("127.0.0.1", args.port, "sigkill-worker", None, None, None, 30)
    await Uplink(outbox, broker, "site-a", max_items=ITEMS, drain_rate=50, max_inflight=8, tick_s=0.2,
                 backoff_max_s=0.5).run()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
