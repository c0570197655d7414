"""gateway.mqtt_link.Link on its own: against a real Mosquitto for what a client does, and against a scripted
fake broker for what a hostile or broken one could send (each must end the link with a clear LinkError)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import mqtt5
import pytest

from gateway.mqtt_link import Link, LinkError
from gateway.site_config import BrokerConfig
from lifeline.virtual.broker import Mosquitto, subscribe_only

TOPIC = "lifeline/v1/s1/d1/data"
log = logging.getLogger("test.mqtt_link")


def config(port: int, client_id: str = "link-test", keepalive: int = 30) -> BrokerConfig:
    return BrokerConfig("127.0.0.1", port, client_id, None, None, None, keepalive)


async def test_deliveries_wait_for_the_ack_and_publish_waits_for_the_puback() -> None:
    with Mosquitto("max_inflight_messages 1000") as b:
        async with Link(config(b.port), log) as link:
            await link.subscribe([TOPIC], qos=1)
            async with Link(config(b.port, "publisher"), log) as pub:
                for i in range(5):
                    await pub.publish(TOPIC, str(i).encode(), qos=1)
                await pub.publish(TOPIC, b"q0", qos=0)
            first = await link.message()
            await asyncio.sleep(0.2)
            rest = link.ready(100)
            got = [first, *rest]
            assert [m.payload for m in got] == [b"0", b"1", b"2", b"3", b"4", b"q0"]
            assert not any(m.retain for m in got)
            for m in got[:3]:
                link.ack(m)
            await asyncio.sleep(0.1)
        async with Link(config(b.port), log) as link:  # the two not acknowledged come again
            await link.subscribe([TOPIC], qos=1)
            again = [await link.message()]
            await asyncio.sleep(0.2)
            again += link.ready(100)
            assert [m.payload for m in again] == [b"3", b"4"]


async def test_a_refused_login_is_a_link_error() -> None:
    with Mosquitto(anonymous=False) as b, pytest.raises(LinkError, match="refused"):
        async with Link(config(b.port), log):
            pass


async def test_a_refused_subscription_is_a_link_error(tmp_path: Path) -> None:
    """A SUBACK that refuses a filter (a broker whose access rules do not let the gateway read it) left the link
    up and receiving nothing: the site looked connected and was deaf. It is a LinkError, so the subscriber's
    reconnect loop logs it and shows the link down until the rules let it read."""
    with Mosquitto(subscribe_only(tmp_path, ["lifeline/v1/s1/+/birth"])) as b:
        async with Link(config(b.port), log) as link:
            await link.subscribe(["lifeline/v1/s1/+/birth"], qos=1)  # allowed: no error
            with pytest.raises(LinkError, match=r"subscription refused: lifeline/v1/s1/\+/data \(NOT_AUTHORIZED\)"):
                await link.subscribe(["lifeline/v1/s1/+/birth", "lifeline/v1/s1/+/data"], qos=1)


async def test_nobody_listening_is_a_link_error() -> None:
    with Mosquitto() as b:
        port = b.port
    with pytest.raises(LinkError):
        async with Link(config(port), log):
            pass


# --- a fake broker that answers the CONNECT, then sends what the test says ---------------------------------

@contextlib.asynccontextmanager
async def fake_broker(after_connect: Callable[[asyncio.StreamWriter], None],
                      answer_pings: bool = True) -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket().write())
        await asyncio.sleep(0.1)  # the link is up before the rest comes
        after_connect(writer)
        while data := await reader.read(1024):
            if answer_pings and mqtt5.PingReqPacket().write() in data:
                writer.write(mqtt5.PingRespPacket().write())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def expect_link_error(after_connect: Callable[[asyncio.StreamWriter], None], match: str,
                            max_packet: int = 1 << 20, keepalive: int = 30, answer_pings: bool = True) -> None:
    async with (fake_broker(after_connect, answer_pings) as port,
                Link(config(port, keepalive=keepalive), log, max_packet=max_packet) as link):
        with pytest.raises(LinkError, match=match):
            async with asyncio.timeout(10):
                while True:
                    await link.message()


async def test_a_packet_declared_past_the_limit_closes_the_link_before_it_is_read() -> None:
    header = bytes([0x30, 0x80, 0x80, 0x80, 0x01])  # a PUBLISH of 2 MiB, of which only the header comes
    await expect_link_error(lambda w: w.write(header), "over the limit", max_packet=1 << 20)


async def test_a_whole_packet_past_the_limit_closes_the_link() -> None:
    big = mqtt5.PublishPacket(TOPIC, b"x" * 2000, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=1).write()
    await expect_link_error(lambda w: w.write(big), "over the limit", max_packet=1000)


@pytest.mark.parametrize("garbage", [
    bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # a remaining length of five bytes
    bytes([0x30, 0x03, 0x00, 0x09, 0x61]),  # a topic longer than its packet
    bytes([0xF0, 0x00]),  # packet type 15 (AUTH) without its reason code
    mqtt5.PublishPacket(TOPIC, b"x", qos=mqtt5.QoS.EXACTLY_ONCE, packet_id=1).write(),  # QoS 2, never asked for
    mqtt5.PublishPacket(TOPIC, b"x", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=0).write(),  # QoS 1 needs an id
    mqtt5.PublishPacket("", b"x", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=1, topic_alias=1).write(),  # never allowed
    mqtt5.SubscribePacket(1, [mqtt5.TopicFilter(TOPIC)]).write(),  # a packet only a client sends
    bytes([0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0xFF, 0x01]),  # one whose filter is not UTF-8: read, it panicked
    bytes([0x30, 0x06, 0x00, 0x02, 0xFF, 0xFE, 0x05, 0x26]),  # a topic not UTF-8, properties past the end
])
async def test_malformed_or_unexpected_packets_close_the_link(garbage: bytes,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    await expect_link_error(lambda w: w.write(garbage), "malformed packet")
    assert "panicked" not in capfd.readouterr().err


async def packets(reader: asyncio.StreamReader) -> AsyncIterator[object]:
    """What the link sends a fake broker, packet by packet, until it closes."""
    buf = b""
    while data := await reader.read(4096):
        buf += data
        while buf:
            try:
                packet, used = mqtt5.read(memoryview(buf))
            except IndexError:
                break
            buf = buf[used:]
            yield packet


def publish(topic: bytes, mid: int, properties: bytes = b"") -> bytes:
    """A QoS 1 PUBLISH of raw topic bytes, as a broken broker could send (mqtt5 writes only str topics)."""
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + bytes([len(properties)]) + properties
    body += b"payload %d" % mid
    return bytes([0x32, len(body)]) + body


async def test_a_delivery_whose_text_is_not_utf8_is_counted_and_handed_over_with_the_good_ones(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Mosquitto closes a client that publishes such a topic, so only a broken or hostile broker sends one. The
    reader panicked on it (a UnicodeDecodeError as an unraisable warning, Rust's panic on stderr) and the link
    closed, with the good deliveries read beside it unacknowledged: a broker that delivers it again on every
    connection held the queue behind it for good. Now it is acknowledged once taken, as any delivery, and
    handed over with its topic escaped, which no handler takes for a topic of its own (the site's quarantines
    it); a text property not UTF-8 is dropped with the properties, which the gateway never reads."""
    unraisable: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    acked: list[int] = []
    sent = [publish(TOPIC.encode(), 1), publish(b"lifeline/v1/s1/d\xff/data", 2),
            publish(TOPIC.encode(), 3, bytes([0x26, 0x00, 0x01, 0xFF, 0x00, 0x00])),  # a user property
            publish(TOPIC.encode(), 4)]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket().write() + b"".join(sent))
        async for packet in packets(reader):
            if isinstance(packet, mqtt5.PubAckPacket):
                acked.append(packet.packet_id)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    with caplog.at_level(logging.WARNING, log.name):
        async with server, Link(config(server.sockets[0].getsockname()[1]), log, timeout_s=5) as link:
            got = [await link.message()]
            await asyncio.sleep(0.2)
            got += link.ready(10)
            for m in got:
                link.ack(m)
            await asyncio.sleep(0.2)
            assert link.not_utf8 == {"PUBLISH": 2}
            await link.publish(TOPIC, b"q0", qos=0)  # still connected
    assert [(m.topic, m.payload, m.packet_id) for m in got] == [
        (TOPIC, b"payload 1", 1), ("lifeline/v1/s1/d\\xff/data", b"payload 2", 2), (TOPIC, b"payload 3", 3),
        (TOPIC, b"payload 4", 4)]
    assert sorted(acked) == [1, 2, 3, 4]
    assert [r.getMessage() for r in caplog.records] == ["delivery-not-utf8"]  # once a connection
    assert getattr(caplog.records[0], "fields", {})["field"] == "topic"
    assert not unraisable and "panicked" not in capfd.readouterr().err


@pytest.mark.parametrize("request_, answer", [
    ("subscribe", lambda mid: mqtt5.PubAckPacket(mid).write()),
    ("publish", lambda mid: mqtt5.SubAckPacket(mid, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE]).write()),
])
async def test_an_acknowledgement_of_the_other_kind_is_a_link_error(request_: str,
                                                                    answer: Callable[[int], bytes]) -> None:
    """SUBSCRIBE and PUBLISH share packet ids; a broker answering one with the other's ack raised an
    AssertionError (an AttributeError under -O), not a LinkError."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket().write())
        while data := await reader.read(4096):
            packet, _ = mqtt5.read(data)
            if isinstance(packet, mqtt5.SubscribePacket | mqtt5.PublishPacket):
                writer.write(answer(packet.packet_id))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, Link(config(server.sockets[0].getsockname()[1]), log, timeout_s=5) as link:
        with pytest.raises(LinkError, match="answered with a"):
            if request_ == "subscribe":
                await link.subscribe([TOPIC])
            else:
                await link.publish(TOPIC, b"x", qos=1)


async def test_a_broker_disconnect_is_a_link_error_with_its_reason() -> None:
    goodbye = mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER).write()
    await expect_link_error(lambda w: w.write(goodbye), "SESSION_TAKEN_OVER")


def with_reason_string(packet: bytes, fixed: int, text: bytes) -> bytes:
    """`packet` as mqtt5 writes it (a one-byte remaining length, no properties) with a reason string
    property of raw bytes after its first `fixed` bytes, as a broken broker could send it."""
    props = bytes([0x1F]) + len(text).to_bytes(2, "big") + text
    body = packet[2:2 + fixed] + bytes([len(props)]) + props + packet[3 + fixed:]
    return bytes([packet[0], len(body)]) + body


@pytest.mark.parametrize("garbage, error", [
    (with_reason_string(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.SERVER_SHUTTING_DOWN)
                        .write(), 1, b"going \xff"),
     r"disconnected by the broker: SERVER_SHUTTING_DOWN \(its reason string, not UTF-8: going \\xff\)"),
    (with_reason_string(mqtt5.PubAckPacket(9, reason_code=mqtt5.PubAckReasonCode.NO_MATCHING_SUBSCRIBERS).write(),
                        3, b"\xfe"),
     r"malformed packet from the broker: a PUBACK whose reason string is not UTF-8: \\xfe"),
])
async def test_a_control_packet_whose_text_is_not_utf8_ends_the_link_without_a_panic(
        garbage: bytes, error: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """The reader panicked on a reason string not UTF-8 in a DISCONNECT or an acknowledgement: the link closed, but
    the journal showed Rust's panic trace and a UnicodeDecodeError, and a DISCONNECT's reason code was lost in
    'malformed packet: PanicException'. Now the reader never sees it: the link ends as before, with the reason
    code (a DISCONNECT) or the field, and the packet is counted by name."""
    unraisable: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    async with fake_broker(lambda w: w.write(garbage)) as port, Link(config(port), log) as link:
        with pytest.raises(LinkError, match=error):
            async with asyncio.timeout(10):
                await link.message()
    assert link.not_utf8 == {"DISCONNECT" if garbage[0] == 0xE0 else "PUBACK": 1}
    assert not unraisable and "panicked" not in capfd.readouterr().err


async def test_a_suback_whose_text_is_not_utf8_is_a_link_error_without_a_panic(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    unraisable: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket().write())
        async for packet in packets(reader):
            if isinstance(packet, mqtt5.SubscribePacket):
                suback = mqtt5.SubAckPacket(packet.packet_id, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE])
                writer.write(with_reason_string(suback.write(), 2, b"ok\xc3"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, Link(config(server.sockets[0].getsockname()[1]), log, timeout_s=5) as link:
        with pytest.raises(LinkError, match=r"a SUBACK whose reason string is not UTF-8: ok\\xc3"):
            await link.subscribe([TOPIC])
    assert link.not_utf8 == {"SUBACK": 1}
    assert not unraisable and "panicked" not in capfd.readouterr().err


async def test_a_silent_broker_is_a_link_error_after_one_and_a_half_keepalives() -> None:
    await expect_link_error(lambda w: None, "nothing from the broker", keepalive=1, answer_pings=False)


async def test_an_idle_link_stays_up_on_pings() -> None:
    async with fake_broker(lambda w: None) as port, Link(config(port, keepalive=1), log) as link:
        await asyncio.sleep(2.5)
        assert link.ready(10) == []
        await link.publish(TOPIC, b"q0", qos=0)  # still connected


async def test_a_flood_stops_the_reading_until_the_caller_has_taken_half() -> None:
    flood = mqtt5.PublishPacket(TOPIC, b"x" * 100).write() * 20_000  # QoS 0: no window holds it back
    async with fake_broker(lambda w: w.write(flood)) as port, Link(config(port), log, inbox_max=1000) as link:
        await asyncio.sleep(0.5)
        held = link.ready(100_000)
        assert 1000 <= len(held) < 1000 + 3000  # past the limit by at most what one read brought
        got = len(held)
        async with asyncio.timeout(10):
            while got < 20_000:  # taking them lets the rest in
                await link.message()
                got += 1 + len(link.ready(100_000))
        assert got == 20_000


async def test_a_subscribe_behind_a_flood_still_gets_its_suback() -> None:
    flood = mqtt5.PublishPacket(TOPIC, b"x" * 100, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=7).write() * 5_000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket(session_present=True).write() + flood)  # a returning session's queue
        subscribe = await reader.read(1024)
        packet, _ = mqtt5.read(memoryview(subscribe))
        assert isinstance(packet, mqtt5.SubscribePacket)
        writer.write(mqtt5.SubAckPacket(packet.packet_id, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE]).write())
        while await reader.read(1024):
            pass
        writer.close()  # as a broker does after the DISCONNECT: the link waits for it

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, Link(config(server.sockets[0].getsockname()[1]), log, inbox_max=500) as link:
        await link.subscribe([TOPIC], qos=1)  # within its timeout, though the queue is past inbox_max
        assert len(link.ready(100_000)) == 5_000


async def test_a_publish_awaiting_its_puback_does_not_lift_the_limit() -> None:
    """The gateway publishes a confirmation at QoS 1 after nearly every commit, so there is almost always a
    PUBACK awaited; the limit must hold meanwhile (it did not: 87,000 deliveries, 80 MB, in the bench)."""
    flood = mqtt5.PublishPacket(TOPIC, b"x" * 100).write() * 20_000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket().write())
        packet, _ = mqtt5.read(memoryview(await reader.read(1024)))
        assert isinstance(packet, mqtt5.PublishPacket) and packet.packet_id is not None
        writer.write(flood + mqtt5.PubAckPacket(packet.packet_id).write())  # the PUBACK behind the flood
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, Link(config(server.sockets[0].getsockname()[1]), log, inbox_max=1000) as link:
        publish = asyncio.create_task(link.publish(TOPIC + "/done", b"ranges", qos=1, retain=True))
        await asyncio.sleep(0.5)
        held = link.ready(100_000)
        assert 1000 <= len(held) < 1000 + 3000  # past the limit by at most what one read brought
        assert not publish.done()
        got = len(held)
        async with asyncio.timeout(10):
            while got < 20_000:  # the caller takes deliveries, and the PUBACK behind them comes in
                await link.message()
                got += 1 + len(link.ready(100_000))
            await publish
        assert got == 20_000


async def test_qos1_publishes_wait_within_the_brokers_receive_maximum() -> None:
    seen: list[int] = []  # message ids of the PUBLISHes the broker has read
    writers: list[asyncio.StreamWriter] = []
    answering = asyncio.Event()  # the broker acknowledges only once the test has looked

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket(receive_max=2).write())
        async for packet in packets(reader):
            if isinstance(packet, mqtt5.PublishPacket) and packet.packet_id is not None:
                seen.append(packet.packet_id)
                if answering.is_set():
                    writer.write(mqtt5.PubAckPacket(packet.packet_id).write())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, Link(config(server.sockets[0].getsockname()[1]), log) as link:
        sends = [asyncio.create_task(link.publish(f"{TOPIC}/{i}", b"x", qos=1)) for i in range(5)]
        await asyncio.sleep(0.3)
        assert len(seen) == 2  # the broker said two at a time; the other three wait in the link
        answering.set()
        writers[0].write(b"".join(mqtt5.PubAckPacket(i).write() for i in seen))
        async with asyncio.timeout(5):
            await asyncio.gather(*sends)
        assert len(seen) == 5
