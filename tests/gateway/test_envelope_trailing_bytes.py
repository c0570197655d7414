"""A genuine message with bytes after it, through real Mosquitto into the running gateway: quarantined as
`malformed` with its raw bytes and a reason naming the trailing bytes, nothing of it forwarded (neither the
genuine message in front nor a second one appended), and the good messages beside it still arrive."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sitekit import District, quarantined

from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics


async def test_bytes_after_a_genuine_message_are_quarantined(tmp_path: Path) -> None:
    s = Site(tmp_path)
    s.add("d1", "gas")
    s.start()
    gw = GatewayProcess(s).start()
    good: set[int] = set()
    refused: set[int] = set()  # seqs that travelled only inside a message with trailing bytes
    bad: list[bytes] = []
    try:
        await gw.ready()
        async with District(s) as district, s.device_client("d1") as c1:
            for i in range(4):
                topic, genuine, seq = s.data("d1", [reading("ch4", 1.0, "%LEL")])
                refused.add(seq)
                if i == 0:
                    tail = b"\x00"
                elif i == 1:
                    tail = genuine[-9:]  # the envelope's own tag item again
                elif i == 2:
                    tail = b"\xff" * 100
                else:  # a second genuine message
                    _, tail, second = s.data("d1", [reading("ch4", 2.0, "%LEL")])
                    refused.add(second)
                bad.append(genuine + tail)
                await c1.publish(topic, bad[-1], qos=1)
                topic, payload, seq = s.data("d1", [reading("ch4", 3.0, "%LEL")])
                await c1.publish(topic, payload, qos=1)
                good.add(seq)

            def arrived() -> set[int]:
                return {p["seq"] for b in district.of(dtopics.TELEMETRY) for p in b["packs"]}

            await district.wait_for(lambda: good <= arrived())
            store = await quarantined(s, len(bad))
            await asyncio.sleep(0.5)
        assert not arrived() & refused, f"forwarded: seq {sorted(arrived() & refused)}"
        assert arrived() == good
        rows = store.execute("SELECT reason, detail, raw FROM quarantine ORDER BY id").fetchall()
        store.close()
        assert [bytes(r[2]) for r in rows] == bad
        assert all(r[0] == "malformed" and "trailing bytes after the item" in r[1] for r in rows), rows
        assert gw.proc is not None and gw.proc.poll() is None
    finally:
        gw.kill()
        s.stop()
