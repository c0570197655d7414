"""Two ingest workers share the district subscription; one is SIGKILLed under load and started again (as the
supervisor or systemd would): every device message is stored exactly once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiomqtt
import cbor2
from sqlalchemy import Engine, func, select

from district.schema import alarm_events, alarms, messages, refusals
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.faultlog import FaultLog
from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics
from protocol import site_seal

DEVICES = 4
RATE = 100  # messages a second per device
SECONDS = 6.0


def stop_lines(proc: DistrictProcess) -> list[dict[str, int]]:
    """The `stored` counts of each of this worker process's worker-stopped lines."""
    found = re.findall(r'event=worker-stopped .*stored="(\{.*?\})"', proc.log().replace('\\"', '"'))
    return [json.loads(s) for s in found]


def stored_by(proc: DistrictProcess) -> int:
    """Messages this worker process stored, from its worker-stopped lines."""
    return sum(line.get("message", 0) for line in stop_lines(proc))


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


def test_the_stop_line_counts_each_alarm_publish_once(engine: Engine, tmp_path: Path) -> None:
    """An alarm publish was counted twice in `stored["alarm"]` when its transition was new (once for the
    transition, once for the publish), once when it was a resend: three publishes, two of them new, showed 5.
    Now `alarm` counts publishes as every kind does, and `transition` the new transitions among them, as
    `message` counts the new device messages among telemetry publishes."""
    s = Site(tmp_path / "site", tls=False)
    s.add("gas1", "gas")
    s.start()
    conf = write_config(s, tmp_path / "district.toml", database=engine.url.render_as_string(hide_password=False))
    w = DistrictProcess(conf, "--worker", "1").start()
    t = time.time()
    raised = {"id": "d" * 32, "ev": "raised", "kind": "level", "dev": "gas1", "cls": "gas", "metric": "ch4",
              "level": "red", "prev": None, "value": 60.0, "reading": 60.0, "rule": "gas.ch4", "rver": 1,
              "t_dev": t - 1, "t_gw": t, "resend": 0}
    bodies = [raised, {**raised, "resend": 1},  # the gateway sent it again: the district has it
              {**raised, "ev": "cleared", "level": None, "prev": "red", "value": 1.0, "t_gw": t + 5}]
    try:
        w.wait_subscribed()

        async def send() -> None:
            async with aiomqtt.Client("127.0.0.1", s.district_broker.port,  # type: ignore[union-attr]
                                      username=s.id, password=s.gateway_password, identifier="alarms") as c:
                for body in bodies:
                    await c.publish(dtopics.up(s.id, dtopics.ALARM),
                                    site_seal.seal(s.site_key, s.id, dtopics.ALARM, cbor2.dumps(body)), qos=1)

        asyncio.run(send())

        def cleared() -> bool:
            with engine.connect() as conn:
                return conn.execute(select(alarms.c.state)).scalar() == "cleared"

        deadline = time.monotonic() + 30
        while not cleared():
            assert time.monotonic() < deadline, f"the clear was not stored; log: {w.log()[-2000:]}"
            time.sleep(0.1)
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(alarm_events)).scalar() == 2
    finally:
        assert w.stop() == 0
        s.stop()
    assert stop_lines(w) == [{"alarm": 3, "transition": 2}]
