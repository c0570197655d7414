"""`lifeline demo`: the seed and its incident script, and one quick run end to end with real brokers, the real
gateway and the real firmware on the MicroPython unix port."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from gateway.riskpoints import haversine_m
from lifeline.demo import report as demo_report
from lifeline.demo import run, script
from lifeline.virtual import leftovers, plan, stimulus
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.device import VirtualDevice
from lifeline.virtual.recorder import DistrictLog
from tests.firmware.test_device import NAME_POOLS, name_pools


def _interp(points: list[list[float]], t: float) -> float:
    """The sim world's interpolation (firmware/sim/simworld.py): linear, held at both ends."""
    prev = None
    for p in points:
        if t < p[0]:
            if prev is None:
                return p[1]
            return prev[1] + (p[1] - prev[1]) * (t - prev[0]) / (p[0] - prev[0])
        prev = p
    assert prev is not None
    return prev[1]


def test_seed_has_the_demo_site() -> None:
    site = plan.load()
    classes = [d.cls for d in site.devices.values()]
    assert {c: classes.count(c) for c in set(classes)} == {"gas": 5, "water": 4, "drainage": 4, "bridge": 2,
                                                          "rain": 2, "drone": 1}
    assert {rp.cls for rp in site.risk_points.values()} >= {"gas", "water"}
    assert [i.id for i in site.incidents] == ["gas-leak", "water-burst", "rain-drain", "drone-patrol"]
    gas = next(e for e in site.incidents[0].expect)
    assert gas.levels == ("blue", "yellow", "orange", "red", "clear")
    # a quick run starts a device for every expected alarm and every plot panel
    quick = {d.id for d in site.select(quick=True)}
    for inc in site.incidents:
        assert inc.panel.dev in quick
        assert all(e.subject in quick for e in inc.expect if not e.point)
    assert site.script_length(quick=True) < site.script_length(quick=False) <= 150


def test_the_neighbouring_site_stands_apart_on_the_map() -> None:
    site = plan.load()
    nb = plan.neighbour(site)
    for d in nb.devices.values():
        own = site.devices[d.id.removesuffix("-b")]
        assert 350 < haversine_m(*own.position, *d.position) < 450, (d.id, own.position, d.position)


def test_drone_patrol_reads_methane_only_within_the_risk_point() -> None:
    site = plan.load()
    inc = next(i for i in site.incidents if i.id == "drone-patrol")
    ramps = inc.stimulus["drone-01"]
    station = site.risk_points["station-1"]
    peak = 0.0
    for (t, lat), (_, lon), (_, ch4) in zip(ramps["lat"], ramps["lon"], ramps["ch4"], strict=False):
        d = haversine_m(float(lat), float(lon), station.lat, station.lon)
        if d > station.radius_m:
            assert float(ch4) < 1.0, f"methane {ch4} %LEL {d:.0f} m from the station at t={t}"
        peak = max(peak, float(ch4))
    assert peak > 25.0  # above gas.ch4 orange, so the point's alarm reaches orange


def test_seed_errors_name_the_field(tmp_path: Path) -> None:
    text = plan.SEED.read_text().replace('id = "gas-02"\nclass = "gas"', 'id = "gas-02"\nclass = "steam"', 1)
    bad = tmp_path / "seed.toml"
    bad.write_text(text)
    with pytest.raises(plan.SeedError, match=r"devices\[1\]\.class: must be one of"):
        plan.load(bad)


GAS_PANEL = 'panel = { dev = "gas-02", metric = "ch4", rule = "gas.ch4" }\n'


@pytest.mark.parametrize("edits, complaint", [
    ([("[site]\n", 'site = "yongchuan-3"\n[site_]\n')], "site: must be a table"),
    ([(GAS_PANEL, 'panel = "gas-02"\n')], r"incidents\[0\]\.panel: must be a table"),
    ([("[incidents.patrol]\n", "patrol = 3\n[incidents.patrol_]\n")], r"incidents\[3\]\.patrol: must be a table"),
    ([('rule = "gas.ch4", point = "station-1" }', 'rule = "gas.ch4", point = "station-9" }')],
     r"incidents\[3\]\.panel\.point: is not a risk point of this site"),
    ([('rule = "drainage.level", rain = "rain-01" }', 'rule = "drainage.level", rain = 1 }')],
     r"incidents\[2\]\.panel\.rain: is not a device of this site"),
    ([("sensors.gauge = { sample_s = 12, fast_s = 12 }", "sensors.gauge = 12")],
     r"profiles\.rain\.sensors\.gauge: must be a table"),
    ([('drop = ["sleep"]', 'drop = [["sleep"]]')], r"profiles\.rain\.drop: must be a list of keys"),
    ([("[[devices]]", "[[devices_]]"), ("[site]\n", "devices = 3\n[site]\n")], "devices: must be an array of tables"),
    ([(GAS_PANEL, GAS_PANEL + "expect = 3\n"), ("[[incidents.expect]]\ndev = \"gas-02\"", "[[incidents.expect_]]")],
     r"incidents\[0\]\.expect: must be an array of tables"),
    ([("\n[[incidents]]", "\nzz = " + "[" * 1000 + "]" * 1000 + "\n[[incidents]]")], "nested deeper than it reads"),
    ([('id = "yongchuan-3"', 'id = "Yongchuan 3"')], r"site\.id: must be 1-30 characters of a-z 0-9 _ -"),
    ([('id = "gas-02"', 'id = "gas/02"')], r"devices\[\d+\]\.id: must be 1-30 characters of a-z 0-9 _ -"),
    ([('id = "gas-02"', 'id = "' + "g" * 31 + '"')], r"devices\[\d+\]\.id: must be 1-30 characters"),
    ([('id = "station-1"', 'id = "station 1"')], r"risk_points\[\d+\]\.id: must be 1-64 characters of"),
])
def test_a_seed_of_the_wrong_shape_names_the_field(tmp_path: Path, edits: list[tuple[str, str]],
                                                   complaint: str) -> None:
    """A table, a list or a name where the seed wants another was an AttributeError or TypeError traceback (a
    profile's when the site was being set up), a panel's risk point no site has a KeyError at the very end of
    the run, when the plot was drawn, and nesting past the parser a RecursionError. An id the gateway refuses
    (site and device ids are topic levels) was found only when the gateway would not start on it, brokers up."""
    text = plan.SEED.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1 if old != "[[devices]]" else -1)
    bad = tmp_path / "seed.toml"
    bad.write_text(text)
    with pytest.raises(plan.SeedError, match=complaint):
        plan.load(bad)


def test_a_seed_that_is_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "seed.toml"
    bad.write_bytes(plan.SEED.read_bytes() + b"# caf\xe9\n")
    with pytest.raises(plan.SeedError, match="not UTF-8"):
        plan.load(bad)


def test_schedule_replays_every_ramp() -> None:
    """Cut into datagram-sized pieces, the ramps give the world the values the seed declares at every moment."""
    site = plan.load()
    sends = script.schedule(site, quick=False, running=set(site.devices))
    assert all(len(json.dumps({"ramp": {s.channel: s.points}})) <= script.DATAGRAM_MAX for s in sends)
    for inc in site.incidents:
        start = inc.start(quick=False)
        for dev, channels in inc.stimulus.items():
            for ch, pts in channels.items():
                pieces = [s for s in sends if s.dev == dev and s.channel == ch and start <= s.at]
                assert pieces
                for k in range(int(inc.duration * 10)):
                    t = start + k / 10
                    live = [s for s in pieces if s.at <= t][-1]
                    got = _interp([list(p) for p in live.points], t - live.at)
                    want = _interp([[float(x) for x in p] for p in pts], t - start)
                    assert got == pytest.approx(want, abs=1e-3), (dev, ch, t)


def test_judging_follows_the_expected_order() -> None:
    site = plan.load()
    log = DistrictLog()
    t0 = 1000.0

    def alarm(t: float, ev: str, level: str | None) -> None:
        log.add(t0 + t + 0.2, "alarm", {"id": "a1", "ev": ev, "dev": "gas-02", "rule": "gas.ch4", "level": level,
                                        "t_dev": t0 + t, "t_gw": t0 + t + 0.05, "reading": 1.0, "resend": 0})

    alarm(1, "raised", "yellow")  # yellow before blue: blue is never seen, yellow is
    alarm(2, "escalated", "red")
    alarm(3, "cleared", None)
    seen = {s.state: s for s in demo_report.judge(site, log) if s.subject == "gas-02"}
    assert not seen["blue"].seen
    assert seen["yellow"].seen and seen["red"].seen and seen["clear"].seen
    assert not seen["orange"].seen  # red came without an orange step
    assert seen["red"].latency_s == pytest.approx(0.2)
    assert seen["red"].gateway_s == pytest.approx(0.05)


@pytest.mark.parametrize("dev_id", ["drone-01", "rain-01"])
def test_the_demos_node_stays_under_the_name_line(tmp_path: Path, dev_id: str) -> None:
    """A node of the demo as the demo runs it (its seed's site and profile, `lifeline flash`'s image, a board's
    start-up), alone against a broker: interned names are what module loads and ids add, not traffic, so
    seconds of its run show the demo's count. The demo's drone went past the line (625 names) where
    run_every_profile's was at 620, and ran out of heap in CI. The rain gauge, awake in the demo, is a node
    with a pin IRQ, whose count the sim never printed."""
    site = plan.load()
    dev = site.devices[dev_id]
    image = run.firmware_image(tmp_path / "image", site.id)
    with Mosquitto() as broker:
        node = run.provision(image, tmp_path / dev.id, dev, site, secrets.token_bytes(32), "pw", broker.port,
                             stimulus.free_udp_pair())
        with VirtualDevice(node.flash, dev.id) as board:
            board.power_on()
            deadline = time.monotonic() + 40
            while board.console().count(b"n_pool=") < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            console = board.console().decode(errors="replace")
    pools, names = name_pools(console)
    print(dev_id, "name pools, names:", pools, names)
    assert 0 < pools <= NAME_POOLS, f"past the name line: {pools} pools, {names} names\n{console[-1500:]}"
    assert not re.search(r"MemoryError|Traceback", console), console[-1500:]


@pytest.mark.timeout(240)
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # a relative --out, as the README's command uses: devices run in their own flash directories
    with subprocess.Popen([sys.executable, "-m", "lifeline.cli", "demo", "--quick", "--plain", "--out", "demo"],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=220)
        except subprocess.TimeoutExpired:  # stopped as an operator would, so that it leaves nothing running:
            proc.terminate()  # subprocess.run's kill left its brokers, gateways and district to run on
            stdout, stderr = proc.communicate(timeout=60)
            leftovers.stop_all(proc, set(), tmp_path)
            raise AssertionError("the demo ran past 220 s:\n" + stdout[-3000:] + stderr[-3000:]) from None
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]

    png = out / "timeline.png"
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG"
        assert img.width >= 1000 and img.height >= 1000
        # a drawn plot, not a blank canvas: several colours and real contrast
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50
        assert max(ImageStat.Stat(img.convert("L")).stddev) > 20

    summary = json.loads((out / "summary.json").read_text())
    site = plan.load()
    declared = [(inc.id, e.subject, e.rule, lv) for inc in site.incidents for e in inc.expect for lv in e.levels]
    listed = [(s["incident"], s["subject"], s["rule"], s["state"]) for s in summary["expected"]]
    assert listed == declared
    assert summary["ok"] and summary["missing"] == []
    # Devices stamp readings to 1/1024 s on the machine's own clock (docs/demo.md, "Latency"): no latency is
    # below zero beyond that stamp's rounding; gateway and district share one clock.
    stamp = 1 / 1024
    for s in summary["expected"]:
        assert s["seen"], s
        assert s["latency_s"] is not None and -stamp <= s["latency_s"] < 30, s
        assert s["t_dev"] - stamp <= s["t_gw"] <= s["t_district"], s
    assert (out / "summary.md").read_text().startswith("# Site demo")
    # Every device came online once, before the script began, and nothing went offline: the summary counts the
    # run from power-on, not only the script's window (whose births were always 0, "online at" always blank).
    for dev in site.select(quick=True):
        d = summary["devices"][dev.id]
        assert (d["births"], d["deaths"]) == (1, 0) and d["first_birth_s"] is not None, (dev.id, d)
        assert -60 < d["first_birth_s"] < 0, (dev.id, d)
    assert (out / "district.jsonl").stat().st_size > 0

    # The district service took both sites' upstream, each through its own gateway, and its desk shows them.
    desk = summary["district"]
    neighbour = plan.neighbour(site)
    assert desk["desk"].startswith("http://127.0.0.1:") and desk["desk"] in stdout
    assert {s["site"]: (s["online"], s["devices"]) for s in desk["sites"]} == {
        site.id: (True, {"online": len(site.select(quick=True))}),
        neighbour.id: (True, {"online": len(neighbour.devices)})}
    # The desk's map has the seed's risk points beside the devices (drawn from coordinates, no tiles).
    assert {(p["site"], p["id"]) for p in desk["map"]["points"]} == {(site.id, rp) for rp in site.risk_points}
    # Every orange or red alarm opened a work order, and the scripted supervisor closed each one through the
    # desk's API: acknowledged, dispatched, reported, closed.
    orders = desk["work_orders"]
    assert desk["operator"] and orders and all(o["state"] == "closed" and o["team"] for o in orders), orders
    ordered = {o["point"] or o["dev"] for o in orders}
    for inc in site.incidents:
        for e in inc.expect:
            if {"orange", "red"} & set(e.levels):
                assert e.subject in ordered, (e.label(), orders)
    # The desk's own response times are in the summary: alarm -> ack -> dispatch -> closed, per colour.
    times = desk["response_times"]
    for colour in {o["peak"] for o in orders}:
        for measure in ("alarm_ack", "ack_dispatch", "dispatch_closed"):
            assert times["colour"][colour][measure]["count"] >= 1, (colour, measure, times)
    # The supervisor acknowledged alarms as today's page does, at the level and step it read, and an escalation
    # after its ack afresh, at the escalation's step; the desk sent that down and the site's gateway took it
    # (before, it acked open orders only, as stood, and the recorder acked every escalation at once at the site).
    record = DistrictLog.load(out / "district.jsonl")
    escalated = {(e.body["id"], e.body["step"]) for e in record.alarms() if e.body["ev"] == "escalated"}
    again = [a for a in desk.get("acks", ()) if a["again"] and (a["alarm"], a["step"]) in escalated]
    assert again, desk.get("acks")
    gateway_log = (out / "run" / "logs" / "gateway.log").read_text()
    assert any(re.search(f"event=alarm-ack id={a['alarm']} known=true$", gateway_log, re.M) for a in again)
    assert "again after an escalation" in (out / "summary.md").read_text()
    assert "## District desk" in (out / "summary.md").read_text()
    with Image.open(out / "desk.png") as img:
        assert img.format == "PNG" and img.width >= 1000
        assert max(ImageStat.Stat(img.convert("L")).stddev) > 10  # the desk drawn (a dark theme), not blank
