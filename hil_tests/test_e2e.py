"""End to end on the bench: device → site broker → gateway → district, with the real firmware and gateway.

Each test drives the devices as the field would (sensor stimulus, network, power, commands) and judges
what reaches the district broker, with receipt times for latency. The gas ramps run through the shipped
rule set's levels (gateway/rulesets/gas.toml: blue 10, yellow 20, orange 25, red 50 %LEL; clear below 8).
"""

from __future__ import annotations

import functools
import itertools
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest

from hil_tests.report import LatencyLog
from hil_tests.testbed import District, Dut, Testbed
from lifeline.virtual.profiles import load_profile
from lifeline.virtual.recorder import Entry, Recorder
from lifeline.virtual.site import Site
from lifeline.virtual.stimulus import SerialStimulus, SimStimulus, Unsupported
from protocol import district as dtopics
from protocol import senml_resolve

LEVELS = ["blue", "yellow", "orange", "red"]
# ch4 (%LEL) against seconds from the start: through all four levels, a short plateau, then down to quiet.
# The rise and the red plateau have the slopes and lengths they always had (yellow to orange in 2.2 s, 4 samples
# at fast_s; 5.9 s above red); the start is 2 s sooner and the way down from 30 %LEL quicker, below the blue
# clear at 27.2 s.
GAS_RAMP = [(2.0, 8.0), (6.0, 15.0), (10.0, 23.0), (14.0, 35.0), (18.0, 60.0), (21.0, 60.0), (25.0, 30.0),
            (27.0, 10.0), (28.0, 3.0), (29.0, 1.0)]
ALARM_LATENCY_S = 1.0  # issue 5: each level at the district within 1 s of the device's crossing sample
QUIET_PRESSURE = 320000.0  # the water baseline of seeds/demo_site.toml the bench returns devices to


def raised_levels(district: District, dev: str, rule: str) -> list[str]:
    return [e.body["level"] for e in district.alarms(dev, rule) if e.body["ev"] in ("raised", "escalated")]


def wait_cleared(district: District, dev: str, rule: str, timeout: float = 40.0) -> None:
    district.wait_for(f"{rule} cleared for {dev}", lambda e: e.body.get("rule") == rule
                      and e.body.get("ev") == "cleared", timeout, dtopics.ALARM, dev)


def assert_contiguous(seqs: list[int], what: str) -> None:
    assert seqs, f"no data from the device reached the district {what}"
    have = set(seqs)
    missing = sorted(set(range(min(have), max(have) + 1)) - have)
    assert not missing, f"sequence gap at the district {what}: missing {missing[:20]}"


def complete(seqs: list[int], last: int) -> bool:
    """Every sequence number from the first seen up to `last` is there."""
    have = set(seqs)
    return bool(have) and set(range(min(have), last + 1)) <= have


def until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _acks(cmd_id: int, e: Entry) -> bool:
    return bool(e.body.get("re") == "cmd" and e.body.get("id") == cmd_id)


def command(district: District, dev: str, op: str, args: dict[str, Any], latency: LatencyLog | None = None,
            tries: int = 2) -> Entry:
    """Send a command as the district desk does, again (with a new id) when the gateway reports that the
    device did not answer in time (docs/gateway.md); returns the device's ack."""
    for _ in range(tries):
        cmd_id = secrets.randbelow(1 << 40)
        sent = time.time()
        district.send(dtopics.DOWN_CMD, {"dev": dev, "id": cmd_id, "op": op, "args": args})
        ack = district.wait_for(f"an ack of command {cmd_id}", functools.partial(_acks, cmd_id), 60,
                                dtopics.UP_ACK, dev)
        if "error" not in ack.body:  # an answer from the device, not the gateway's timeout
            if latency is not None:
                latency.record("command_round_trip", ack.t - sent)
            return ack
    raise AssertionError(f"{dev} did not answer {op} in {tries} tries: {ack.body}")


def test_boot_birth_reaches_the_district(site: Site, dut: list[Dut], district: District,
                                         latency: LatencyLog) -> None:
    """A reset device announces itself again: its birth, from a new boot, arrives upstream."""
    for d in dut:
        reset_at = time.time()
        d.reset()
        birth = district.birth(d.id)
        assert birth.body["prof"] == d.profile and birth.body["rst"]
        assert birth.body["boot"] >= 2  # the bench booted it once already
        latency.record("reset_to_district_birth", birth.t - reset_at)


def test_methane_ramp_raises_every_level_in_order_then_clears(dut: list[Dut], district: District,
                                                              latency: LatencyLog) -> None:
    d = dut[0]
    assert d.stimulus is not None
    d.stimulus.ramp("ch4", GAS_RAMP)
    district.wait_for("a red gas alarm", lambda e: e.body.get("rule") == "gas.ch4"
                      and e.body.get("level") == "red", 40, dtopics.ALARM, d.id)
    wait_cleared(district, d.id, "gas.ch4")
    assert raised_levels(district, d.id, "gas.ch4") == LEVELS
    for e in district.alarms(d.id, "gas.ch4"):
        if e.body["ev"] in ("raised", "escalated"):
            lag = latency.record(f"ch4_{e.body['level']}_sample_to_district", e.t - float(e.body["t_dev"]))
            assert lag <= ALARM_LATENCY_S, f"{e.body['level']} reached the district {lag:.2f} s after the sample"


def pressure_packs(recorder: Recorder, dev: str, since: float) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """(seq, pri, pressure records) of each of the device's packs that reached the district since `since`."""
    out = []
    for e in recorder.entries(dtopics.TELEMETRY, since):
        for p in e.body["packs"]:
            if p["dev"] == dev:
                recs = [r for r in senml_resolve.resolve(list(p["e"])) if r["n"].endswith(":pressure")]
                out.append((int(p["seq"]), int(p.get("pri", 0)), recs))
    return out


@pytest.mark.profile("water")
def test_pipe_burst_raises_the_rate_of_change_alarm(site: Site, dut: list[Dut], district: District,
                                                    latency: LatencyLog) -> None:
    """The node's own rate trigger sends the first fallen reading at once (pri 1) with the reading before the
    fall (in its pack, or in the pri-1 pack sealed just before a level event that carries it), which the
    gateway's rate rule needs to compare against; the district has the alarm seconds later."""
    d = dut[0]
    assert d.stimulus is not None
    sensor = load_profile("water")["sensors"][0]
    sample_s = sensor["sample_s"]
    # A reading this far below the quiet level trips the node's fall trigger (the ramp falls 53 kPa a
    # sample); one less far down may go out routine first, and is then the top the fall is measured from.
    fall = sensor["metrics"]["pressure"]["prealarm"]["fall"]
    raw = site.recorder(raw=True)  # packs with their pri, which the district fixture's log leaves out
    try:
        assert raw.subscribed.wait(10)
        started = time.time()
        # The main breaks: 320 kPa to 240 kPa in 3 s, then drains towards 60 kPa (more than 100 kPa within 60 s).
        d.stimulus.ramp("pressure", [(3.0, 240000.0), (20.0, 62000.0), (40.0, 60000.0)])
        alarm = district.wait_for("a rate-of-change alarm", lambda e: e.body.get("rule") == "water.pressure.rate"
                                  and e.body.get("ev") == "raised", 40, dtopics.ALARM, d.id)
        assert alarm.body["level"] in ("orange", "red")
        latency.record("burst_to_rate_alarm", alarm.t - started)

        def fallen() -> list[tuple[float, float, int, int, list[dict[str, Any]]]]:
            return [(r["t"], r["v"], seq, pri, recs) for seq, pri, recs in pressure_packs(raw, d.id, started)
                    for r in recs if r["v"] < QUIET_PRESSURE - fall]

        # the alarm takes the alarm lane; the packs it was judged on follow in a telemetry batch
        raw.wait(lambda: bool(fallen()), 20)
        packs = pressure_packs(raw, d.id, started)
        falls = fallen()
    finally:
        raw.close()
    assert falls, f"no fallen pressure reading reached the district: {packs}"
    t, v, seq, pri, recs = min(falls, key=lambda x: x[0])
    assert t - started <= 2 * sample_s + 1.0, f"the first fallen reading was taken {t - started:.1f} s after the break"
    assert pri == 1, f"the first fallen reading went out routine: {recs}"
    before = [r for s, p, rs in packs if p == 1 and s in (seq - 1, seq) for r in rs
              if r["t"] < t and r["v"] >= v + fall]
    assert before, f"no pri-1 pack with the reading before the fall came with the first fallen one {recs}: {packs}"


def test_wifi_cut_mid_ramp_loses_nothing_and_keeps_device_times(dut: list[Dut], district: District,
                                                               latency: LatencyLog) -> None:
    d = dut[0]
    assert d.stimulus is not None
    d.stimulus.ramp("ch4", GAS_RAMP)
    district.wait_for("the blue alarm", lambda e: e.body.get("rule") == "gas.ch4", 20, dtopics.ALARM, d.id)
    cut = time.time()
    d.stimulus.network(False)
    time.sleep(max(0.0, 21.0 - (cut - district.since)))  # past red (16.4 s), while offline
    restored = time.time()
    d.stimulus.network(True)
    wait_cleared(district, d.id, "gas.ch4", 60)
    assert raised_levels(district, d.id, "gas.ch4") == LEVELS
    # The device hears of the cut on its next look at the world (100 ms) and stamps alarms to 1/8 s on its
    # own clock, so a crossing just before the cut can carry a t_dev just after it and still go out (seen:
    # t_dev 0.011 s after its own arrival): only what was stamped a second into the outage was offline.
    late = [e for e in district.alarms(d.id, "gas.ch4") if cut + 1.0 < float(e.body["t_dev"]) < restored]
    assert late, "no alarm was crossed while the network was down"
    for e in late:
        assert e.t >= restored  # delivered after the network came back ...
        latency.record("outage_alarm_delivery_after_restore", e.t - restored)
    # ... while carrying when it happened: the escalations are spaced by the ramp, not bunched at the restore.
    t_dev = sorted(float(e.body["t_dev"]) for e in late)
    assert t_dev[-1] - t_dev[0] > 2.0
    until(lambda: complete(district.seqs(d.id), max(district.seqs(d.id))), 30)
    assert_contiguous(district.seqs(d.id), "across the Wi-Fi cut")


def test_power_cut_mid_write_keeps_the_flash_queue(dut: list[Dut], district: District, site: Site) -> None:
    d = dut[0]
    assert d.stimulus is not None
    rejected = site.metric("lifeline_ingest_rejects_total")
    d.stimulus.network(False)  # everything from now on waits in the flash queue
    d.stimulus.ramp("ch4", [(3.0, 30.0), (12.0, 45.0), (20.0, 30.0)])  # fast sampling, a record every ~0.5 s
    time.sleep(random.uniform(5.0, 9.0))
    try:
        d.power_cut()  # at a random instant of the writes
    except Unsupported as exc:
        pytest.skip(str(exc))
    d.stimulus.network(True)
    birth = district.birth(d.id)
    assert birth.body["rst"] == "power-on"
    # Everything queued before the cut comes through (the backlog drains behind fresh alarm packs) ...
    drained = until(lambda: complete(district.seqs(d.id), birth.body["seq"] - 1), 60)
    assert_contiguous(district.seqs(d.id), "across the power cut")
    assert drained, f"the backlog up to seq {birth.body['seq'] - 1} did not drain: {sorted(set(district.seqs(d.id)))}"
    assert site.metric("lifeline_ingest_rejects_total") == rejected  # ... and nothing of it arrived damaged


def test_command_changes_the_sample_interval_and_its_ack_returns(dut: list[Dut], district: District,
                                                                 latency: LatencyLog) -> None:
    d = dut[0]
    assert d.stimulus is not None
    args = {"report_s": 2, "batch": 1, "sensors": {"ch4": {"sample_s": 1}}}
    ack = command(district, d.id, "set_intervals", args, latency)
    assert ack.body["ok"] is True, ack.body
    # The effect: a rise and fall below the pre-alarm, steeper than the 1 %LEL deadband per second, now
    # shows one reading a second (it was one every 2 s).
    since = time.time()
    d.stimulus.ramp("ch4", [(4.0, 9.5), (8.0, 1.0)])
    time.sleep(10.0)
    times = sorted(float(r["t"]) for e in district.entries(dtopics.TELEMETRY) for p in e.body["packs"]
                   if p["dev"] == d.id for r in p["records"] if r.get("metric") == "ch4" and r["t"] > since)
    assert len(times) >= 6, times
    steps = sorted(b - a for a, b in itertools.pairwise(times))
    assert steps[len(steps) // 2] < 1.5, steps
    restore = {"report_s": 60, "batch": 16, "sensors": {"ch4": {"sample_s": 2}}}
    assert command(district, d.id, "set_intervals", restore).body["ok"] is True


def test_device_with_a_wrong_key_is_refused(testbed: Testbed, dut: list[Dut], district: District,
                                            site: Site) -> None:
    d = dut[0]
    bad_mac = site.metric("lifeline_ingest_rejects_total", reason="bad-mac")
    try:
        testbed.provision(d, key=secrets.token_bytes(32))  # flashed with a key the gateway does not know
        deadline = time.monotonic() + 30
        while site.metric("lifeline_ingest_rejects_total", reason="bad-mac") <= bad_mac:
            assert time.monotonic() < deadline, "the gateway did not refuse the device's messages"
            time.sleep(0.2)
        assert not [e for e in district.entries(dtopics.UP_STATE, d.id) if e.body.get("st") == "online"]
    finally:
        testbed.provision(d)
    district.birth(d.id)


def test_hung_main_loop_is_reset_by_the_watchdog(dut: list[Dut], district: District,
                                                 latency: LatencyLog) -> None:
    d = dut[0]
    if not isinstance(d.stimulus, SimStimulus):
        pytest.skip("stalling the main loop needs the sim backend")
    hung = time.time()
    d.stimulus.hang()
    birth = district.wait_for("a birth after a watchdog reset", lambda e: e.body.get("st") == "online"
                              and e.body.get("rst") == "wdt", 60, dtopics.UP_STATE, d.id)
    latency.record("hang_to_watchdog_birth", birth.t - hung)


@pytest.mark.hardware("the 4-20 mA input is read by the board's own ADC from the stimulus board's loop")
def test_loop_current_reads_true_through_the_board_adc(dut: list[Dut], district: District) -> None:
    d = dut[0]
    if not isinstance(d.stimulus, SerialStimulus):
        pytest.skip("needs a stimulus board (stim= and rig= in --device)")
    for value in (30.0, 60.0, 90.0):  # above the pre-alarm, so each reading is sent at once
        since = time.time()
        d.stimulus.set(ch4=value)
        district.wait_for(f"a ch4 reading near {value} %LEL", functools.partial(_reads, d.id, value, since + 1.0),
                          20, dtopics.TELEMETRY)


def _reads(dev: str, value: float, after: float, e: Entry) -> bool:
    """A ch4 reading taken after `after` within 2 % of span (ADC, shunt and converter error) of `value`."""
    return any(r.get("metric") == "ch4" and r["t"] > after and abs(r["v"] - value) <= 2.0
               for p in e.body["packs"] if p["dev"] == dev for r in p["records"])
