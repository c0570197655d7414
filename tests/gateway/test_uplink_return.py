"""After a district outage the site forwards again within seconds of the link's return (issue 18): the real
gateway, its district broker stopped for 20 s while a device keeps publishing, then started on the same port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from lifeline.virtual.faultlog import FaultLog
from lifeline.virtual.recorder import Recorder
from lifeline.virtual.site import DISTRICT_USER, GatewayProcess, Site, reading
from protocol import district as dtopics

OUTAGE_S = 20.0
RETURN_S = 4.0  # "forwarding again within a few seconds of its link returning"
PERIOD_S = 0.1  # the device publishes ten messages a second throughout


async def test_forwarding_resumes_within_seconds_of_the_district_returning(tmp_path: Path, fault_log: FaultLog) -> None:
    s = Site(tmp_path)
    s.add("gas1", "gas")
    s.start()
    gw = GatewayProcess(s).start()
    assert s.district_broker is not None
    # A persistent session: what the gateway forwards before this recorder is back is kept for it by the broker.
    rec = Recorder("127.0.0.1", s.district_broker.port, s.id, (DISTRICT_USER, s.district_password), raw=True,
                   session="district-return")
    sent: set[tuple[str, int]] = set()
    stop = asyncio.Event()
    publishing: asyncio.Task[None] | None = None

    def arrived() -> set[tuple[str, int]]:
        return {(p["dev"], p["seq"]) for e in rec.entries(dtopics.TELEMETRY) for p in e.body["packs"]}

    async def device() -> None:
        async with s.device_client("gas1") as client:
            while not stop.is_set():
                topic, payload, seq = s.data("gas1", [reading("ch4", 1.0, "%LEL")])
                await client.publish(topic, payload, qos=1)
                sent.add(("gas1", seq))
                await asyncio.sleep(PERIOD_S)

    try:
        await gw.ready()
        assert await rec.until(rec.subscribed.is_set, 10)
        publishing = asyncio.create_task(device())
        assert await rec.until(lambda: len(arrived()) >= 10, 20), "nothing forwarded before the outage"
        s.district_broker.stop()
        await gw.wait_log('event="uplink disconnected"')
        await asyncio.sleep(OUTAGE_S)
        s.district_broker.start()
        back = time.time()
        assert await rec.until(lambda: bool(rec.entries(since=back)), 30), "nothing arrived after the outage"
        delay = rec.entries(since=back)[0].t - back
        assert delay <= RETURN_S, f"first message reached the district {delay:.1f} s after it came back"
        await asyncio.sleep(1.0)  # live traffic after the return
        stop.set()
        await publishing
        assert await rec.until(lambda: sent <= arrived(), 30), f"lost: {sorted(sent - arrived())[:10]}"
        assert arrived() == sent
        fault_log.record(f"district broker down {OUTAGE_S:.0f} s while a device publishes (real gateway)", injected=1,
                         unit="messages", sent=len(sent), delivered=len(arrived()), where="district")
    finally:
        stop.set()
        if publishing is not None:
            await publishing
        rec.close()
        gw.kill()
        s.stop()
