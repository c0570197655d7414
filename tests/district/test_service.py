"""`lifeline district` as shipped, on SQLite: the supervisor runs a worker and the desk; an account made with
`--add-user` logs in; a site's red alarm reaches the desk's API and the Prometheus endpoint, and the device
message behind it checks again on the desk with district.toml's keys; SIGTERM stops everything with status 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from lifeline.virtual import leftovers
from lifeline.virtual.broker import free_port
from lifeline.virtual.district import LEAST_HASH_COST, DistrictProcess, desk_with_feed, write_config
from lifeline.virtual.site import GatewayProcess, Site, environment, lifeline_cmd, metrics, reading

ROOT = Path(__file__).resolve().parents[2]


def until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def test_the_service_serves_a_sites_alarm_on_the_desk_and_in_metrics(tmp_path: Path) -> None:
    # the site's devices in a devices file, which the gateway and the district (for the device keys) both read
    s = Site(tmp_path / "site", tls=False, devices_csv=True)
    s.add("gas1", "gas")
    s.start()
    desk_port, metrics_port = free_port(), free_port()
    conf = write_config(s, tmp_path / "district.toml", database="district.sqlite", desk_port=desk_port)
    conf.write_text(conf.read_text().replace("[metrics]\nport = 0", f"[metrics]\nport = {metrics_port}")
                    + "\n[accounts]\nhash_memory_kib = 19456\nhash_time_cost = 2\n")
    added = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--add-user", "li.wei", "--role",
                            "operator"], input="duty-password-1\n", capture_output=True, text=True,
                           env=environment(), cwd=ROOT)
    assert added.returncode == 0, added.stderr
    bad = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--add-user", "li.wei"],
                         input="duty-password-2\n", capture_output=True, text=True, env=environment(), cwd=ROOT)
    assert bad.returncode == 2 and "exists" in bad.stderr
    gw = GatewayProcess(s).start()
    district = DistrictProcess(conf).start()
    try:
        asyncio.run(gw.ready())
        district.wait_log("desk-started")
        district.wait_subscribed()

        async def red() -> None:
            async with s.device_client("gas1") as c:
                for _ in range(2):
                    topic, payload, _ = s.data("gas1", [reading("ch4", 60.0, "%LEL")])
                    await c.publish(topic, payload, qos=1)

        asyncio.run(red())
        base = f"http://127.0.0.1:{desk_port}"
        until(lambda: _reachable(base), 20, "the desk answers")
        with httpx.Client(base_url=base) as web:
            assert web.post("/api/login", json={"user": "li.wei", "password": "duty-password-1"}).status_code == 200
            # --add-user hashed at district.toml's cost, and the desk, at the same cost, had nothing to rehash
            with sqlite3.connect(tmp_path / "district.sqlite") as db:
                assert "$m=19456,t=2," in db.execute("SELECT pw_hash FROM users").fetchone()[0]

            def board() -> list[dict[str, object]]:
                got: list[dict[str, object]] = web.get("/api/alarms").json()
                return got

            until(lambda: any(a["level"] == "red" and a["dev"] == "gas1" for a in board()), 30, "the red alarm")
            red_alarm = next(a for a in board() if a["level"] == "red")
            csrf = web.get("/api/me").json()["csrf"]
            acked = web.post(f"/api/alarms/{red_alarm['id']}/ack", headers={"X-CSRF-Token": csrf})
            assert acked.status_code == 200, acked.text

            def behind() -> list[dict[str, object]]:
                got: list[dict[str, object]] = web.get(f"/api/alarms/{red_alarm['id']}/messages").json()["messages"]
                return got

            # the device message behind it, as the gateway forwarded it, checked again with district.toml's keys
            until(behind, 10, "the message behind the red alarm stored")
            first = behind()[0]
            assert first["verified"] is True and first["sealed"] is True
            check = web.get(f"/api/messages/{first['id']}/check").json()
            assert check["verdict"] == "match", check
        until(lambda: any(m.name == "lifeline_district_alarms_open" and m.labels.get("level") == "red"
                          and m.value == 1 for m in metrics(metrics_port)), 10, "red in the metrics")
        until(lambda: [m.value for m in metrics(metrics_port) if m.name == "lifeline_district_messages_total"]
              == [2.0], 10, "the two messages counted (telemetry goes after alarms)")
        online = [m.value for m in metrics(metrics_port) if m.name == "lifeline_district_sites_online"]
        assert online == [1.0]
        # the seeds' response times as Prometheus histograms, per colour and per site
        got = metrics(metrics_port)

        def hist(measure: str, by: str, key: str) -> dict[str, float]:
            return {m.name.rsplit("_", 1)[1] + m.labels.get("le", ""): m.value for m in got
                    if m.name.startswith("lifeline_district_response_seconds_") and m.labels.get("measure") == measure
                    and m.labels.get("by") == by and m.labels.get("key") == key}

        ack = hist("alarm_ack", "colour", "red")
        assert ack["count"] == 1 and ack["bucket+Inf"] == 1 and 0 <= ack["sum"] < 60, ack
        assert hist("alarm_ack", "site", s.id)["count"] == 1
        sample = hist("sample_desk", "site", s.id)
        assert sample["count"] == 2 and sample["bucket1.0"] == 2, "two readings, each on the desk within 1 s"
    finally:
        code = district.stop()
        gw.kill()
        s.stop()
    assert code == 0, district.log()[-3000:]


def _reachable(base: str) -> bool:
    try:
        return httpx.get(base + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_desk_takes_connections_once_its_log_says_started(tmp_path: Path) -> None:
    """`desk-started` is what an operator's script and the benches wait for; it was logged before the port was
    bound, and a client that connected at once was refused (the district bench failed on it)."""
    s = Site(tmp_path / "site", tls=False)
    s.start()
    desk_port = free_port()
    conf = write_config(s, tmp_path / "district.toml", database="district.sqlite", desk_port=desk_port)
    district = DistrictProcess(conf, "--desk").start()
    try:
        deadline = time.monotonic() + 30
        while "desk-started" not in district.log():
            assert time.monotonic() < deadline, district.log()[-2000:]
            time.sleep(0.002)
        socket.create_connection(("127.0.0.1", desk_port), timeout=5).close()
    finally:
        district.stop()
        s.stop()


def test_a_desk_port_taken_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    s = Site(tmp_path / "site", tls=False)
    s.start()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        conf = write_config(s, tmp_path / "district.toml", database="district.sqlite",
                            desk_port=taken.getsockname()[1])
        desk = desk_alone(s, conf)
    assert desk.returncode == 1
    assert "desk-not-started" in desk.stderr and "Address already in use" in desk.stderr
    assert "Traceback" not in desk.stderr


def desk_alone(s: Site, conf: Path) -> subprocess.CompletedProcess[str]:
    """`lifeline district --desk` run to its end, then the site stopped."""
    try:
        return subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--desk"], capture_output=True,
                              text=True, env=environment(), cwd=ROOT, timeout=60)
    finally:
        s.stop()


def test_a_metrics_port_taken_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    """The desk serves the metrics too. Their port taken (another exporter on the machine, a second desk
    process of the same config) was an OSError traceback, again at each restart of the supervisor's."""
    s = Site(tmp_path / "site", tls=False)
    s.start()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        conf = write_config(s, tmp_path / "district.toml", database="district.sqlite", desk_port=free_port())
        conf.write_text(conf.read_text().replace("[metrics]\nport = 0",
                                                 f"[metrics]\nport = {taken.getsockname()[1]}"))
        desk = desk_alone(s, conf)
    assert desk.returncode == 1
    assert "desk-not-started" in desk.stderr and "metrics" in desk.stderr and "Address already in use" in desk.stderr
    assert "Traceback" not in desk.stderr


@pytest.mark.parametrize("role", [["--worker", "1"], ["--desk"]], ids=["worker", "desk"])
def test_a_database_away_at_start_is_one_clear_line_and_exit_1(tmp_path: Path, role: list[str]) -> None:
    """A worker or desk started while PostgreSQL is not up yet (the machine booting, a failover) was an
    OperationalError traceback, again at each of the supervisor's restarts, a second apart; `--add-user` said
    it in one line. Now each role does, the URL's password hidden."""
    s = Site(tmp_path / "site", tls=False)
    s.start()
    conf = write_config(s, tmp_path / "district.toml",
                        database=f"postgresql://lifeline:s3cret@127.0.0.1:{free_port()}/district")
    try:
        run = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), *role], capture_output=True,
                             text=True, env=environment(), cwd=ROOT, timeout=60)
    finally:
        s.stop()
    assert run.returncode == 1, run.stderr
    assert "not-started" in run.stderr and "connection" in run.stderr.lower(), run.stderr
    assert "Traceback" not in run.stderr and "s3cret" not in run.stderr, run.stderr


@pytest.mark.parametrize("to_group", [False, True], ids=["kill-HUP", "terminal-closed"])
def test_a_hang_up_stops_the_workers_and_the_desk(tmp_path: Path, to_group: bool) -> None:
    """SIGHUP (a dropped SSH session, kill -HUP) ended the supervisor outright, and its worker and desk, which had
    no such signal, ran on with no one to restart or stop them, the desk holding its port. It stops them as SIGTERM
    does, exit 0. A closed terminal sends it to the whole process group, the worker and the desk too: they were
    killed by it there, the worker's MQTT session and batch cut (no `worker-stopped`); now they reload, and the
    supervisor stops them."""
    s = Site(tmp_path / "site", tls=False)
    s.add("gas1", "gas")
    s.start()
    conf = write_config(s, tmp_path / "district.toml", database="district.sqlite")
    district = DistrictProcess(conf)
    started: set[int] = set()
    try:
        district.start()
        district.wait_log("desk-started")
        district.wait_subscribed()
        assert district.proc is not None
        started = leftovers.descendants(district.proc.pid)
        assert len(started) >= 2, "a worker and the desk"
        if to_group:
            os.killpg(district.proc.pid, signal.SIGHUP)
        else:
            district.proc.send_signal(signal.SIGHUP)
        code = district.proc.wait(30)
        left = leftovers.left_after(started, 5)
    finally:
        district.kill()
        leftovers.kill_all(started)
        s.stop()
    assert left == {} and code == 0, (left, code, district.log()[-3000:])
    assert "worker-stopped" in district.log(), district.log()[-3000:]


def stored(database: Path, dev: str) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT count(*) FROM messages WHERE dev = ?", (dev,)).fetchone()[0])


def test_a_worker_takes_its_sites_anew_on_sighup(tmp_path: Path) -> None:
    """A worker run alone (systemd's unit) was killed by SIGHUP, its MQTT session and batch cut: the unit had no
    reload, and a device registered since its start was refused until a restart. SIGHUP now reads district.toml
    again and takes its sites' keys and registries, names a setting that needs a restart, and keeps the running
    config when the new one fails its checks."""
    s = Site(tmp_path / "site", tls=False, devices_csv=True)
    s.add("gas1", "gas")
    s.add("gas2", "gas")
    s.start()
    older = tmp_path / "older.csv"  # the registry before gas2 was flashed
    older.write_text("id,class,key,latitude,longitude\n" + s.devices["gas1"].csv())
    conf = write_config(s, tmp_path / "district.toml", database="district.sqlite")
    full = conf.read_text()
    conf.write_text(full.replace(str(s.dir / "devices.csv"), str(older)))
    gw = GatewayProcess(s).start()
    worker = DistrictProcess(conf, "--worker", "1").start()

    async def send(dev: str) -> None:
        async with s.device_client(dev) as c:
            topic, payload, _ = s.data(dev, [reading("ch4", 1.0, "%LEL")])
            await c.publish(topic, payload, qos=1)

    database = tmp_path / "district.sqlite"
    try:
        asyncio.run(gw.ready())
        worker.wait_subscribed()
        asyncio.run(send("gas2"))
        worker.wait_log("event=refused")  # gas2's key unknown to the district yet
        conf.write_text(full.replace("batch = 200", "batch = 100"))
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGHUP)
        worker.wait_log("event=reloaded")
        assert "event=reload-needs-restart" in worker.log() and "settings=batch" in worker.log()
        asyncio.run(send("gas2"))
        until(lambda: stored(database, "gas2") == 1, 20, "gas2's reading stored")
        conf.write_text(full.replace("workers = 1", "workers = 0"))
        worker.proc.send_signal(signal.SIGHUP)
        worker.wait_log("event=reload-failed")
        asyncio.run(send("gas2"))  # the running config kept
        until(lambda: stored(database, "gas2") == 2, 20, "gas2's second reading stored")
        code = worker.stop()
    finally:
        worker.kill()
        gw.kill()
        s.stop()
    assert code == 0 and "worker-stopped" in worker.log(), worker.log()[-3000:]


def test_the_desk_takes_its_risk_points_anew_on_sighup_and_ends_its_feeds_on_sigterm(tmp_path: Path) -> None:
    """The desk run alone was killed by SIGHUP, its live feeds dropped mid-stream. It now reads district.toml
    again and shows the sites' risk points as they are there, its feeds open through it. On SIGTERM the feeds were
    cut too (the server's task cancelled: an incomplete chunked body at the page, two tracebacks in the log); now
    uvicorn ends them and the desk stops, exit 0."""
    s = Site(tmp_path / "site", tls=False)
    s.start()
    desk_port = free_port()
    conf = tmp_path / "district.toml"
    try:
        with desk_with_feed(s, conf, desk_port) as (desk, web, feed):
            assert web.get("/api/map").json()["points"] == []
            write_config(s, conf, database="district.sqlite", desk_port=desk_port, extra=LEAST_HASH_COST, per_site={
                s.id: '[[sites.risk_points]]\nid = "station-7"\nclass = "gas"\nlat = 31.2\nlon = 121.4\n\n'})
            assert desk.proc is not None
            desk.proc.send_signal(signal.SIGHUP)
            desk.wait_log("event=reloaded")
            assert [p["id"] for p in web.get("/api/map").json()["points"]] == ["station-7"]
            assert not feed.done(), feed.result()
            code = desk.stop()
            ended = feed.result(10)
    finally:
        s.stop()
    assert code == 0 and ended == "ended", (code, ended)
    assert "desk-stopped" in desk.log() and "Traceback" not in desk.log(), desk.log()[-3000:]
