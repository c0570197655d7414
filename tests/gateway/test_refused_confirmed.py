"""A message the gateway refuses and keeps in its quarantine: confirmed to its device when its MAC and number are
the device's own, so the node forgets it; never when they are not, so a forger cannot make a node forget real
readings, nor for a replay, which the device's next boot may take (docs/firmware-storage-mqtt.md, "A refused
message")."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path

from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import message, topics


async def test_a_refused_message_is_confirmed_only_when_its_mac_and_number_are_its_devices(tmp_path: Path) -> None:
    """A node with `hold` on forgets a record only when a confirmation names it. A message of its own refused as
    `schema` was never named: the node held it and sent it again at every connect and resend, each
    copy quarantined again, and one such record pinned every segment of its lane behind it until the queue was
    full. A message whose MAC or key id is not the device's, or that the device did not send on that topic, must
    leave the confirmation as it is, and so must a replay (the test below)."""
    s = Site(tmp_path, tls=False)
    s.add("d1", "gas")
    s.add("d2", "gas")
    s.extra_toml = "[ingest]\nbatch = 1\nseq_window = 16\n"  # one a batch: each refusal commits on its own
    s.start()
    gw = GatewayProcess(s).start()
    d1, d2 = s.devices["d1"], s.devices["d2"]
    data1 = topics.device(s.id, "d1", topics.DATA)
    pack = [reading("ch4", 1.0, "%LEL")]
    try:
        await gw.ready()
        async with s.device_client("d1") as c1:
            await c1.subscribe(topics.device(s.id, "d1", topics.DONE), qos=0)
            for seq in range(20):
                if seq != 2:  # 2 stays on the node: by the time it comes, it is below the window's floor (3)
                    await c1.publish(*s.data("d1", pack, seq=seq)[:2], qos=1)
            refused = [
                ("schema", {**message.data("d1", 1, 20, pack), "e": "no pack"}, d1.key),
                # not confirmed: a replay (the test below says why); 21 is no number the node used for a record (a
                # death's is the next one), or it is sealed with another key, or by another device
                ("replay", message.data("d1", 1, 2, pack), d1.key),
                ("schema", message.death("d1", 1, 21), d1.key),
                ("bad-mac", message.data("d1", 1, 21, pack), d2.key),
                ("device-mismatch", message.data("d2", 1, 21, pack), d2.key),
                ("schema", {k: v for k, v in message.data("d1", 1, 21, pack).items() if k != "seq"}, d1.key),
                # d1's own event, copied onto its data topic: no node sends it there, and the event itself may still
                # be on its way; confirmed, its node forgot it
                ("schema", message.event("d1", 1, 21, "prealarm", pack), d1.key),
            ]
            for _, body, key in refused:
                await c1.publish(data1, message.encode(body, key), qos=1)
            await c1.publish(*s.data("d1", pack, seq=22)[:2], qos=1)
            async with asyncio.timeout(20):
                async for m in c1.messages:
                    assert isinstance(m.payload, bytes)
                    ranges = topics.done_ranges(m.payload)
                    if ranges and ranges[-1][1] == 22:
                        break
        assert ranges == [(0, 1), (3, 20), (22, 22)], ranges
        store = sqlite3.connect(f"file:{s.dir / 'gateway.sqlite'}?mode=ro", uri=True)
        reasons = Counter(r for (r,) in store.execute("SELECT reason FROM quarantine"))
        stored = dict(store.execute("SELECT dev, ranges FROM done_ranges").fetchall())
        store.close()
        assert reasons == Counter(reason for reason, _, _ in refused)
        assert json.loads(stored["d1"]) == [[0, 1], [3, 20], [22, 22]] and "d2" not in stored
    finally:
        gw.kill()
        s.stop()



async def test_readings_after_a_bogus_huge_number_stay_on_the_node_until_its_next_boot(tmp_path: Path) -> None:
    """A corrupted counter that sent one huge number makes every later genuine message a replay until the
    device's next boot proves the number wrong and restarts its window (gateway/sequence.py). Those readings
    must stay on the node: confirmed as replays, the node forgot them and they reached only the quarantine,
    never the district; held, its next boot sends them again and they are admitted."""
    s = Site(tmp_path, tls=False)
    s.add("d1", "gas")
    s.extra_toml = "[ingest]\nbatch = 1\nseq_window = 16\n"
    s.start()
    gw = GatewayProcess(s).start()
    d1 = s.devices["d1"]
    pack = [reading("ch4", 1.0, "%LEL")]
    bogus = 1_000_000_000

    async def stored_when(replays: int, last: int) -> list[list[int]]:
        """d1's ranges in the store once it holds `replays` replays and has confirmed `last` (one commit each)."""
        async with asyncio.timeout(20):
            while True:
                store = sqlite3.connect(f"file:{s.dir / 'gateway.sqlite'}?mode=ro", uri=True)
                try:
                    (n,), = store.execute("SELECT count(*) FROM quarantine WHERE reason = 'replay'")
                    row = store.execute("SELECT ranges FROM done_ranges WHERE dev = 'd1'").fetchone()
                finally:
                    store.close()
                ranges = json.loads(row[0]) if row else []
                if n == replays and any(a <= last <= b for a, b in ranges):
                    return ranges
                await asyncio.sleep(0.05)

    try:
        await gw.ready()
        async with s.device_client("d1") as c1:
            for seq in [*range(10), bogus, *range(10, 20)]:
                await c1.publish(*s.data("d1", pack, seq=seq)[:2], qos=1)
            assert await stored_when(10, bogus) == [[0, 9], [bogus, bogus]]
        d1.boot += 1
        d1.seq = 20
        async with s.device_client("d1") as c1:
            await c1.publish(*s.birth("d1"), qos=1, retain=True)
            for seq in range(10, 21):  # the records the old boot held, then the new boot's first
                body = message.data("d1", d1.boot - 1 if seq < 20 else d1.boot, seq, pack)
                await c1.publish(topics.device(s.id, "d1", topics.DATA), message.encode(body, d1.key), qos=1)
            assert await stored_when(10, 20) == [[10, 20]]
    finally:
        gw.kill()
        s.stop()
