"""The gateway killed with SIGKILL under load, and restarted, several times: after (device, seq)
de-duplication the district has every reading exactly once, and before it, at least once.

This is what acknowledging the site broker only after the commit buys: with paho's automatic PUBACK the
messages between the PUBACK and the commit die with the process, and this test fails."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from sitekit import District

from lifeline.virtual.faultlog import FaultLog
from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics

DEVICES = 4
RATE = 1000  # per device asked for, 3 readings each: about what the gateway sustains, so batches are in flight
KILLS = 5


@pytest.mark.timeout(240)
async def test_sigkill_under_load_loses_nothing(tmp_path: Path, fault_log: FaultLog) -> None:
    seed = int(os.environ.get("KILL_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    s = Site(tmp_path)
    for i in range(DEVICES):
        s.add(f"gas{i}", "gas")
    s.extra_toml = "[ingest]\nbatch = 50\n\n[uplink]\nbatch_max_items = 50\nbatch_max_delay_ms = 50\n"
    # fewer devices held in memory than there are: every batch reads state back from the store and lets some go
    # (gateway/device_states.py), across the kills too
    s.store_toml = "devices_in_memory = 2\n"
    s.start()
    gw = GatewayProcess(s).start()
    sent: set[tuple[str, int]] = set()
    sent_at_kill: list[int] = []
    kills = 0
    try:
        await gw.ready()
        async with District(s) as district:

            stop_load = asyncio.Event()

            async def device(dev: str) -> None:
                async with s.device_client(dev) as c:
                    start, i = time.monotonic(), 0
                    while not stop_load.is_set():
                        t = time.time()
                        value = 30.0 if (i // 50) % 2 else 2.0  # alarms come and go under the load too
                        topic, payload, seq = s.data(dev, [reading("ch4", value, "%LEL", t),
                                                           reading("temp", 20.0 + i % 5, "Cel", t),
                                                           reading("batt", 3.7, "V", t)])
                        await c.publish(topic, payload, qos=1)
                        sent.add((dev, seq))
                        i += 1
                        await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))

            load = asyncio.gather(*(device(d) for d in s.devices))
            while kills < KILLS:
                await asyncio.sleep(rnd.uniform(0.3, 1.5))
                received = sum(len(b["packs"]) for b in district.of(dtopics.TELEMETRY))
                gw.kill()  # SIGKILL
                sent_at_kill.append(len(sent))
                kills += 1
                print(f"kill {kills}: {len(sent)} sent, {received} forwarded so far")
                gw = GatewayProcess(s).start()
                await gw.wait_log("event=connected link=site")
            await asyncio.sleep(1.0)
            stop_load.set()
            await load

            await district.drained(lambda: set(district.packs()) >= sent, lambda: len(district.packs()))
            await asyncio.sleep(0.5)
        got = district.packs()
        # the load ran across the kills: messages went before each and after the last (a count, not a rate, which
        # a machine loaded by the parallel suites lowered under a threshold that had asked for a rate)
        assert all(b > a for a, b in itertools.pairwise([0, *sent_at_kill, len(sent)])), sent_at_kill
        assert set(got) == sent, f"seed {seed}: missing {sorted(sent - set(got))[:10]}"
        duplicates = sum(got.values()) - len(got)
        print(f"seed {seed}: {len(sent)} messages, {duplicates} delivered twice (removed by (dev, seq))")
        # every alarm the district heard of is whole: raised once, same id for all its transitions
        raised = Counter(a["id"] for a in district.of(dtopics.ALARM) if a["ev"] == "raised" and not a["resend"])
        assert raised and all(n >= 1 for n in raised.values())
        per_dev = Counter(a["dev"] for a in district.of(dtopics.ALARM) if a["ev"] == "raised")
        assert set(per_dev) == set(s.devices)
        fault_log.record("gateway SIGKILLed under load and restarted", injected=kills, unit="messages",
                         sent=len(sent), delivered=len(got), duplicates=duplicates, where="district")
    finally:
        gw.kill()
        s.stop()
