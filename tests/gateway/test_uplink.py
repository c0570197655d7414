"""The uplink against a real Mosquitto as the district broker, with a district-side subscriber recording
what arrives: order rules, batching, outages, a throttled drain with a live alarm, TLS client certificates,
the disk budget reported upstream, and a SIGKILLed uplink process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway import district_wire
from gateway.message_decode import loads_one
from gateway.mqtt_link import Link
from gateway.outbox import Outbox
from gateway.site_config import BrokerConfig, TLSFiles
from gateway.store import open_store
from gateway.uplink import Uplink
from lifeline.virtual import recorder
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.faultlog import FaultLog
from protocol import district, message, senml, senml_resolve

SITE = "site-a"
T0 = 1_763_900_000.0
Key = tuple[Any, ...]


class Recorder(recorder.Recorder):
    """The district side: the site's recorder on a persistent session (it survives broker restarts), bodies
    as decoded, with this test's view of what arrived."""

    @property
    def got(self) -> list[tuple[str, Any]]:
        return [(e.kind, e.body) for e in self.entries()]

    @property
    def arrived(self) -> list[float]:
        return [e.t for e in self.entries()]

    def seen(self) -> list[Key]:
        """Every item in arrival order: ("alarm", id), ("state", n), ("dq", ev), ("tel", dev, seq)."""
        out: list[Key] = []
        for kind, body in self.got:
            if kind == district.TELEMETRY:
                out.extend(("tel", p["dev"], p["seq"]) for p in body["packs"])
                out.extend(("thin", s["dev"], s["seq_lo"], s["seq_hi"]) for s in body.get("thinned", []))
            elif kind == district.ALARM:
                out.append(("alarm", body["id"]))
            elif kind == district.DQ:
                out.append(("dq", body["ev"]))
            else:
                out.append((kind, body["n"]))
        return out

    def firsts(self) -> list[Key]:
        """Arrival order after de-duplication (QoS 1 is at least once), as the district would keep it."""
        return list(dict.fromkeys(self.seen()))

    async def until(self, done: Callable[[], bool], timeout: float = 30.0) -> bool:
        assert await super().until(done, timeout), f"timed out; {len(self.got)} messages so far"
        return True


@contextlib.asynccontextmanager
async def recording(port: int) -> AsyncIterator[Recorder]:
    rec = Recorder("127.0.0.1", port, SITE, raw=True, session="district-recorder")
    try:
        await rec.until(rec.subscribed.is_set, 10)
        yield rec
    finally:
        rec.close()


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[Uplink]:
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink
    finally:
        uplink.stop()
        await asyncio.wait_for(task, 40)


def district_broker(port: int, tls: TLSFiles | None = None, client_id: str = "gw-site-a-up") -> BrokerConfig:
    return BrokerConfig("127.0.0.1", port, client_id, None, None, tls, 30)


def commit(ob: Outbox) -> None:
    """What the ingest does at the end of a batch: its device messages into rows, then the commit."""
    ob.flush()
    ob.conn.commit()


def new_outbox(tmp_path: Path, budget: int = 1 << 30) -> Outbox:
    return Outbox(open_store(tmp_path / "store.db"), budget, thin_interval_s=60.0)


class Source:
    """What the ingest would put: numbered alarms, state items and telemetry, remembering their put order."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.n = 0
        self.alarms: list[Key] = []
        self.states: list[Key] = []
        self.tel: list[Key] = []

    def alarm(self) -> None:
        self.n += 1
        self.outbox.put_alarm({"id": f"a{self.n}", "ev": "raised", "level": "red"})
        self.alarms.append(("alarm", f"a{self.n}"))

    def state(self) -> None:
        self.n += 1
        self.outbox.put_state(district.UP_STATE, {"n": self.n, "st": "online"})
        self.states.append(("state", self.n))

    def telemetry(self, dev: str, t: float | None = None) -> None:
        self.n += 1
        self.outbox.put_telemetry(dev, self.n, 4, [{"n": "ch4", "u": "%LEL", "t": t or T0 + self.n, "v": 0.5},
                                                   {"n": "temp", "u": "Cel", "t": t or T0 + self.n, "v": 20}])
        self.tel.append(("tel", dev, self.n))

    def mixed(self, count: int) -> None:
        """Telemetry from three devices with alarms and state items interleaved, committed in batches."""
        for i in range(count):
            self.telemetry(f"dev-{i % 3}")
            if i % 17 == 5:
                self.alarm()
            if i % 11 == 3:
                self.state()
            if i % 50 == 49:
                commit(self.outbox)
        commit(self.outbox)

    def all(self) -> set[Key]:
        return set(self.alarms) | set(self.states) | set(self.tel)


def lane_order_holds(firsts: list[Key], src: Source) -> None:
    """Alarms, then state, then telemetry; each lane oldest first."""
    mine = [k for k in firsts if k in src.all()]
    assert mine == src.alarms + src.states + src.tel


async def test_backlog_drains_by_lane_then_age_in_batched_senml_packs(tmp_path: Path) -> None:
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        src = Source(ob)
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=7)  # before the puts: rows of 7
        src.mixed(300)
        async with recording(broker.port) as rec, running(uplink) as up:
            await rec.until(lambda: src.all() <= set(rec.seen()))
            lane_order_holds(rec.firsts(), src)
            tel = [body for kind, body in rec.got if kind == district.TELEMETRY]
            assert all(body["site"] == SITE and 1 <= len(body["packs"]) <= 7 for body in tel)
            pack = tel[0]["packs"][0]
            assert senml_resolve.resolve(pack["e"]) == [
                {"n": f"{pack['dev']}:ch4", "u": "%LEL", "t": T0 + pack["seq"], "v": 0.5},
                {"n": f"{pack['dev']}:temp", "u": "Cel", "t": T0 + pack["seq"], "v": 20}]
            assert pack["boot"] == 4
            await rec.until(lambda: sum(ob.depth().values()) == 0)  # deleted once PUBACKed
            assert up.sent_items == len(src.all()) and up.connected


async def test_live_telemetry_is_batched_by_max_items_or_max_delay(tmp_path: Path) -> None:
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        src = Source(ob)
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=50, max_delay_s=0.3)
        async with recording(broker.port) as rec, running(uplink):
            await rec.until(lambda: uplink.connected)
            for _ in range(3):
                src.telemetry("dev-1")
            commit(ob)
            await rec.until(lambda: len(rec.seen()) == 3)
            for _ in range(120):
                src.telemetry("dev-2")
            commit(ob)
            await rec.until(lambda: len(rec.seen()) == 123)
            # three readings waited for max_delay and went as one message; 120 as two full packs and the rest
            assert [len(body["packs"]) for _, body in rec.got] == [3, 50, 50, 20]
            assert rec.firsts() == src.tel


async def test_only_committed_rows_go_and_an_open_batch_holds_nothing_up(tmp_path: Path) -> None:
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        src = Source(ob)
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=5, max_delay_s=0.05)
        async with recording(broker.port) as rec, running(uplink):
            await rec.until(lambda: uplink.connected)
            ob.put_alarm({"id": "rolled-back"})  # the ingest's batch fails after this put ...
            ob.conn.rollback()
            src.alarm()
            for _ in range(3):
                src.telemetry("dev-1")
            commit(ob)
            ob.committed()
            ob.put_alarm({"id": "open"})  # ... and the next batch stays open for a while
            src.telemetry("dev-2")
            # committed rows go while that batch is open; its rows do not
            await rec.until(lambda: set(rec.seen()) == set(src.alarms) | set(src.tel[:3]))
            await asyncio.sleep(0.3)
            assert ("alarm", "open") not in rec.seen() and ob.conn.in_transaction
            commit(ob)
            await rec.until(lambda: ("alarm", "open") in rec.seen() and src.tel[3] in rec.seen())
            assert ("alarm", "rolled-back") not in rec.seen()
            await rec.until(lambda: sum(ob.depth().values()) == 0)


async def test_district_outage_loses_nothing_and_order_holds(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             fault_log: FaultLog) -> None:
    caplog.set_level(logging.INFO, "lifeline.gateway.uplink")
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        before = Source(ob)
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=20, drain_rate=400, backoff_initial_s=0.1,
                        backoff_max_s=0.4, tick_s=0.1)
        async with recording(broker.port) as rec, running(uplink):
            before.mixed(100)
            await rec.until(lambda: before.all() <= set(rec.seen()))
            broker.stop()
            await rec.until(lambda: not uplink.connected)
            during = Source(ob)
            during.n = 10_000
            during.mixed(1500)
            await asyncio.sleep(1.0)  # a few failed reconnects with backoff
            assert sum(ob.depth().values()) == len(during.all())
            broker.start()
            await rec.until(lambda: during.all() <= set(rec.seen()), timeout=60)
            assert before.all() <= set(rec.seen())
            lane_order_holds(rec.firsts(), during)
            await rec.until(lambda: sum(ob.depth().values()) == 0)
            assert uplink.connects >= 2
    # the backlog at reconnect (state and telemetry; alarms are never paced) was drained and logged
    drained = [r for r in caplog.records if r.getMessage() == "drain done"]
    bulk = len(during.states) + len(during.tel)
    assert drained and drained[-1].fields["backlog"] == bulk  # type: ignore[attr-defined]
    # PUBACKed by then: all but what was still in flight when the lane ran dry (32 publishes of 20 at most)
    assert drained[-1].fields["sent"] >= bulk - 32 * 20  # type: ignore[attr-defined]
    seen, items = rec.seen(), before.all() | during.all()
    fault_log.record("district broker stopped while the outbox fills, then started", injected=1, unit="outbox items",
                     sent=len(items), delivered=len(items & set(seen)),
                     duplicates=sum(k in items for k in seen) - len(items & set(seen)), where="district")


async def test_live_alarm_overtakes_a_throttled_drain(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "lifeline.gateway.uplink")
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        src = Source(ob)
        rate = 40.0
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=10, drain_rate=rate, tick_s=0.2)
        for _ in range(1000):
            src.telemetry("dev-0")
        commit(ob)
        async with recording(broker.port) as rec, running(uplink):
            await rec.until(lambda: len(rec.got) >= 10)
            assert uplink.draining and uplink.drain_progress() is not None
            src.alarm()
            commit(ob)
            await rec.until(lambda: ("alarm", "a1001") in rec.seen())
            at = next(i for i, (kind, _) in enumerate(rec.got) if kind == district.ALARM)
            await rec.until(lambda: len(rec.seen()) == 1001, timeout=60)
            # the alarm went at once: most of the backlog was still to come when it arrived
            assert len(rec.got) - at > 50
            # and the backlog never went faster than drain_rate messages per second
            tel_times = [t for (kind, _), t in zip(rec.got, rec.arrived, strict=True) if kind == district.TELEMETRY]
            assert tel_times[-1] - tel_times[0] >= (len(tel_times) - 1) / rate * 0.9
    progress = [r for r in caplog.records if r.getMessage() == "drain"]
    assert progress and all(r.fields["backlog"] == 1000 for r in progress)  # type: ignore[attr-defined]
    sent = [r.fields["sent"] for r in progress]  # type: ignore[attr-defined]
    assert sent == sorted(sent) and 0 < sent[-1] <= 1000


async def test_disk_budget_during_outage_thins_reports_and_keeps_every_alarm(tmp_path: Path) -> None:
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        src = Source(ob)
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=50, backoff_initial_s=0.1, backoff_max_s=0.3,
                        tick_s=0.1)
        async with recording(broker.port) as rec, running(uplink):
            await rec.until(lambda: uplink.connected)
            broker.stop()
            await rec.until(lambda: not uplink.connected)
            for k in range(600):  # ten devices every 5 s for 50 minutes of outage
                for d in range(10):
                    src.n += 1
                    ob.put_telemetry(f"dev-{d}", k, 1, [{"n": "level", "u": "m", "t": T0 + 5 * k, "v": k % 9}],
                                     now=T0 + 5 * k)
                    src.tel.append(("tel", f"dev-{d}", k))
                if k % 20 == 0:
                    src.alarm()
                commit(ob)
            full = ob.bytes_used()
            ob.budget_bytes = full // 3
            await rec.until(lambda: ob.thinned_msgs > 0 and ob.bytes_used() <= ob.budget_bytes * 1.1)
            broker.start()
            await rec.until(lambda: sum(ob.depth().values()) == 0, timeout=60)
            await rec.until(lambda: set(src.alarms) <= set(rec.seen()))

            def accounted() -> int:
                """Device messages that reached the district raw or inside a summary, or were counted as evicted."""
                raw = {(k[1], k[2]) for k in rec.seen() if k[0] == "tel"}
                thinned = {(s["dev"], q) for kind, msg in rec.got if kind == district.TELEMETRY
                           for s in msg.get("thinned", []) for q in range(s["seq_lo"], s["seq_hi"] + 1)}
                evicted: int = sum(e["msgs"] for kind, body in rec.got if kind == district.DQ for e in body["evicted"])
                return len(raw | thinned) + evicted

            # The outbox is empty once the broker has acked the last message; the recorder, at most 20 QoS 1
            # messages in flight, may still be catching up then. Every device message must be accounted for.
            await rec.until(lambda: accounted() >= len(src.tel))
            dq = [body for kind, body in rec.got if kind == district.DQ]
            assert dq and all(body["ev"] == "outbox-budget" for body in dq)
            assert any(msg.get("thinned") for kind, msg in rec.got if kind == district.TELEMETRY)
            assert accounted() == len(src.tel)
            assert sum(e["msgs"] for body in dq for e in body["thinned"]) == ob.thinned_msgs


def make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with the openssl command."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=district-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return {n: d / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls_port = free_port()
    conf = (f"listener {tls_port} 127.0.0.1\ncafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\n"
            f"keyfile {certs['server.key']}\nrequire_certificate true\n")
    with Mosquitto(conf) as broker:
        ob = new_outbox(tmp_path)
        src = Source(ob)
        src.alarm()
        commit(ob)
        no_cert = Uplink(ob, district_broker(tls_port, TLSFiles(certs["ca.crt"], None, None), "no-cert"), SITE,
                         backoff_max_s=0.2, connect_timeout_s=1.0)  # TLS 1.3: refused after the handshake
        async with recording(broker.port) as rec:
            async with running(no_cert):
                await rec.until(lambda: no_cert.last_error is not None)
                assert not no_cert.connected and ob.depth()["alarm"] == 1
            with_cert = Uplink(ob, district_broker(tls_port, TLSFiles(certs["ca.crt"], certs["client.crt"],
                                                               certs["client.key"])), SITE)
            async with running(with_cert):
                await rec.until(lambda: rec.seen() == src.alarms)
                await rec.until(lambda: ob.depth()["alarm"] == 0)


async def test_sigkilled_uplink_process_loses_nothing(tmp_path: Path, fault_log: FaultLog) -> None:
    worker = Path(__file__).with_name("uplink_worker.py")
    store = tmp_path / "store.db"
    n = 6000
    want = ({("tel", f"dev-{i % 10}", i // 10) for i in range(n)} | {("alarm", f"alarm-{i}") for i in range(0, n, 100)}
            | {("state", i) for i in range(0, n, 100)})

    def start(*extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(worker), str(store), str(broker.port), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    with Mosquitto() as broker:
        async with recording(broker.port) as rec:
            proc = start("--fill", str(n))
            kills = 0
            try:
                for fraction in (0.25, 0.6):
                    await rec.until(lambda f=fraction: len(set(rec.seen()) & want) >= f * len(want))  # type: ignore[misc]
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    kills += 1
                    assert not want <= set(rec.seen()), "the drain finished before the kill"
                    proc = start()
                await rec.until(lambda: want <= set(rec.seen()), timeout=90)
            finally:
                proc.kill()
                proc.wait(10)
    assert kills == 2
    keys = rec.seen()
    assert set(keys) == want  # nothing lost, nothing invented; duplicates only from unacked resends
    # at most the in-flight windows per kill: 8 bulk publishes of up to 20 entries (uplink_worker.py), and the
    # alarm lane's own 64, which the bound left out (400 duplicates in a loaded fresh-clone run, over 320)
    assert len(keys) - len(want) <= kills * (8 * 20 + 64)
    fault_log.record("uplink process SIGKILLed mid-drain and restarted", injected=kills, unit="outbox items",
                     sent=len(want), delivered=len(set(keys)), duplicates=len(keys) - len(set(keys)), where="district")


async def test_a_live_alarm_is_not_historical_after_the_clock_steps_back(tmp_path: Path) -> None:
    """Historical means queued before the session began, by queue order: compared by wall clock, an alarm
    queued after NTP stepped the clock back went up "hist", and the district opened no work order for it."""
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        ob.put_alarm({"n": 1}, now=time.time())  # before the session: historical
        commit(ob)
        async with recording(broker.port) as rec, running(Uplink(ob, district_broker(broker.port), SITE)) as up:
            await rec.until(lambda: up.connected and len(rec.got) >= 1)
            ob.put_alarm({"n": 2}, now=time.time() - 30.0)  # the clock stepped back 30 s
            commit(ob)
            ob.committed()
            await rec.until(lambda: len(rec.got) >= 2)
            assert [(body["n"], body.get("hist", False)) for _, body in rec.got] == [(1, True), (2, False)]


async def test_the_session_moves_on_from_the_stored_one_when_the_clock_is_set_back(tmp_path: Path) -> None:
    """A session is at least the wall clock in ms, and past the stored one: a clock set back an hour after the
    last connect must not give a number the district has had (it would ignore the birth)."""
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        up = Uplink(ob, district_broker(broker.port), SITE)
        ahead = int(time.time() * 1000) + 3_600_000
        ob.conn.execute("INSERT INTO uplink_session (one, n) VALUES (0, ?)", (ahead,))
        ob.conn.commit()
        async with recording(broker.port) as rec, running(up):
            await rec.until(lambda: up.connected)
            assert up.session == ahead + 1


async def test_a_clock_set_forward_renumbers_the_session_and_nothing_live_goes_up_historical(tmp_path: Path) -> None:
    """The clock set forward past the session's number (NTP on a box that connected on a clock behind): the
    uplink connects again with a new number, and what was queued during the session before is not backlog."""
    ahead = [0.0]
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        up = Uplink(ob, district_broker(broker.port), SITE, max_items=2, max_delay_s=60.0, tick_s=0.05,
                    clock=lambda: time.time() + ahead[0])
        async with recording(broker.port) as rec, running(up):
            await rec.until(lambda: up.connected)
            first = up.session
            for n in (1, 2):  # the first waits for the second: a pack of two, or 60 s
                ob.put_telemetry("dev-1", n, 4, [{"n": "ch4", "u": "%LEL", "t": time.time(), "v": 0.5}])
                commit(ob)
                ob.committed()
                if n == 1:
                    ahead[0] = 3600.0
                    await rec.until(lambda: up.connects == 2)
            await rec.until(lambda: any(kind == district.TELEMETRY for kind, _ in rec.got))
            assert up.session >= int((time.time() + 3600.0) * 1000) - 10_000 > first
            [pack] = [body for kind, body in rec.got if kind == district.TELEMETRY]
            assert [p["seq"] for p in pack["packs"]] == [1, 2] and "hist" not in pack


async def test_telemetry_waits_at_most_max_delay_when_the_clock_steps_back(tmp_path: Path) -> None:
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=50, max_delay_s=0.2)
        async with recording(broker.port) as rec, running(uplink) as up:
            await rec.until(lambda: up.connected)
            ob.put_telemetry("dev-1", 1, 4, [{"n": "ch4", "u": "%LEL", "t": time.time(), "v": 0.5}],
                             now=time.time() + 30.0)  # queued, then the clock stepped back 30 s: it waited 30 s
            commit(ob)
            ob.committed()
            await rec.until(lambda: any(kind == district.TELEMETRY for kind, _ in rec.got), 5)


async def test_the_uplink_outlives_a_store_that_cannot_delete_for_a_while(tmp_path: Path) -> None:
    """A PUBACKed row's delete failed (a full disk, stood in for by an authorizer); the retry at the reconnect
    failed too, out of the uplink's task, which ended: the daemon went on ingesting and never forwarded."""
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        ob.put_state(district.UP_STATE, {"n": 1})
        commit(ob)
        disk_bad = True

        def authorizer(action: int, *args: object) -> int:
            return sqlite3.SQLITE_DENY if disk_bad and action == sqlite3.SQLITE_DELETE else sqlite3.SQLITE_OK

        ob.conn.set_authorizer(authorizer)
        uplink = Uplink(ob, district_broker(broker.port), SITE, backoff_initial_s=0.1, backoff_max_s=0.2, tick_s=0.1)
        async with recording(broker.port) as rec, running(uplink):
            await rec.until(lambda: len(rec.got) >= 1)
            await asyncio.sleep(1.0)  # deletes refused, the session lost and retried meanwhile
            disk_bad = False
            ob.put_alarm({"n": 2})
            commit(ob)
            ob.committed()
            await rec.until(lambda: any(kind == district.ALARM for kind, _ in rec.got), 15)
        assert ob.depth() == {"alarm": 0, "state": 0, "telemetry": 0}


def reload(broker: Mosquitto) -> None:
    """Mosquitto reads its acl_file again on SIGHUP."""
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)


async def test_a_publish_the_district_broker_refuses_stays_in_the_outbox(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Mosquitto refuses a publish its access rules deny (a site certificate whose name is not the site id, an
    ACL without the site's topics) and drops it; under MQTT 3.1.1 it PUBACKs it all the same, so the uplink
    deleted the rows: every alarm, state item and reading went nowhere while the site read connected and sent."""
    caplog.set_level(logging.INFO, "lifeline.gateway.uplink")

    def said(what: str) -> list[dict[str, Any]]:
        return [r.fields for r in caplog.records if r.getMessage() == what]  # type: ignore[attr-defined]

    acl = tmp_path / "district.acl"
    readable = "topic read district/v1/#\n"
    acl.write_text(readable)  # nothing of the site's may be written: its birth is refused too
    with Mosquitto(f"acl_file {acl}") as broker:
        ob = new_outbox(tmp_path)
        src = Source(ob)
        src.alarm()
        src.state()
        for _ in range(5):
            src.telemetry("dev-1")
        commit(ob)
        held = {"alarm": 1, "state": 1, "telemetry": 5}
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_delay_s=0.05, backoff_initial_s=0.05,
                        backoff_max_s=0.1)
        async with recording(broker.port) as rec, running(uplink) as up:
            await rec.until(lambda: up.failed >= 3 or sum(ob.depth().values()) == 0)
            assert ob.depth() == held and up.connects == 0
            acl.write_text(readable + f"topic write district/v1/{SITE}/up/gateway\n")  # its birth alone goes
            reload(broker)
            await rec.until(lambda: up.connects >= 3)  # each session's publishes refused, and the session ended
            assert ob.depth() == held
            refused = [fields["error"] for fields in said("uplink publish refused")]
            assert refused and all("NOT_AUTHORIZED" in e for e in refused), refused
            assert sum("/up/alarm" in e for e in refused) == 1, refused  # once, not at each session
            assert said("uplink connected") == []  # not while each session's publishes are refused
            acl.write_text(readable + f"topic write district/v1/{SITE}/up/#\n")
            reload(broker)
            await rec.until(lambda: src.all() <= set(rec.seen()))
            await rec.until(lambda: sum(ob.depth().values()) == 0)
    assert said("uplink connected")  # once publishes are taken again


async def test_no_publish_is_larger_than_a_district_worker_takes(tmp_path: Path) -> None:
    """A district worker's link asks the broker for packets of at most 1 MiB, and Mosquitto drops a larger one
    for it after the gateway has had its PUBACK. A device message may be 4 KiB and `batch_max_items` 10,000, so
    a row, and a publish, of 600 such messages was 2.4 MB: every reading in it was lost at the district. Rows
    and publishes are bounded in bytes too (district.MAX_UP_BODY)."""
    messages = 600
    with Mosquitto() as broker:
        ob = new_outbox(tmp_path)
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=1000)  # before the puts: rows of 1000
        for seq in range(1, messages + 1):
            ob.put_telemetry("dev-1", seq, 4, [], sealed=bytes(4000))  # a 4 KB sealed device message
        commit(ob)
        worker = BrokerConfig("127.0.0.1", broker.port, "district-worker", None, None, None, 30)
        seqs: set[int] = set()
        sizes: list[int] = []
        async with Link(worker, logging.getLogger("test")) as link:  # as the worker's, MAX_PACKET
            await link.subscribe([f"{district.ROOT}/{SITE}/up/#"])
            async with running(uplink):
                while len(seqs) < messages:
                    message = await asyncio.wait_for(link.message(), 20)
                    link.ack(message)
                    sizes.append(len(message.payload))
                    seqs.update(p["seq"] for p in cbor2.loads(message.payload).get("packs", []))
        assert seqs == set(range(1, messages + 1))
        assert max(sizes) <= district.MAX_UP_BODY, sizes


def small_batches(ob: Outbox, batches: range) -> None:
    """Ingest batches of three device messages each, each row as the daemon stores it (the device's sealed
    message): a row each. A row of resolved readings alone is what a store made before 2026-12-04 holds, which
    goes up as the site's summaries (test_store_upgrade)."""
    for batch in batches:
        for seq in range(batch * 3 + 1, batch * 3 + 4):
            pack = senml.pack([senml.record("ch4", 0.5, "%LEL", T0 + seq)], bn="dev-1:")
            sealed = message.encode(message.data("dev-1", 4, seq, pack), bytes(32))
            ob.put_telemetry("dev-1", seq, 4, [{"n": "ch4", "u": "%LEL", "t": T0 + seq, "v": 0.5}], sealed=sealed)
        commit(ob)


def flip_a_bit(path: Path, rid: int) -> bytes:
    """One bit of a row's body changed in the store file, as a flash card's fault would; returns the body as
    it was. The first entry's map of 4 pairs then says 5."""
    conn = sqlite3.connect(path)
    (body,) = conn.execute("SELECT body FROM outbox WHERE id = ?", (rid,)).fetchone()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    assert body[0] == 0xA4 and data.count(body) == 1
    data[data.find(body)] ^= 0x01
    path.write_bytes(bytes(data))
    return bytes(body)


@pytest.mark.parametrize("case", ["backlog-after-a-restart", "live", "rows-of-a-store-made-before-checksums"])
async def test_a_row_a_storage_fault_changed_is_set_aside_and_its_publish_neighbours_arrive(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    """Rows of small batches go up several to a publish, spliced as stored. A bit a storage fault flipped in one
    row (a site box's flash card) made the whole live publish no CBOR item the district could decode: kept raw
    there, while the site deleted every row in it, so the readings leased beside the bad row were lost too.
    In a backlog sent after a restart (marked historical, which decodes the body) it raised out of the uplink,
    and no publish went at all. Live, the bit flips while the daemon runs: changed by another connection. Rows
    of a store made before checksums have none: theirs is checked by decoding them."""
    path = tmp_path / "store.db"
    ob = Outbox(open_store(path), 1 << 30)
    bad = 5  # the fifth row: seqs 13-15
    restarted = case != "live"
    if restarted:
        small_batches(ob, range(10))
        if case == "rows-of-a-store-made-before-checksums":
            ob.conn.execute("UPDATE outbox SET crc = NULL")
            ob.conn.commit()
        ob.close()
        ob.conn.close()
        body = flip_a_bit(path, bad)
        ob = Outbox(open_store(path), 1 << 30)  # the daemon starts again on the changed card
    got: list[bytes] = []

    async def district_worker(link: Link) -> None:
        while True:
            message = await link.message()
            link.ack(message)
            if message.topic.endswith("/up/telemetry"):
                got.append(message.payload)

    with Mosquitto() as broker:
        # nothing goes live before 30 messages wait, so the ten rows go as one publish
        uplink = Uplink(ob, district_broker(broker.port), SITE, max_items=30, max_delay_s=60.0)
        worker = BrokerConfig("127.0.0.1", broker.port, "district-worker", None, None, None, 30)
        async with Link(worker, logging.getLogger("test")) as link:
            await link.subscribe([f"{district.ROOT}/{SITE}/up/#"])
            reading = asyncio.create_task(district_worker(link))
            async with running(uplink), asyncio.timeout(20):
                if not restarted:
                    while not uplink.connected:
                        await asyncio.sleep(0.01)
                    small_batches(ob, range(5))
                    (body,) = ob.conn.execute("SELECT body FROM outbox WHERE id = ?", (bad,)).fetchone()
                    with sqlite3.connect(path) as other:
                        other.execute("UPDATE outbox SET body = ? WHERE id = ?", (b"\xa5" + body[1:], bad))
                    small_batches(ob, range(5, 10))
                while not (uplink.sent_msgs and len(got) == uplink.sent_msgs and sum(ob.depth().values()) == 0):
                    await asyncio.sleep(0.01)
            reading.cancel()
    seqs: set[int] = set()
    refused: list[str] = []
    for payload in got:
        try:  # as a district worker decodes a publish: one CBOR item exactly
            seqs.update(p["seq"] for p in loads_one(payload)["packs"])
        except ValueError as exc:
            refused.append(str(exc))
    assert refused == [] and seqs == set(range(1, 31)) - {13, 14, 15}
    said = [r.fields for r in caplog.records if r.getMessage() == "outbox row set aside"]  # type: ignore[attr-defined]
    reason = "undecodable" if case == "rows-of-a-store-made-before-checksums" else "checksum"
    assert [(f["id"], f["reason"]) for f in said] == [(bad, reason)]
    assert ob.corrupt_rows == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id, lane, entries, reason, body FROM outbox_corrupt").fetchall() == [
        (bad, 2, 3, reason, b"\xa5" + body[1:])]
    conn.close()


def test_a_backlog_body_marked_historical_reads_as_the_body_with_hist_true() -> None:
    """historical() splices the pair in rather than decoding and encoding each backlog publish (130 us for one
    of 100 device messages); what the district decodes must be the same."""
    entries = [district_wire.telemetry_entry(f"dev-{i}", i, 4, [{"n": "ch4", "t": T0 + i, "v": 0.5}], 0, None, False)
               for i in range(100)]
    tel = district_wire.telemetry(SITE, [b"".join(entries)], [], (100, 0))
    bodies = [tel, cbor2.dumps({}), cbor2.dumps({"id": "a1"}), cbor2.dumps({str(i): i for i in range(22)}),
              cbor2.dumps({str(i): i for i in range(23)}), cbor2.dumps({"hist": False, "n": 1})]
    for body in bodies:
        assert loads_one(district_wire.historical(body)) == {**loads_one(body), "hist": True}
    assert b"".join(entries) in district_wire.historical(tel)  # the entries go as stored
