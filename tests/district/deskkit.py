"""What the desk tests share: a real uvicorn serving the desk on a free port, a subscriber of what the desk
sends down, and a district with one site, its devices and three users."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Connection, Engine, Executable, event

from district import accounts, store, upstream
from district.desk import make_app
from district.live import CHANGES_TOPIC, Hub
from district.schema import alarms, work_orders
from gateway.message_decode import loads_one
from gateway.site_config import BrokerConfig
from lifeline.virtual.broker import Mosquitto, free_port
from protocol import message, senml
from protocol.district_verify import Verifier

PASSWORD = "desk-password-1"
USERS = {"viewer": "vera", "operator": "li.wei", "supervisor": "chen"}
DEVICE_KEYS = {"gas1": b"\x11" * 32, "gas2": b"\x12" * 32}
RISK_POINTS = {"s1": [{"id": "rp-valve-7", "class": "gas", "lat": 31.2305, "lon": 121.4740, "radius_m": 30.0}]}


def broker_config(broker: Mosquitto) -> BrokerConfig:
    return BrokerConfig(broker.host, broker.port, "district-test", None, None, None, 30)


@contextmanager
def desk_server(engine: Engine, broker: Mosquitto, **desk: Any) -> Iterator[str]:
    """The desk app under uvicorn in a thread, following the broker's change feed, with s1's device keys to check
    stored messages again; yields its base URL once the desk follows the feed (a page that connected sooner was
    redrawn by the reload at the subscription, at a moment no test chose). `desk`: more of make_app's arguments."""
    hub = Hub()
    app = make_app(engine, hub=hub, broker=broker_config(broker), risk_points=RISK_POINTS, verifier=verifier(), **desk)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started or hub.deaf:
        assert time.monotonic() < deadline and thread.is_alive(), "the desk did not start and follow its broker"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class DeadHost:
    """A TCP proxy on loopback to the desk at `url` whose far end can die without a word. `die()`: it stops
    passing anything on, either way, on the connections it has and on those it takes from then on, and closes none
    (no FIN, no RST), as a desk host that lost its power looks to a browser until TCP gives up; `restart()`: the
    host is back, its connections of before closed, new ones served."""

    def __init__(self, url: str) -> None:
        self._port = int(url.rsplit(":", 1)[1])
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self._life = 0  # a connection is served while the host lives the life it was made in
        self._dead = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def die(self) -> None:
        with self._lock:
            self._dead = True
            self._life += 1

    def restart(self) -> None:
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):  # one the far end closed already
                    s.shutdown(socket.SHUT_RDWR)  # or a thread blocked reading it would keep it open
                s.close()
            self._sockets.clear()
            self._dead = False

    def close(self) -> None:
        self._server.close()
        self.restart()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._sockets.append(client)
                if self._dead:
                    continue  # taken, never answered
                life = self._life
            try:
                upstream = socket.create_connection(("127.0.0.1", self._port))
            except OSError:  # the desk itself stopped
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pass, args=(a, b, life), daemon=True).start()

    def _pass(self, src: socket.socket, dst: socket.socket, life: int) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self._life != life:
                    return  # the host died: held, never passed on, nothing closed
                dst.sendall(data)
            if self._life == life:
                dst.shutdown(socket.SHUT_WR)

    def __enter__(self) -> DeadHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def announce(broker: Mosquitto, payload: bytes) -> None:
    """Publish a change notice on the real broker, as an ingest worker does."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-ingest")
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(CHANGES_TOPIC, payload).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


class Downlinks:
    """Everything published under district/v1/+/down/#, as (topic, payload)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-downlinks")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("district/v1/+/down/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def wait(self, topic: str, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, payload in self.got:
                if t == topic:
                    return payload
            time.sleep(0.02)
        raise AssertionError(f"nothing on {topic} within {timeout}s; got {self.got}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class HeldLock:
    """SQLite's write lock (or on PostgreSQL the rows `take` selects FOR UPDATE), held from a connection of the
    test's own until `beats` beats (the loop, or the desk, went on) came while another connection waited on it
    with a write, or until DEADLINE_S, which only a stalled loop reaches. Whether the desk went on beside the
    waiting write is then an order, which a loaded machine cannot break as it broke timed gaps."""

    DEADLINE_S = 8.0  # under SQLite's busy timeout (10 s), so a stalled loop's write still gets the lock

    def __init__(self, engine: Engine, beats: int = 5) -> None:
        self.engine, self.beats, self.beats_held = engine, beats, 0
        self.waiting = threading.Event()
        self.released = False
        self.holder = engine.connect()
        self._held = False
        self._mutex = threading.Lock()
        self._deadline = threading.Timer(self.DEADLINE_S, self.release)
        event.listen(engine, "before_cursor_execute", self._executing)

    def take(self, rows: Executable | None = None) -> None:
        self.holder.begin()  # on SQLite, BEGIN IMMEDIATE: the whole database's write lock
        if rows is not None:
            self.holder.execute(rows)
        self._held = True
        self._deadline.start()

    def _executing(self, conn: Connection, cursor: Any, statement: str, *rest: Any) -> None:
        if self._held and conn is not self.holder and statement.startswith(("BEGIN IMMEDIATE", "UPDATE", "INSERT")):
            self.waiting.set()

    def beat(self) -> None:
        with self._mutex:
            if self.released or not self.waiting.is_set():
                return
            self.beats_held += 1
            if self.beats_held < self.beats:
                return
        self.release()

    def release(self) -> None:
        with self._mutex:
            if self.released:
                return
            self.released = True
        self.holder.rollback()

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self._deadline.cancel()
        if self._deadline.is_alive():
            self._deadline.join()
        self.release()
        self.holder.close()
        event.remove(self.engine, "before_cursor_execute", self._executing)


def seed(engine: Engine, now: float) -> None:
    """Site s1 online with two gas devices, and one user of each role."""
    with engine.begin() as conn:
        store.gateway_state(conn, "s1", True, 1, received=now - 600)
        for i, dev in enumerate(("gas1", "gas2")):
            store.device_state(conn, "s1", {"dev": dev, "st": "online", "t": now - 500, "boot": 1, "batt": 3.9,
                                            "pos": [31.2301 + i * 0.0006, 121.4735 + i * 0.0009]},
                               received=now - 500)
        for role, name in USERS.items():
            accounts.add_user(conn, name, role, PASSWORD)


def alarm_body(alarm_id: str, ev: str, level: str | None, t_gw: float, **extra: Any) -> dict[str, Any]:
    return {"id": alarm_id, "ev": ev, "kind": "level", "dev": "gas1", "cls": "gas", "metric": "ch4", "level": level,
            "prev": None, "value": 60.0, "reading": 60.0, "rule": "gas.ch4", "rver": 1, "t_dev": t_gw - 0.5,
            "t_gw": t_gw, "resend": 0, "unit": "%LEL", "point": "rp-valve-7", **extra}


def closed_orders(engine: Engine, n: int, now: float) -> None:
    """`n` closed work orders of a year gone by, each with its cleared alarm, written in bulk: a district's
    history of orders, which no page should be sent whole."""
    year = 365 * 86400
    alarm_rows, order_rows = [], []
    for i in range(n):
        t = now - year + i * (year / max(n, 1)) / 2
        alarm_id = f"{i:032x}"
        alarm_rows.append({"id": alarm_id, "site": "s1", "dev": "gas1", "cls": "gas", "metric": "ch4",
                           "kind": "level", "level": None, "peak": "red", "peak_rank": 4, "state": "cleared",
                           "hist": False, "raised": t, "received": t, "acked": t + 60, "cleared": t + 600,
                           "t_last": t + 600})
        order_rows.append({"alarm": alarm_id, "site": "s1", "state": "closed", "team": "pipe 1", "opened": t,
                           "updated": t + 3600, "round": 1})
    with engine.begin() as conn:
        conn.execute(alarms.insert(), alarm_rows)
        conn.execute(work_orders.insert(), order_rows)


def verifier() -> Verifier:
    """The district's check of device messages, with s1's device keys, as district/config.verifier makes it."""
    return Verifier({}, DEVICE_KEYS, track=False, loads=loads_one)


def ingest(engine: Engine, dev: str, seq: int, t: float, values: dict[str, float], *, received: float,
           sealed: bool = True, spread: float = 0.0, boot: int = 1) -> None:
    """One data message of `dev` at s1 (at `boot`), sealed with its key, stored as a worker stores it: its entry
    checked by upstream.pack_entry, then store.add_messages, verified. Unsealed (a site that forwarded only the
    readings), its records are stored as they are, unverified. Its readings are read at t, t + spread, ..."""
    records = [senml.record(n, v, "%LEL" if n == "ch4" else "ppm", t=i * spread or None)
               for i, (n, v) in enumerate(values.items())]
    m = message.encode(message.data(dev, boot, seq, senml.pack(records, bn=dev + ":", bt=t)), DEVICE_KEYS[dev])
    checked = store.DeviceMessage(*upstream.pack_entry({"dev": dev, "seq": seq, "boot": boot, "m": m}, "test",
                                                       verifier()))
    with engine.begin() as conn:
        store.add_messages(conn, "s1", [checked if sealed else checked._replace(sealed=None)], received=received,
                           verified=sealed)
