"""The district's side of a virtual site: what reaches the district broker, kept with its receipt time.

Tests, the bench (hil_tests/), the demo and bench/ all judge a site by what arrived upstream, so they share
one record of it (`Recorder`, its `DistrictLog` of `Entry`s) instead of each subscribing its own way. The
benchmark measures throughput instead and must take little CPU from what it measures: `CountingRecorder`
counts arrivals over the raw wire client (lifeline/virtual/wire.py) without keeping them.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway import district_wire
from lifeline.virtual import wire
from protocol import district as dtopics
from protocol import senml_resolve
from protocol.district_verify import Verifier, VerifyError

POLL_S = 0.05  # how often `wait` and `until` look again
ACK_AFTER_S = 2.0  # with ack_alarms, how long after an alarm arrives its ack goes: an officer reads it first


@dataclass(frozen=True)
class Entry:
    t: float  # district receipt, Unix seconds
    kind: str  # uplink kind (protocol.district UP kinds)
    body: Any


def replace_whole(path: Path, data: bytes) -> None:
    """`data` written beside `path` and renamed over it: a tool reading the record or a demo report (rewritten
    after each pass under --forever) finds the last one or this one whole, never half, and a write the disk
    cannot take leaves the last one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DistrictLog:
    """Everything the district received, in receipt order. By default telemetry packs are kept with resolved
    records and bodies made JSON-able (the demo's district.jsonl); `raw` keeps bodies as decoded, for tests
    that check the wire itself."""

    def __init__(self, raw: bool = False) -> None:
        self.raw = raw
        self.entries: list[Entry] = []

    def add(self, t: float, kind: str, body: Any) -> Entry:
        if not self.raw:
            if kind == dtopics.TELEMETRY and isinstance(body, Mapping):
                body = {"packs": [_resolved(p) for p in body.get("packs", ())],
                        "thinned": len(body.get("thinned", ()))}
            body = _jsonable(body)
        entry = Entry(t, kind, body)
        self.entries.append(entry)
        return entry

    def save(self, path: Path) -> None:
        replace_whole(path, "".join(json.dumps({"t": e.t, "kind": e.kind, "body": e.body}, separators=(",", ":"))
                                    + "\n" for e in self.entries).encode())

    @classmethod
    def load(cls, path: Path) -> DistrictLog:
        log = cls()
        for line in path.read_text().splitlines():
            item = json.loads(line)
            log.entries.append(Entry(item["t"], item["kind"], item["body"]))
        return log

    def of(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]

    def alarms(self) -> list[Entry]:
        return self.of(dtopics.ALARM)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _resolved(pack: Any) -> dict[str, Any]:
    """An upstream pack with its SenML records resolved (names "dev:metric" split into the metric)."""
    if not isinstance(pack, Mapping):
        return {"dev": None, "records": [], "error": "not a map"}
    dev = pack.get("dev")
    try:
        records = senml_resolve.resolve(pack.get("e"))
    except ValueError as exc:
        return {"dev": dev, "seq": pack.get("seq"), "records": [], "error": str(exc)}
    out = []
    for rec in records:
        name = str(rec.get("n", ""))
        rec = dict(rec)
        rec["metric"] = name.split(":", 1)[1] if ":" in name else name
        out.append(rec)
    return {"dev": dev, "seq": pack.get("seq"), "boot": pack.get("boot"), "records": out}


class Recorder:
    """A district application on one site: subscribes to the site's whole uplink and logs every message
    with its receipt time, and publishes on the site's downlink (`send`).

    Its network loop is paho's own thread, so threads wait on it with `wait` and asyncio tests with `until`,
    neither blocking it. `ack_alarms` stands in for the duty officer where no district runs (the HIL bench, the
    demo's live view): every raised or escalated alarm, and every resend, is acknowledged ACK_AFTER_S after it
    arrived, at the step it arrived with, as an officer's click at the desk is. An escalation meanwhile is not
    covered by that ack (the gateway re-sends it) but by its own, ACK_AFTER_S after it arrived. A `session` name
    makes the subscription persistent, so nothing is lost while the district broker restarts: the recorder
    reconnects by itself.

    Publishes come sealed by the site, with each device's own sealed message inside telemetry
    (protocol/district_verify.py). With a `verifier` every seal is checked: a publish or a pack entry that
    fails is kept out of the log and in `refused` (reason, detail), and `verifier.missing()` names the
    sequence numbers that never arrived. Either way each pack entry is handed over as before the seal,
    {"dev", "seq", "boot", "e"} (and "pri"), "e" the upstream pack with the gateway's resolved times."""

    def __init__(self, host: str, port: int, site: str, auth: tuple[str, str] | None = None, *,
                 ack_alarms: bool = False, on_entry: Callable[[Entry], None] | None = None, raw: bool = False,
                 session: str | None = None, verifier: Verifier | None = None) -> None:
        self.site = site
        self.verifier = verifier
        self.refused: list[tuple[str, str]] = []
        self.log = DistrictLog(raw)
        self.lock = threading.Lock()
        self.errors = 0  # messages that were not the uplink's CBOR
        self.acks = 0
        self.subscribed = threading.Event()
        self._on_entry = on_entry
        self._ack_alarms = ack_alarms
        self._timers: list[threading.Timer] = []  # acks to come (ACK_AFTER_S)
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=session or f"district-{time.time_ns()}",
                                   clean_session=session is None)
        if auth is not None:
            self._client.username_pw_set(*auth)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: object, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(f"{dtopics.ROOT}/{self.site}/up/#", qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, rcs: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        try:
            _, kind = dtopics.parse_up(msg.topic)
            if self.verifier is not None:
                _, _, body = self.verifier.publish(msg.topic, msg.payload)
            else:
                body = cbor2.loads(unsealed(bytes(msg.payload)))
            if kind == dtopics.TELEMETRY and isinstance(body, dict):
                body = dict(body, packs=[p for p in map(self._entry, body.get("packs", ())) if p is not None])
        except VerifyError as exc:
            self.refused.append((exc.reason, str(exc)))
            return
        except (ValueError, cbor2.CBORDecodeError):
            self.errors += 1
            return
        with self.lock:
            entry = self.log.add(now, kind, body)
        if (self._ack_alarms and kind == dtopics.ALARM and isinstance(body, dict)
                and (body.get("ev") in ("raised", "escalated") or body.get("resend"))):
            ack = {"id": body.get("id"), "step": body.get("step")}  # what it saw: not an escalation since
            timer = threading.Timer(ACK_AFTER_S, self._ack, (ack,))
            timer.daemon = True
            with self.lock:
                self._timers = [t for t in self._timers if t.is_alive()] + [timer]
            timer.start()
        if self._on_entry is not None:
            self._on_entry(entry)

    def _ack(self, ack: dict[str, Any]) -> None:
        with self.lock:  # counted first: a site can hear the ack before this thread runs again
            self.acks += 1
        self._client.publish(dtopics.down(self.site, dtopics.ALARM_ACK), cbor2.dumps(ack), qos=1)

    def _entry(self, entry: Any) -> dict[str, Any] | None:
        """A pack entry as it read before the device's message went inside: None when it fails verification."""
        if self.verifier is None and (not isinstance(entry, dict) or "m" not in entry):
            return cast(dict[str, Any], entry)
        try:
            records = (district_wire.entry_records(cast(district_wire.TelemetryEntry, entry))
                       if self.verifier is None else self.verifier.entry(entry))
        except VerifyError as exc:
            self.refused.append((exc.reason, str(exc)))
            return None
        out = {"dev": entry["dev"], "seq": entry["seq"], "boot": entry["boot"],
               "e": district_wire.senml_pack(entry["dev"], records)}
        if "pri" in entry:
            out["pri"] = entry["pri"]
        return out

    def entries(self, kind: str | None = None, since: float = 0.0) -> list[Entry]:
        """What has arrived (of one kind) since `since`, Unix seconds, in receipt order. The gateway's own
        births and deaths (kind `gateway`) are listed only when asked for by kind: they are about the link,
        not the site's traffic that every other user counts."""
        with self.lock:
            found = list(self.log.entries)
        return [e for e in found if e.t >= since and (e.kind == kind if kind else e.kind != dtopics.GATEWAY)]

    def save(self, path: Path) -> None:
        with self.lock:
            self.log.save(path)

    def send(self, kind: str, body: Any, timeout: float = 10.0) -> None:
        """Publish on the site's downlink (QoS 1) as the district application does, once the broker has it."""
        self._client.publish(dtopics.down(self.site, kind), cbor2.dumps(body), qos=1).wait_for_publish(timeout)

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll `done` from a thread until it holds (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """`wait` for asyncio: the event loop runs on while the district is awaited."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    def close(self) -> None:
        with self.lock:
            for timer in self._timers:
                timer.cancel()
        self._client.loop_stop()
        self._client.disconnect()


# Tallies one arriving message (topic, payload) for the benchmark that owns the recorder.
Counter = Callable[[str, bytes], object]


class CountingRecorder:
    """Counts what arrives on one topic filter, and when, for benchmarks: a QoS 1 subscription over the raw
    wire client, so the recorder takes little CPU from what it measures."""

    def __init__(self, host: str, port: int, topic: str, count: Counter,
                 on_message: Callable[[str, bytes, float], None] | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.mqtt_messages = 0
        self._count = count
        self._hook = on_message
        self._lock = threading.Lock()
        self.errors: list[str] = []  # messages the count function or the hook failed on
        self._sub = wire.Subscriber(host, port, f"recorder-{time.time_ns()}", topic, self._on_message, auth)
        self.subscribed = self._sub.subscribed  # set once the broker has granted the subscription

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._take(topic, payload)
        except Exception as exc:  # the reader thread would die on it and silently stop counting
            self.errors.append(f"{topic}: {exc!r}")

    def _take(self, topic: str, payload: bytes) -> None:
        now = time.monotonic()
        if topic.count("/") == 4:  # a gateway's own publish (not a bridge's): its body, from inside the seal
            payload = unsealed(payload)
        self._count(topic, payload)
        with self._lock:
            self.mqtt_messages += 1
        if self._hook:
            self._hook(topic, payload, now)

    def close(self) -> None:
        self._sub.close()


def unsealed(payload: bytes) -> bytes:
    """The body inside a site-sealed publish (COSE_Mac0, tag 17), unverified; a bare body as it is."""
    if payload[:1] != b"\xd1":
        return payload
    inner: bytes = cbor2.loads(payload).value[2]
    return inner
