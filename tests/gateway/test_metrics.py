"""The scrape as an operator reads it: the commit-time histogram's bounds and counts, and the link counters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from pathlib import Path

import mqtt5
import pytest
from prometheus_client import generate_latest

from gateway.daemon import Gateway
from gateway.metrics import COMMIT_BUCKETS, Metrics
from gateway.site_config import load


def test_the_scrape_shows_each_commit_under_its_bound() -> None:
    metrics = Metrics()
    assert 0.025 in COMMIT_BUCKETS  # the bound bench.gateway_throughput counts slow commits by
    assert "lifeline_store_commit_seconds_count 0.0" in generate_latest(metrics.registry).decode()
    for seconds in (0.0005, 0.001, 0.11):  # two healthy fsyncs (a bound falls in its own bucket), one slow
        metrics.commit_seconds.observe(seconds)
    text = generate_latest(metrics.registry).decode()
    assert 'lifeline_store_commit_seconds_bucket{le="0.001"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.025"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.1"} 2.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="0.25"} 3.0' in text
    assert 'lifeline_store_commit_seconds_bucket{le="+Inf"} 3.0' in text
    assert "lifeline_store_commit_seconds_count 3.0" in text
    total = re.search(r"^lifeline_store_commit_seconds_sum (\S+)$", text, re.M)
    assert total and abs(float(total[1]) - 0.1115) < 1e-9


async def test_text_not_utf8_from_the_site_broker_is_a_metric_counted_across_connections(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Link.not_utf8 counted the deliveries whose topic was not UTF-8, but nothing exported it, and each
    reconnection started it at zero: an operator saw neither a broken broker's deliveries nor its DISCONNECTs
    with a reason string not UTF-8. The site subscriber keeps the count over its connections and the scrape
    shows it by link and packet; each DISCONNECT is one 'disconnected' line with its reason code."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:  # a broken site broker
        nonlocal connections
        connections += 1
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket().write())
        subscribe, _ = mqtt5.read(memoryview(await reader.read(1024)))
        assert isinstance(subscribe, mqtt5.SubscribePacket)
        writer.write(mqtt5.SubAckPacket(subscribe.packet_id, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE] *
                                        len(subscribe.topic_filters)).write())
        topic = b"lifeline/v1/s1/d\xff/data"
        body = len(topic).to_bytes(2, "big") + topic + b"\x00payload"  # QoS 0, no properties
        reason = b"\x1f\x00\x03\xffby"  # a reason string property, not UTF-8
        writer.write(bytes([0x30, len(body)]) + body + bytes([0xE0, 2 + len(reason), 0x8B, len(reason)]) + reason)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\nport = {port}\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))
    try:
        with caplog.at_level(logging.WARNING, "lifeline.gateway.ingest"):
            async with server:
                task = asyncio.create_task(gateway.site.run())
                async with asyncio.timeout(10):
                    while connections < 3:
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.1)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        metrics = Metrics()
        metrics.update(gateway.snapshot())
        text = generate_latest(metrics.registry).decode()
    finally:
        gateway.outbox.close()
        gateway.conn.close()
    assert f'lifeline_link_not_utf8_total{{link="site",packet="PUBLISH"}} {connections}.0' in text
    assert f'lifeline_link_not_utf8_total{{link="site",packet="DISCONNECT"}} {connections}.0' in text
    lines = [getattr(r, "fields", {}).get("error") for r in caplog.records if r.getMessage() == "disconnected"]
    assert lines == ["disconnected by the broker: SERVER_SHUTTING_DOWN (its reason string, not UTF-8: \\xffby)"] * (
        connections)  # a line a connection, as for any DISCONNECT (the link was up in between)


def offline_gateway(tmp_path: Path) -> Gateway:
    """A gateway built on a store in `tmp_path`, not running: its outbox and snapshot, no broker."""
    (tmp_path / "site.toml").write_text(
        '[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n')
    return Gateway(load(tmp_path / "site.toml"))


def scrape(gateway: Gateway) -> str:
    """The scrape of the gateway's snapshot now, as Prometheus reads it."""
    metrics = Metrics()
    metrics.update(gateway.snapshot())
    return generate_latest(metrics.registry).decode()


def test_what_the_disk_budget_summarised_and_dropped_is_in_the_scrape(tmp_path: Path) -> None:
    """The outbox counted the device messages its budget summarised and dropped, and nothing exported them:
    through a district outage an operator's monitoring saw the outbox at its budget and no sign that readings
    were being given up (the budget's report reaches the district only once the link is back)."""
    gateway = offline_gateway(tmp_path)
    ob = gateway.outbox
    try:
        t0 = 1_763_900_000.0
        for k in range(200):  # ten devices every 10 s; windows of 30 s hold three messages of each
            for d in range(10):
                ob.put_telemetry(f"d{d}", k, 1, [{"n": "level", "u": "m", "t": t0 + 10 * k, "v": k % 7}],
                                 now=t0 + 10 * k)
            ob.flush()
        gateway.conn.commit()
        ob.thin_interval_s = 30.0
        ob.budget_bytes = ob.bytes_used() // 4
        assert ob.enforce_budget(now=t0 + 2000) is not None
        assert ob.thinned_msgs and ob.evicted_msgs
        text = scrape(gateway)
    finally:
        ob.close()
        gateway.conn.close()
    assert f"lifeline_outbox_thinned_messages_total {ob.thinned_msgs}.0" in text
    assert f"lifeline_outbox_evicted_messages_total {ob.evicted_msgs}.0" in text


def test_outbox_rows_set_aside_as_changed_on_disk_are_in_the_scrape(tmp_path: Path) -> None:
    """The outbox sets aside a row whose bytes changed on disk (its checksum fails) and counted it, and nothing
    exported the count: an operator's monitoring never saw a site box's flash card corrupting queued readings."""
    gateway = offline_gateway(tmp_path)
    ob = gateway.outbox
    try:
        for seq in (1, 2):  # a row each
            ob.put_telemetry("d1", seq, 1, [{"n": "level", "u": "m", "t": 1_763_900_000.0 + seq, "v": 1.5}])
            ob.flush()
        gateway.conn.commit()
        with sqlite3.connect(tmp_path / "gw.sqlite") as other:  # a byte flipped on the card
            other.execute("UPDATE outbox SET body = CAST(zeroblob(length(body)) AS BLOB) "
                          "WHERE id = (SELECT min(id) FROM outbox)")
        assert len(ob.lease(2, 10)) == 1  # TELEMETRY: the good row; the other is set aside
        ob.flush_acks()  # as the uplink's upkeep does each second
        text = scrape(gateway)
    finally:
        ob.close()
        gateway.conn.close()
    assert "lifeline_outbox_set_aside_rows_total 1.0" in text
