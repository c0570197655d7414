"""Sequence numbers through a running gateway and real brokers: one authentic message with a bogus huge number
(a corrupted counter) must not lock its device out for good; the device's next boot resets its window, and a
recording of the old count cannot take the new count's numbers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from sitekit import District

from gateway.sequence import sequence_stats
from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics


def quarantined(s: Site) -> list[tuple[str, bytes]]:
    store = sqlite3.connect(f"file:{s.dir / 'gateway.sqlite'}?mode=ro", uri=True)
    try:
        return [(reason, bytes(raw)) for reason, raw in store.execute("SELECT reason, raw FROM quarantine ORDER BY id")]
    except sqlite3.OperationalError:  # the gateway has not created its tables yet
        return []
    finally:
        store.close()


async def until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def test_a_bogus_huge_number_locks_its_device_out_only_until_its_next_boot(tmp_path: Path) -> None:
    s = Site(tmp_path, extra_toml="[ingest]\nseq_window = 16\n")
    d1 = s.add("d1", "gas")
    d1.seq = 80
    s.start()
    gw = GatewayProcess(s).start()
    bogus = 2 ** 63 - 1
    try:
        await gw.ready()
        async with District(s) as district, s.device_client("d1") as c1:

            def telemetry() -> set[int]:
                return {p["seq"] for b in district.of(dtopics.TELEMETRY) for p in b["packs"] if p["dev"] == "d1"}

            async def send(seq: int | None = None) -> tuple[int, bytes]:
                topic, payload, n = s.data("d1", [reading("ch4", 1.0, "%LEL")], seq=seq)
                await c1.publish(topic, payload, qos=1)
                return n, payload

            await c1.publish(*s.birth("d1"), qos=1)
            first, early = await send()  # 80 of boot 1
            d1.seq = 100
            sent = {first} | {(await send())[0] for _ in range(5)}  # 100..104
            sent.add((await send(bogus))[0])  # authentic: sealed with the device's key
            await district.wait_for(lambda: sent <= telemetry())
            locked = [await send() for _ in range(2)]  # 105, 106: below the floor the bogus number raised
            await until(lambda: len(quarantined(s)) == 2, "the locked-out messages quarantined")
            assert quarantined(s) == [("replay", payload) for _, payload in locked]

            d1.boot = 2  # the device reboots: its birth says its counter stands at 107
            await c1.publish(*s.birth("d1"), qos=1)
            after = {(await send())[0] for _ in range(2)}  # 107, 108 of boot 2
            assert after == {107, 108}
            await c1.publish(f"lifeline/v1/{s.id}/d1/data", early, qos=1)  # 80 again, below the new window
            await district.wait_for(lambda: sent | after <= telemetry())
            await until(lambda: len(quarantined(s)) == 3, "the replay below the new window quarantined")
            await asyncio.sleep(0.5)

        assert telemetry() == sent | after
        assert quarantined(s)[2] == ("replay", early)
        resets = [line for line in gw.lines() if "event=sequence" in line and "kind=reset" in line]
        assert len(resets) == 1 and f"high={bogus}" in resets[0] and "seq=107" in resets[0], resets
        gw.check()
    finally:
        gw.kill()
        s.stop()


async def test_a_recording_of_the_old_count_does_not_take_a_wiped_nodes_new_number(tmp_path: Path) -> None:
    """A node whose flash was wiped counts from 0 again. A recording of its old count's 3, published on the site
    broker before the new 3, was admitted as new data; the node's own 3 was then a duplicate, confirmed on its
    done topic: the node forgot a reading the gateway never stored."""
    s = Site(tmp_path, tls=False)
    d1 = s.add("d1", "gas")
    s.extra_toml = "[ingest]\nbatch = 1\n"  # one message a commit, in the order sent
    s.start()
    gw = GatewayProcess(s).start()
    pack = [reading("ch4", 1.0, "%LEL")]

    def store() -> tuple[list[list[int]], tuple[int, int, int]]:
        """d1's confirmed ranges and its (duplicates, replays, gaps)."""
        conn = sqlite3.connect(f"file:{s.dir / 'gateway.sqlite'}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT ranges FROM done_ranges WHERE dev = 'd1'").fetchone()
            return (json.loads(row[0]) if row else []), sequence_stats(conn).get("d1", (0, 0, 0))
        finally:
            conn.close()

    try:
        await gw.ready()
        async with s.device_client("d1") as c1:
            await c1.publish(*s.birth("d1"), qos=1)
            for _ in range(10):
                topic, payload, seq = s.data("d1", pack)
                await c1.publish(topic, payload, qos=1)
                if seq == 3:
                    recorded = payload
            await until(lambda: store()[0] == [[0, 9]], "boot 1's 0-9 committed")
        d1.boot, d1.seq = 2, 0  # wiped and reflashed
        async with s.device_client("d1") as c1:
            await c1.publish(*s.birth("d1"), qos=1)
            await c1.publish(topic, recorded, qos=1)
            for _ in range(6):
                await c1.publish(*s.data("d1", pack)[:2], qos=1)
            await until(lambda: store()[0] == [[0, 5]], "boot 2's 0-5 committed")
        assert store() == ([[0, 5]], (0, 1, 0))  # the node's own 3 admitted, the recording refused
        assert quarantined(s) == [("replay", recorded)]
        gw.check()
    finally:
        gw.kill()
        s.stop()


async def test_numbers_up_to_2_64_minus_1_are_forwarded(tmp_path: Path) -> None:
    s = Site(tmp_path)
    s.add("d1", "gas")
    s.start()
    gw = GatewayProcess(s).start()
    seqs = [2 ** 63 - 1, 2 ** 63, 2 ** 64 - 2, 2 ** 64 - 1]
    try:
        await gw.ready()
        async with District(s) as district, s.device_client("d1") as c1:
            for seq in [*seqs, 2 ** 64 - 1]:  # the last one again: a duplicate
                topic, payload, _ = s.data("d1", [reading("ch4", 1.0, "%LEL")], seq=seq)
                await c1.publish(topic, payload, qos=1)

            def telemetry() -> list[int]:
                return [p["seq"] for b in district.of(dtopics.TELEMETRY) for p in b["packs"]]

            await district.wait_for(lambda: set(seqs) <= set(telemetry()))
            await asyncio.sleep(0.5)
        assert sorted(telemetry()) == seqs
        assert quarantined(s) == []
    finally:
        gw.kill()
        s.stop()
