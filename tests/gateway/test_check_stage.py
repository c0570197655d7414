"""Check processes (gateway/check_stage.py): the same verdicts as the ingest's own decoding, in order, from
real child processes; a process that dies costs nothing but time; a reloaded registry reaches them; and a
gateway run with one loses nothing while its check process is killed again and again under load."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from sitekit import District

from gateway import check_stage
from gateway.check_stage import CheckStage
from gateway.device_list import DeviceConfig, DeviceList
from gateway.ingest import Incoming
from gateway.message_decode import decode
from lifeline.virtual.site import GatewayProcess, Site, reading
from protocol import district as dtopics
from protocol import message, senml, topics

KEYS = {f"d{i}": bytes([i]) * 32 for i in range(4)}


def devices(*ids: str) -> DeviceList:
    return DeviceList(DeviceConfig(d, "gas", KEYS[d], None) for d in sorted(ids))


def data(dev: str, seq: int, key: bytes | None = None) -> Incoming:
    pack = senml.pack([senml.record("ch4", 1.5 + seq, "%LEL", 1_800_000_000.0)], bn=f"{dev}:")
    raw = message.encode(message.data(dev, 1, seq, pack), key or KEYS[dev])
    return Incoming(topics.device("s1", dev, topics.DATA), raw, False, time.time())


def hostile() -> list[Incoming]:
    """One of each way a message fails, between good ones."""
    good = data("d1", 7)
    now = time.time()
    return [
        data("d0", 1),
        good._replace(payload=good.payload[:-1] + bytes([good.payload[-1] ^ 1])),  # MAC
        data("d3", 1),  # not in the list the processes hold
        data("d2", 2, key=KEYS["d1"]),  # signed with another device's key
        Incoming(good.topic, b"\xff\x00garbage", False, now),
        Incoming(good.topic, good.payload + b"\x00", False, now),  # a trailing byte
        Incoming("not/a/device/topic", good.payload, False, now),
        Incoming(topics.device("s1", "d1", topics.CMD), good.payload, False, now),
        data("d1", 8),
        data("d2", 9),
    ]


async def test_check_processes_give_the_ingests_verdicts_in_order() -> None:
    listed = devices("d0", "d1", "d2")
    stage = CheckStage(2, listed)
    await stage.start()
    try:
        batch = hostile()
        out = await stage.prepare(batch)
    finally:
        await stage.close()
    assert [m.payload for m in out] == [m.payload for m in batch]  # the batch, in its order
    decoded = [m.decoded for m in out]
    expected = [decode(topics.parse_device(m.topic)[2], m.payload, listed.key_for) for m in batch[:6]]
    assert decoded[:6] == expected
    assert [d[0] for d in expected] == [True, False, False, False, False, False]  # type: ignore[index]
    assert [d[1] for d in expected[1:]] == ["bad-mac", "unknown-device", "bad-mac", "malformed", "malformed"]  # type: ignore[index]
    assert decoded[6:8] == [None, None]  # not device uplinks: left to the ingest, which quarantines them as "topic"
    assert decoded[8] == decode(topics.DATA, batch[8].payload, listed.key_for)
    assert decoded[8][0] and decoded[8][1]["seq"] == 8  # type: ignore[index]
    # the pack comes back resolved only: half the bytes to pickle (docs/performance.md, "The check stage")
    assert "e" not in decoded[8][1] and decoded[8][2][0]["n"] == "d1:ch4"  # type: ignore[index,operator]
    assert stage.in_process == 0 and stage.lost == 0


async def test_a_lost_process_leaves_its_part_to_the_ingest_and_is_started_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_stage, "RESTART_FIRST_S", 0.05)
    stage = CheckStage(1, devices("d0", "d1", "d2"))
    await stage.start()
    try:
        first = stage.pids()
        os.kill(first[0], signal.SIGKILL)
        batch = [data("d0", i) for i in range(5)]
        out = await stage.prepare(batch)  # sent to a process that is dead or dying
        assert out == batch  # undecoded: the ingest decodes them as it does without a stage
        assert stage.in_process == 5
        for _ in range(200):
            if stage.pids():
                break
            await asyncio.sleep(0.02)
        assert stage.pids() and stage.pids() != first and stage.lost == 1
        out = await stage.prepare(batch)
        assert all(m.decoded and m.decoded[0] for m in out)  # the new process decodes
        assert stage.in_process == 5
    finally:
        await stage.close()
    assert stage.pids() == []


async def test_a_process_that_stops_answering_is_killed_and_its_part_left_to_the_ingest(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A check process stopped (SIGSTOP here; swapped out or looping in the field) held its batch, and the
    ingest, which takes batches in order, waited for it for good: the site ingested nothing, and said nothing."""
    monkeypatch.setattr(check_stage, "RESTART_FIRST_S", 0.05)
    monkeypatch.setattr(check_stage, "ANSWER_S", 0.5)
    stage = CheckStage(1, devices("d0"))
    await stage.start()
    try:
        first = stage.pids()
        os.kill(first[0], signal.SIGSTOP)
        batch = [data("d0", i) for i in range(5)]
        async with asyncio.timeout(10):
            out = await stage.prepare(batch)
        assert out == batch and stage.in_process == 5  # undecoded: the ingest decodes them
        assert any(r.getMessage() == "check-process-stuck" for r in caplog.records)
        for _ in range(200):
            if stage.pids() and stage.pids() != first:
                break
            await asyncio.sleep(0.02)
        assert stage.pids() and stage.pids() != first and stage.lost == 1
        out = await stage.prepare([data("d0", 9)])
        assert out[0].decoded and out[0].decoded[0]  # the new process decodes
    finally:
        await stage.close()


async def test_a_process_that_cannot_be_started_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a new process can fail (the interpreter gone in an upgrade, no memory): the ingest decodes
    meanwhile and the stage keeps trying, each time later."""
    monkeypatch.setattr(check_stage, "RESTART_FIRST_S", 0.05)
    stage = CheckStage(1, devices("d0"))
    await stage.start()
    try:
        python = sys.executable
        monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
        os.kill(stage.pids()[0], signal.SIGKILL)
        await asyncio.sleep(0.5)  # some attempts fail
        assert stage.pids() == []
        out = await stage.prepare([data("d0", 1)])
        assert out[0].decoded is None  # left to the ingest
        monkeypatch.setattr(sys, "executable", python)
        for _ in range(300):
            if stage.pids():
                break
            await asyncio.sleep(0.02)
        assert stage.pids()
        out = await stage.prepare([data("d0", 2)])
        assert out[0].decoded and out[0].decoded[0]
    finally:
        await stage.close()


async def test_a_stage_that_cannot_start_its_process_leaves_the_ingest_to_decode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same at the gateway's start: it runs, decoding in the ingest, and the process comes when it can."""
    monkeypatch.setattr(check_stage, "RESTART_FIRST_S", 0.05)
    python = sys.executable
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    stage = CheckStage(1, devices("d0"))
    await stage.start()
    try:
        assert stage.pids() == []
        out = await stage.prepare([data("d0", 1)])
        assert out[0].decoded is None and stage.in_process == 1
        monkeypatch.setattr(sys, "executable", python)
        for _ in range(300):
            if stage.pids():
                break
            await asyncio.sleep(0.02)
        out = await stage.prepare([data("d0", 2)])
        assert stage.pids() and out[0].decoded and out[0].decoded[0]
    finally:
        await stage.close()


async def test_a_reloaded_registry_reaches_the_processes() -> None:
    """After a reload each batch is checked against the new registry: by the processes from then on, and by
    the ingest for a batch they had before it (a device added by the reload is not refused as unknown)."""
    stage = CheckStage(2, devices("d0"))
    await stage.start()
    try:
        before = await stage.prepare([data("d1", 1), data("d0", 1)])
        across = stage.prepare([data("d1", 2), data("d0", 2)])  # sent before the reload, handled after it
        stage.replace(devices("d0", "d1"))
        after = await stage.prepare([data("d1", 3), data("d0", 3)])
        left_to_the_ingest = await across
    finally:
        await stage.close()
    assert before[0].decoded and before[0].decoded[:2] == (False, "unknown-device")
    assert before[1].decoded and before[1].decoded[0]
    assert all(m.decoded and m.decoded[0] for m in after)
    assert [m.decoded for m in left_to_the_ingest] == [None, None] and stage.in_process == 0


async def test_messages_that_meet_a_bug_in_a_check_process_log_one_traceback(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A message whose decoding meets a bug is answered "internal", and the ingest quarantines and counts it,
    logged once an interval; the check process logged a traceback of its own for each one, so a device that
    kept sending it flooded the journal. The bug here: a registry whose ids cannot be compared with a str."""
    broken = devices("d0", "d1")
    broken._ids = [b"d0", b"d1"]  # type: ignore[list-item]
    stage = CheckStage(1, broken)
    await stage.start()
    try:
        out = await stage.prepare([data("d1", seq) for seq in range(1, 21)])
    finally:
        await stage.close()
    assert [m.decoded[:2] for m in out if m.decoded] == [(False, "internal")] * 20
    assert out[0].decoded is not None and out[0].decoded[2].startswith("TypeError: ")
    assert capfd.readouterr().err.count("Traceback") == 1


def check_process_pids(gateway_pid: int) -> list[int]:
    children = Path(f"/proc/{gateway_pid}/task/{gateway_pid}/children").read_text().split()
    return [int(p) for p in children if "gateway.check_worker" in Path(f"/proc/{p}/cmdline").read_text()]


@pytest.mark.timeout(180)
async def test_gateway_with_a_check_process_killed_under_load_loses_nothing(tmp_path: Path) -> None:
    s = Site(tmp_path, metrics=True)
    for i in range(4):
        s.add(f"gas{i}", "gas")
    s.extra_toml = "[ingest]\nbatch = 50\ncheck_processes = 1\n\n[uplink]\nbatch_max_delay_ms = 50\n"
    s.start()
    gw = GatewayProcess(s).start()
    sent: set[tuple[str, int]] = set()
    try:
        await gw.ready()
        await gw.wait_log("event=check-processes")
        assert gw.proc is not None
        async with District(s) as district:
            stop = asyncio.Event()

            async def device(dev: str) -> None:
                async with s.device_client(dev) as c:
                    i = 0
                    while not stop.is_set():
                        value = 30.0 if (i // 40) % 2 else 2.0  # alarms come and go
                        topic, payload, seq = s.data(dev, [reading("ch4", value, "%LEL", time.time())])
                        await c.publish(topic, payload, qos=1)
                        sent.add((dev, seq))
                        i += 1
                        await asyncio.sleep(0.002)

            load = asyncio.gather(*(device(d) for d in s.devices))
            for kill in range(3):
                await asyncio.sleep(0.7)
                pids = check_process_pids(gw.proc.pid)
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGKILL)
                await gw.wait_log("event=check-process-started", count=kill + 1)
            await asyncio.sleep(0.5)
            stop.set()
            await load

            await district.drained(lambda: set(district.packs()) >= sent, lambda: len(district.packs()))
            got = district.packs()
            assert set(got) == sent
            assert max(got.values()) == 1  # the gateway was not restarted: nothing comes twice
            assert {a["dev"] for a in district.of(dtopics.ALARM) if a["ev"] == "raised"} == set(s.devices)
        log = "\n".join(gw.lines())
        assert log.count("event=check-process-lost") == 3
        await asyncio.sleep(1.2)  # the metrics are refreshed each tick
        assert s.metric("lifeline_check_processes") == 1 and s.metric("lifeline_check_processes_lost_total") == 3
        assert s.metric("lifeline_checked_in_ingest_total") > 0  # at least while each was started again
        assert "quarantined" not in log
        last = check_process_pids(gw.proc.pid)
        gw.signal(signal.SIGTERM)
        assert await gw.wait() == 0
        assert len(last) == 1 and not Path(f"/proc/{last[0]}").exists()  # closed with the gateway
    finally:
        gw.kill()
        s.stop()
