"""The firmware MQTT client (firmware/lib/mqtt.py) under the real MicroPython unix port against a real
Mosquitto, checked from the host with paho-mqtt as the other client."""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from upy_support import SCRIPTS, build, env

from lifeline import upy
from lifeline.virtual.broker import Mosquitto, free_port

USER, PASSWORD = "dev1", "s3cret-dev1"
HOST_USER, HOST_PASSWORD = "gateway", "s3cret-gw"


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("mpy"), "mqtt", "mqtt_device")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that only admits the users of a mosquitto_passwd file."""
    pwfile = tmp_path / "passwd"
    for i, (user, password) in enumerate(((USER, PASSWORD), (HOST_USER, HOST_PASSWORD))):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(pwfile), user, password],
                       check=True, capture_output=True)
    with Mosquitto(extra_conf=f"password_file {pwfile}", anonymous=False) as b:
        yield b


class Device:
    """A MicroPython process running tests/firmware/upy/mqtt_device.py; stdout lines land in a queue."""

    def __init__(self, mpy_dir: Path, port: int, *, client_id: str = "d1", password: str = PASSWORD,
                 keepalive: int = 5, ca: Path | None = None, host: str = "127.0.0.1") -> None:
        args = [host, str(port), client_id, USER, password, str(keepalive)]
        if ca is not None:
            args.append(str(ca))
        self.proc = subprocess.Popen(upy.command("-m mqtt_device", *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=upy.environment(env(mpy_dir)))
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"device never said {prefix!r}; it said: {self.seen[-30:]}") from None
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def stats(self) -> dict[str, str]:
        self.send("stats")
        _, connects, resends, pings, oversize, error = self.expect("STATS").split(" ", 5)
        return {"connects": connects, "resends": resends, "pings": pings, "oversize": oversize, "error": error}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    started: list[Device] = []
    yield started
    for d in started:
        d.kill()


class Watcher:
    """A host-side paho subscriber; `durable` keeps its session (and queued QoS 1 messages) on the broker
    across a broker restart."""

    def __init__(self, broker: Mosquitto, topic: str = "t/#", durable: bool = False, name: str = "host") -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=not durable)
        self.client.username_pw_set(HOST_USER, HOST_PASSWORD)
        self.client.reconnect_delay_set(1, 1)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "host subscriber never subscribed"

    def expect(self, topic: str, payload: bytes, timeout: float = 10) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        seen: list[tuple[str, bytes]] = []
        while True:
            try:
                m = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {topic} {payload!r} on the broker; saw {seen}") from None
            seen.append((m.topic, bytes(m.payload)))
            if m.topic == topic and m.payload == payload:
                return m

    def drain(self) -> list[tuple[str, bytes]]:
        got = []
        while not self.messages.empty():
            m = self.messages.get()
            got.append((m.topic, bytes(m.payload)))
        return got

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for w in started:
        w.close()


def up(broker: Mosquitto, mpy_dir: Path, devices: list[Device], watchers: list[Watcher]) -> tuple[Watcher, Device]:
    """A host watching the broker, and a node connected to it."""
    host = Watcher(broker)
    watchers.append(host)
    dev = Device(mpy_dir, broker.port)
    devices.append(dev)
    dev.expect("UP 1")
    return host, dev


def test_auth_birth_qos1_subscribe_and_will(broker: Mosquitto, mpy_dir: Path, devices: list[Device],
                                            watchers: list[Watcher]) -> None:
    host, dev = up(broker, mpy_dir, devices, watchers)
    host.expect("t/d1/state", b"online")

    dev.send("pub t/d1/data hello-qos1 1")
    dev.expect("ACKED hello-qos1")
    assert host.expect("t/d1/data", b"hello-qos1").qos == 1

    host.client.publish("t/d1/cmd", b"set-interval", qos=1)
    dev.expect("RX t/d1/cmd set-interval")

    dev.kill()  # no DISCONNECT: the broker must publish the will
    will = host.expect("t/d1/state", b"offline", timeout=10)
    assert will.qos == 1
    late = Watcher(broker, "t/d1/state", name="late")
    watchers.append(late)
    assert late.expect("t/d1/state", b"offline").retain, "the will is retained for later subscribers"


def test_wrong_password_is_refused(broker: Mosquitto, mpy_dir: Path, devices: list[Device]) -> None:
    dev = Device(mpy_dir, broker.port, password="wrong")
    devices.append(dev)
    time.sleep(1.5)
    stats = dev.stats()
    assert stats["connects"] == "0" and "refused" in stats["error"], stats


def test_keepalive_pings_hold_an_idle_session(broker: Mosquitto, mpy_dir: Path, devices: list[Device],
                                              watchers: list[Watcher]) -> None:
    host = Watcher(broker)
    watchers.append(host)
    dev = Device(mpy_dir, broker.port, keepalive=1)  # the broker drops a silent client after 1.5 s
    devices.append(dev)
    dev.expect("UP 1")
    time.sleep(5)
    stats = dev.stats()
    assert stats["connects"] == "1" and int(stats["pings"]) >= 4, stats
    assert ("t/d1/state", b"offline") not in host.drain()
    dev.send("pub t/d1/data still-here 1")
    dev.expect("ACKED still-here")


def test_size_bound_both_ways(broker: Mosquitto, mpy_dir: Path, devices: list[Device],
                              watchers: list[Watcher]) -> None:
    host, dev = up(broker, mpy_dir, devices, watchers)
    dev.send("big")
    assert "max_packet" in dev.expect("REFUSED")
    read_away(host, dev, 2000)


def read_away(host: Watcher, dev: Device, size: int) -> None:
    """A publish of `size` bytes the node cannot take is read away, counted in oversize and acked, and the one
    after it arrives over the same link."""
    host.client.publish("t/d1/cmd", b"y" * size, qos=1)
    host.client.publish("t/d1/cmd", b"small-after-big", qos=1)
    dev.expect("RX t/d1/cmd small-after-big")
    stats = dev.stats()
    assert stats["oversize"] == "1" and stats["connects"] == "1", stats
    assert not any(line.startswith("RX") and "yyy" in line for line in dev.seen)


def test_a_publish_the_heap_has_no_room_for_is_read_away_and_the_link_kept(broker: Mosquitto, mpy_dir: Path,
                                                                           devices: list[Device],
                                                                           watchers: list[Watcher]) -> None:
    """A PUBLISH within max_packet that the heap cannot hold at the moment is read away, counted and acked, as
    one over max_packet is. Its MemoryError ended the link, and a node's persistent session handed it over
    again at each connect, where it failed the same way. Here 3,500 bytes against a hole of 2 KB in a heap
    otherwise full."""
    host, dev = up(broker, mpy_dir, devices, watchers)
    dev.send("hog 2048 4096")
    dev.expect("HOG")
    read_away(host, dev, 3500)


def test_broker_restart_message_published_during_outage_is_delivered(
        broker: Mosquitto, mpy_dir: Path, devices: list[Device], watchers: list[Watcher]) -> None:
    host = Watcher(broker, "t/d1/data", durable=True, name="durable-host")
    watchers.append(host)
    dev = Device(mpy_dir, broker.port)
    devices.append(dev)
    dev.expect("UP 1")
    dev.send("pub t/d1/data before 1")
    dev.expect("ACKED before")
    host.expect("t/d1/data", b"before")

    broker.stop()
    dev.expect("DOWN")
    dev.send("pub t/d1/data during-outage 1")
    time.sleep(2)  # several reconnect attempts fail meanwhile
    assert not any(line.startswith("ACKED during") for line in dev.seen)
    broker.start()
    dev.expect("UP 2", timeout=15)
    dev.expect("ACKED during-outage")
    host.expect("t/d1/data", b"during-outage", timeout=15)
    assert host.client.is_connected()


def test_silent_broker_is_detected_and_unacked_message_resent(
        broker: Mosquitto, mpy_dir: Path, devices: list[Device], watchers: list[Watcher]) -> None:
    """SIGSTOP leaves the TCP connection open but nothing answers: no PUBACK, no PINGRESP."""
    host = Watcher(broker, "t/d1/data")
    watchers.append(host)
    dev = Device(mpy_dir, broker.port, keepalive=2)
    devices.append(dev)
    dev.expect("UP 1")
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        dev.send("pub t/d1/data sent-into-silence 1")
        dev.expect("DOWN", timeout=10)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    dev.expect("ACKED sent-into-silence", timeout=20)
    host.expect("t/d1/data", b"sent-into-silence", timeout=10)
    stats = dev.stats()
    assert int(stats["resends"]) >= 1 and int(stats["connects"]) >= 2, stats


def test_clean_disconnect_does_not_fire_the_will_or_log_an_error(broker: Mosquitto, mpy_dir: Path,
                                                                 devices: list[Device],
                                                                 watchers: list[Watcher]) -> None:
    host = Watcher(broker, "t/d1/state")
    watchers.append(host)
    dev = Device(mpy_dir, broker.port)
    devices.append(dev)
    dev.expect("UP 1")
    host.expect("t/d1/state", b"online")
    dev.send("disconnect")
    dev.expect("BYE")
    dev.proc.wait(5)
    time.sleep(1)
    assert ("t/d1/state", b"offline") not in host.drain()
    said = dev.seen + [dev.lines.get() for _ in range(dev.lines.qsize())]
    assert not [line for line in said if line.startswith("mqtt:")], f"a clean disconnect is not an error: {said}"


class RawBroker:
    """A broker of a few lines on a socket: CONNACK, SUBACK (granted QoS 1), PUBACK and PINGRESP, and whatever
    raw packets a test sends down the newest connection, which a real broker would never send. `kick`: each
    link is closed once its first PUBLISH is acked, as a broker does when another client takes its client id.
    `suback_for`: a QoS 1 PUBLISH to that topic is answered with a SUBACK of its packet id, not a PUBACK."""

    def __init__(self, kick: bool = False, suback_for: bytes | None = None, address: tuple[str, int] = ("127.0.0.1", 0)
                 ) -> None:
        self.kick = kick
        self.suback_for = suback_for
        self.server = socket.create_server(address)
        self.port = self.server.getsockname()[1]
        self.subscribed: queue.Queue[socket.socket] = queue.Queue()  # a connection, once it has subscribed
        self.accepted: queue.Queue[float] = queue.Queue()  # when each connection came (time.monotonic)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.put(time.monotonic())
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f, contextlib.suppress(OSError):  # the client dropping the link
            while head := f.read(1):
                n, shift = 0, 0
                while True:
                    c = f.read(1)[0]
                    n |= (c & 0x7F) << shift
                    shift += 7
                    if not c & 0x80:
                        break
                body = f.read(n)
                kind = head[0] >> 4
                if kind == 1:
                    conn.sendall(b"\x20\x02\x00\x00")
                elif kind == 8:
                    conn.sendall(b"\x90\x03" + body[:2] + b"\x01")
                    self.subscribed.put(conn)
                elif kind == 3 and head[0] & 6:
                    tlen = int.from_bytes(body[:2], "big")
                    pid = body[2 + tlen:4 + tlen]
                    if body[2:2 + tlen] == self.suback_for:
                        conn.sendall(b"\x90\x03" + pid + b"\x01")
                    else:
                        conn.sendall(b"\x40\x02" + pid)
                    if self.kick:
                        return
                elif kind == 12:
                    conn.sendall(b"\xd0\x00")

    def close(self) -> None:
        with contextlib.suppress(OSError):  # stops listening: a close alone leaves a blocked accept() taking links
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


def raw_publish(topic: bytes, payload: bytes, first: int = 0x32, pid: int | None = 1) -> bytes:
    rest = len(topic).to_bytes(2, "big") + topic + (b"" if pid is None else pid.to_bytes(2, "big")) + payload
    assert len(rest) < 128
    return bytes((first, len(rest))) + rest


def test_a_publish_the_protocol_forbids_ends_the_link_and_reaches_no_handler(mpy_dir: Path,
                                                                              devices: list[Device]) -> None:
    """A QoS 1 PUBLISH with packet id 0 and one with both QoS bits set are malformed (MQTT 3.1.1 sections 2.3.1
    and 3.3.1.2): the link ends and the handler never sees them (they were delivered, and acked). A PUBLISH
    to a topic the client never subscribed is acked and dropped: the node's handler took any such topic
    for a command."""
    raw = RawBroker()
    try:
        dev = Device(mpy_dir, raw.port)
        devices.append(dev)
        dev.expect("UP 1")
        raw.subscribed.get(timeout=10).sendall(raw_publish(b"t/d1/cmd", b"pid-zero", pid=0))
        dev.expect("DOWN", timeout=3)
        dev.expect("UP 2")
        raw.subscribed.get(timeout=10).sendall(raw_publish(b"t/d1/cmd", b"qos-three", first=0x36, pid=5))
        dev.expect("DOWN", timeout=3)
        dev.expect("UP 3")
        conn = raw.subscribed.get(timeout=10)
        conn.sendall(raw_publish(b"t/d1/other", b"not-subscribed", pid=6) + raw_publish(b"t/d1/cmd", b"after"))
        dev.expect("RX t/d1/cmd after")
        stats = dev.stats()
        assert stats["connects"] == "3" and "not subscribed" in stats["error"], stats
        assert not [line for line in dev.seen if line.startswith("RX") and "after" not in line], dev.seen
    finally:
        raw.close()


def test_a_packet_a_broker_never_sends_a_client_ends_the_link_and_is_said(mpy_dir: Path,
                                                                         devices: list[Device]) -> None:
    """A PUBREL (the QoS 2 flow the client never takes part in), an UNSUBACK (it never unsubscribes), a CONNACK
    in the middle of a session, and a PUBACK with flags set (MQTT 3.1.1 section 2.2.2) are a broken broker's: the
    client ignored any of them short enough unsaid, and went on with the link. Each now ends it, with the
    packet's type byte in the log and last_error, as a longer one did."""
    raw = RawBroker()
    try:
        dev = Device(mpy_dir, raw.port)
        devices.append(dev)
        dev.expect("UP 1")
        for n, packet in enumerate((b"\x62\x02\x00\x01", b"\xb0\x02\x00\x01", b"\x20\x02\x00\x00",
                                    b"\x42\x02\x00\x01"), 2):
            raw.subscribed.get(timeout=10).sendall(packet)
            said = dev.expect("mqtt: MQTTError: unexpected packet")
            assert said.endswith(f"0x{packet[0]:02x} of 2 bytes"), said
            dev.expect(f"UP {n}")
    finally:
        raw.close()


def test_a_suback_does_not_acknowledge_a_publish(mpy_dir: Path, devices: list[Device]) -> None:
    """The reader took a PUBACK or a SUBACK for whatever waited under its packet id: a SUBACK (granted QoS 1)
    with a QoS 1 publish's id ended that publish as acknowledged, and the node's flash queue would forget a
    record no broker had taken. The ids come from one pool, so a conforming broker never sends that; a broker's
    error, or an ack left over from a link's earlier packets, did. Now an ack of the other kind is no answer:
    the publish is sent again with DUP, as after any ack that does not come."""
    raw = RawBroker(suback_for=b"t/d1/data")
    try:
        dev = Device(mpy_dir, raw.port)
        devices.append(dev)
        dev.expect("UP 1")
        dev.send("pub t/d1/data kept 1")
        time.sleep(2.5)  # two ack timeouts (mqtt_device's ack_timeout is 1 s)
        dev.send("pub t/d1/other after 1")
        dev.expect("ACKED after")
        assert not [line for line in dev.seen if line == "ACKED kept"], dev.seen
        assert int(dev.stats()["resends"]) >= 1
    finally:
        raw.close()


@pytest.mark.parametrize("hole", [256, 512])
def test_a_link_that_ends_while_the_heap_is_short_is_rebuilt_once_it_is_not(mpy_dir: Path, devices: list[Device],
                                                                            hole: int) -> None:
    """The link ends while the heap is full but for a small hole, which stays so for 2 s. The supervisor ended
    with a MemoryError where nothing caught it (closing the socket at the link's end with a 256-byte hole,
    printing the reconnect's error with a 512-byte one): the node then sampled on and fed its watchdog, but never
    reconnected, and its readings piled up in flash. Now it retries as after a failed connect."""
    raw = RawBroker()
    try:
        dev = Device(mpy_dir, raw.port)
        devices.append(dev)
        dev.expect("UP 1")
        conn = raw.subscribed.get(timeout=10)
        dev.send(f"hog {hole} 512 2")
        dev.expect("HOG")
        conn.shutdown(socket.SHUT_RDWR)
        dev.expect("UNHOG")
        dev.expect("UP 2")
        assert not [line for line in dev.seen if "Task exception" in line], dev.seen
    finally:
        raw.close()


def test_a_link_the_broker_ends_at_once_is_retried_with_backoff(mpy_dir: Path, devices: list[Device]) -> None:
    """A broker that takes every connect and closes the link right after (another node with the same client
    id, say): the client backs off as after a refused connect, 50-100 ms, then twice that up to the 1 s most
    (mqtt_device's backoff=(0.1, 1)), some 6 connects in 3 s. It reconnected at once, 30 or more times."""
    raw = RawBroker(kick=True)
    try:
        dev = Device(mpy_dir, raw.port)
        devices.append(dev)
        dev.expect("UP 1")
        time.sleep(3)
        stats = dev.stats()
        assert 3 <= int(stats["connects"]) <= 10, stats
    finally:
        raw.close()


def test_a_link_that_lasted_is_reconnected_after_a_random_wait(mpy_dir: Path, devices: list[Device]) -> None:
    """A broker's restart ends every node's link in the same moment. The client reconnected at once after a link
    that had lasted, so a site's thousand nodes came back in one burst (CONNECTs, TLS handshakes, births and
    resent backlogs together). Now it waits the first backoff step, drawn from [d/2, d]: 50-100 ms here
    (mqtt_device's backoff=(0.1, 1)), a link counting as lasted after the 1 s most."""
    raw = RawBroker()
    try:
        dev = Device(mpy_dir, raw.port)
        devices.append(dev)
        raw.accepted.get(timeout=10)
        for n in (1, 2, 3):
            dev.expect(f"UP {n}")
            conn = raw.subscribed.get(timeout=10)
            time.sleep(1.5)  # past the 1 s most: the link has lasted
            ended = time.monotonic()
            conn.shutdown(socket.SHUT_RDWR)
            waited = raw.accepted.get(timeout=10) - ended
            assert waited >= 0.045, f"reconnect {n} came {waited * 1000:.0f} ms after the link ended"
        dev.expect("UP 4")
    finally:
        raw.close()


@pytest.fixture(scope="module")
def dns_mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mqtt_device over a socket module whose getaddrinfo asks a site DNS server the test controls."""
    out = build(tmp_path_factory.mktemp("mpy-dns"), "mqtt", "mqtt_device")
    upy.compile_module(SCRIPTS / "dns_site.py", out / "socket.mpy")
    return out


def test_a_reconnect_needs_no_dns_and_a_broker_that_moved_is_looked_up_again(dns_mpy_dir: Path,
                                                                              devices: list[Device]) -> None:
    """The client looked the broker's name up at every reconnect (asyncio.open_connection's getaddrinfo), which
    blocks the whole node, unfed and not sampling, for as long as lwIP retries a DNS server that does not answer:
    with the site's DNS away, a node whose link dropped never reached its broker again though its address had not
    changed, and each try held its loop for seconds. Now the address is kept from the first connect; it is looked
    up again only once a connect to it has failed (the broker moved)."""
    raw = RawBroker()
    moved = None
    try:
        dev = Device(dns_mpy_dir, raw.port, host="broker.site")
        devices.append(dev)
        dev.expect("LOOKUP broker.site")
        dev.expect("UP 1")
        dev.send("dns dead")
        dev.expect("DNS dead")
        raw.subscribed.get(timeout=10).shutdown(socket.SHUT_RDWR)
        dev.expect("UP 2", timeout=5)
        assert [line for line in dev.seen if line.startswith("LOOKUP")] == ["LOOKUP broker.site"], dev.seen
        # The broker moves to another address, which the DNS server, back, now gives.
        moved = RawBroker(address=("127.0.0.2", raw.port))
        dev.send("dns 127.0.0.2")
        dev.expect("DNS 127.0.0.2")
        raw.close()
        raw.subscribed.get(timeout=10).shutdown(socket.SHUT_RDWR)
        dev.expect("LOOKUP broker.site", timeout=10)
        dev.expect("UP 3", timeout=10)
        moved.subscribed.get(timeout=10)
    finally:
        raw.close()
        if moved is not None:
            moved.close()


def make_tls(out: Path) -> tuple[Path, Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, and a second CA that signed nothing."""
    def sh(*args: str) -> None:
        subprocess.run(args, cwd=out, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    sh("openssl", "req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (out / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "srv.pem", "-days", "2", "-extfile", "ext")
    sh("openssl", "x509", "-in", "ca.pem", "-outform", "der", "-out", "ca.der")
    sh("openssl", "req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj",
       "/CN=other CA")
    sh("openssl", "x509", "-in", "other.pem", "-outform", "der", "-out", "other.der")
    return out / "ca.der", out / "srv.pem", out / "srv.key", out / "other.der"


def test_tls_with_a_verified_server_certificate(tmp_path: Path, mpy_dir: Path, devices: list[Device]) -> None:
    """A server certificate from another CA is refused at every try, and said once with its reason: the TLS
    error surfaces in the CONNECT's send, whose "send failed" was printed after it, so the two lines alternated
    and both were printed again at every retry, and the health figures kept "send failed", not the reason."""
    ca, cert, key, other = make_tls(tmp_path)
    tls_port = free_port()
    conf = f"listener {tls_port} 127.0.0.1\ncafile {tmp_path / 'ca.pem'}\ncertfile {cert}\nkeyfile {key}\n"
    with Mosquitto(extra_conf=conf) as broker:
        good = Device(mpy_dir, tls_port, ca=ca)
        bad = Device(mpy_dir, tls_port, client_id="d2", ca=other)
        devices.extend([good, bad])
        good.expect("UP 1", timeout=15)
        good.send("pub t/d1/data over-tls 1")
        good.expect("ACKED over-tls")
        deadline = time.monotonic() + 20  # good's one connection and three of bad's tries
        while broker.log_path.read_text().count("New connection") < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = bad.stats()
        assert stats["connects"] == "0", "a server certificate from an unknown CA must be refused"
        assert "not correctly signed by the trusted CA" in stats["error"], stats
        said = [line for line in bad.seen if line.startswith("mqtt:")]
        assert said == ["mqtt: ValueError: "], bad.seen  # the reason is on the next line, once
