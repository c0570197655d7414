"""Two ingest workers share the district subscription; one is SIGKILLed under load and started again (as the
supervisor or systemd would): every device message is stored exactly once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from sqlalchemy import Engine, func, select

from district.schema import messages, refusals
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.faultlog import FaultLog
from lifeline.virtual.site import GatewayProcess, Site, reading

DEVICES = 4
RATE = 100  # messages a second per device
SECONDS = 6.0


def stored_by(proc: DistrictProcess) -> int:
    """Messages this worker process stored, from its worker-stopped line."""
    found = re.findall(r'event=worker-stopped .*stored="(\{.*?\})"', proc.log().replace('\\"', '"'))
    return sum(json.loads(s).get("message", 0) for s in found)


def test_a_worker_killed_under_load_loses_nothing_and_doubles_nothing(engine: Engine, tmp_path: Path,
                                                                       fault_log: FaultLog) -> None:
    s = Site(tmp_path / "site", tls=False)
    for i in range(DEVICES):
        s.add(f"gas{i}", "gas")
    s.start()
    gw = GatewayProcess(s).start()
    conf = write_config(s, tmp_path / "district.toml", database=engine.url.render_as_string(hide_password=False),
                        workers=2)
    w1 = DistrictProcess(conf, "--worker", "1").start()
    w2 = DistrictProcess(conf, "--worker", "2").start()
    sent: set[tuple[str, int]] = set()
    try:
        asyncio.run(gw.ready())
        w1.wait_subscribed()
        w2.wait_subscribed()

        async def device(dev: str) -> None:
            async with s.device_client(dev) as c:
                start, i = time.monotonic(), 0
                while time.monotonic() - start < SECONDS:
                    topic, payload, seq = s.data(dev, [reading("ch4", 1.0 + (i % 7), "%LEL")])
                    await c.publish(topic, payload, qos=1)
                    sent.add((dev, seq))
                    i += 1
                    await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))

        async def load_and_kill() -> None:
            load = asyncio.gather(*(device(d) for d in s.devices))
            await asyncio.sleep(SECONDS / 2)
            w1.kill()  # SIGKILL: its session keeps what was delivered to it and not acknowledged
            await asyncio.sleep(0.5)
            w1.start()
            await load

        asyncio.run(load_and_kill())

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(messages)).scalar_one())

        deadline = time.monotonic() + 60
        while stored() < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # anything redelivered late would show as a double now (it cannot: a unique key)
        with engine.connect() as conn:
            keys = conn.execute(select(messages.c.dev, messages.c.seq_key)).all()
            assert conn.execute(select(func.count()).select_from(refusals)).scalar() == 0
        got = {(dev, key + (1 << 63)) for dev, key in keys}
        assert got == sent, f"missing {sorted(sent - got)[:10]}, extra {sorted(got - sent)[:10]}"
        assert len(keys) == len(sent)
    finally:
        for w in (w1, w2):
            w.stop()
        gw.kill()
        s.stop()
    shares = stored_by(w1), stored_by(w2)
    assert all(n > 0 for n in shares), f"the broker gave every message to one worker: {shares}"
    fault_log.record(f"district worker SIGKILLed under load and restarted ({engine.dialect.name})", injected=1,
                     unit="messages", sent=len(sent), delivered=len(got), where="district database")
