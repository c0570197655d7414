"""The firmware as a whole: virtual devices (real MicroPython unix port, the real firmware compiled to
.mpy, a flash directory per device) against a real Mosquitto, checked from the outside through what
arrives on the broker, decoded with cbor2 and verified with the device key."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.commit_watermark import done_body
from lifeline import upy
from lifeline.upy import FIRMWARE_HEAP
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.faultlog import FaultLog
from lifeline.virtual.firmware import build_romfs
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import STIMULUS, load_profile, sped_up
from protocol import message, senml_resolve, topics

SITE, DEV = "site-a", "dev-01"


def fast_gas(report_s: float = 2, batch: int = 16) -> dict[str, Any]:
    """The gas profile with its schedule shortened so a test sees several cycles quickly."""
    p = load_profile("gas")
    p["report_s"] = report_s
    p["batch"] = batch
    ch4 = p["sensors"][0]
    ch4["sample_s"], ch4["fast_s"] = 1, 0.25
    ch4["metrics"]["ch4"]["filters"] = [{"q": 0.0625}, {"delta": 0.5}, {"heartbeat": 2}]
    return p


def readings(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in senml_resolve.resolve(list(body["e"])) if r["n"] == name]


def seqs(listener: Listener) -> list[int]:
    return [b["seq"] for k, b, _, _ in listener.messages if k in (topics.DATA, topics.EVENT)]


@pytest.mark.parametrize("hal", ["sim", "esp32"])  # hal/esp32.py over firmware/sim/esp32_machine
def test_boots_publishes_birth_then_verified_senml_cbor_packs_and_will(tmp_path: Path, mpy: Path,
                                                                      broker: Mosquitto, hal: str) -> None:
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(), broker.port, {"ch4": [[0, 2.0], [30, 8.0]],
                                                                          "temp": [[0, 11.5]]},
                       hal=hal) as dev:
        assert listener.wait(lambda m: len([x for x in m if x[0] == topics.DATA]) >= 3, 25), dev.console()
        late = Listener(broker.port, SITE, DEV)  # joins after the birth: gets it as the retained state
        assert late.wait(lambda m: any(x[0] == topics.STATE and x[3] for x in m), 5)
        late.close()
        soft_resets = dev.soft_resets
    # stop() is a SIGKILL: no DISCONNECT, so the broker publishes the will
    assert listener.wait(lambda m: any(x[0] == topics.STATE and x[1]["st"] == message.OFFLINE for x in m), 10)
    listener.close()
    death = next(b for b in listener.of(topics.STATE) if b["st"] == message.OFFLINE)
    assert (death["dev"], death["boot"]) == (DEV, 1)
    assert not listener.errors
    births = [b for b in listener.of(topics.STATE) if b["st"] == message.ONLINE]
    assert births, "no birth"
    birth = births[0]
    assert (birth["dev"], birth["boot"], birth["prof"], birth["rst"], birth["fw"]) == (DEV, 1, "gas", "power-on",
                                                                                       birth["fw"])
    assert soft_resets == 1, "the first boot checks the config, then starts over with a soft reset"
    assert birth["clk"] == message.CLK_EPOCH and abs(birth["t"] - time.time()) < 60
    assert birth["heap"] > 0 and birth["qlen"] >= 0
    kinds = [k for k, _, _, _ in listener.messages]
    assert kinds.index(topics.STATE) < kinds.index(topics.DATA), "birth must come before data"
    data = listener.of(topics.DATA)
    for body in data:
        recs = readings(body, "ch4")
        assert recs and all(r["u"] == "%LEL" and 1.5 <= r["v"] <= 8.5 for r in recs)
        assert body["pri"] == message.PRI_ROUTINE and body["clk"] == message.CLK_EPOCH
        assert all(abs(r["t"] - time.time()) < 120 for r in recs)
    got = seqs(listener)
    assert got == list(range(birth["seq"], birth["seq"] + len(got))), got


def test_prealarm_crossing_samples_faster_and_sends_at_once(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    p = fast_gas(report_s=30)  # routine packs would wait 30 s: anything sooner is an immediate send
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0]], "temp": [[0, 11.5]]}) as dev:
        assert listener.wait(lambda m: any(x[0] == topics.STATE for x in m), 20), dev.console()
        time.sleep(2)
        assert dev.control(ramp={"ch4": [[3.0, 20.0]]})["ok"]
        ramp_at = time.time()
        assert listener.wait(lambda m: len([x for x in m if x[0] == topics.DATA and x[1]["pri"]]) >= 4, 15), \
            dev.console()
    listener.close()
    events = [b for b in listener.of(topics.EVENT) if b["ev"] == "prealarm"]
    assert len(events) == 1 and events[0]["pri"] == message.PRI_ALARM
    crossing = readings(events[0], "ch4")[0]
    assert crossing["v"] >= 10
    # the crossing happens ~1.5 s into the 3 s ramp; the event is there long before the 30 s batch
    assert crossing["t"] - ramp_at < 4
    alarm = [r for b in listener.of(topics.DATA) if b["pri"] for r in readings(b, "ch4")]
    times = sorted(r["t"] for r in alarm)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and max(gaps) <= 0.75, f"fast sampling is 0.25 s, routine 1 s: {gaps}"


def test_broker_outage_buffers_in_flash_and_drains_every_seq_in_order(tmp_path: Path, mpy: Path,
                                                                     broker: Mosquitto, fault_log: FaultLog) -> None:
    listener = Listener(broker.port, SITE, DEV, persistent=True)
    p = fast_gas(report_s=0.5, batch=2)
    p["sensors"][0]["metrics"]["ch4"]["filters"] = []  # a message for each reading: several held in a 3 s outage
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0], [60, 9.0]],
                                                                "temp": [[0, 11.5]]}) as dev:
        assert listener.wait(lambda m: len(seqs_of(m)) >= 3, 20), dev.console()
        broker.stop()
        time.sleep(1)
        held = queue_bytes(dev)
        # Away 3 s at least, and until the queue has grown (an 8 s outage met a reconnect backoff up to 8 s).
        away = time.monotonic() + 2
        while (queue_bytes(dev) <= held or time.monotonic() < away) and time.monotonic() < away + 20:
            time.sleep(0.1)
        grown = queue_bytes(dev) - held
        broker.start()
        before = max(seqs(listener))
        assert listener.wait(lambda m: max(seqs_of(m)) >= before + 12, 30), dev.console()
    listener.close()
    assert grown > 0, "the device kept sealing into flash during the outage"
    got = seqs(listener)
    unique: list[int] = []
    for s in got:
        if s not in unique:
            unique.append(s)
    assert unique == list(range(unique[0], unique[0] + len(unique))), unique
    assert not listener.errors
    fault_log.record("site broker stopped 3 s while a node samples (real firmware)", injected=1, unit="messages",
                     sent=len(unique), delivered=len(set(got)), duplicates=len(got) - len(set(got)),
                     where="site broker")


def test_a_record_the_gateway_lacks_goes_again_while_later_ones_are_confirmed(tmp_path: Path, mpy: Path,
                                                                              broker: Mosquitto) -> None:
    """With the gateway confirming (hold on), the node sent its unconfirmed records again at a connect, or once no
    confirmation at all had come for queue.resend_s. A record the gateway never got (lost at the site broker) while
    the node's later ones were confirmed was never sent again while the link held: each of their confirmations
    restarted that wait. It stayed on flash until the queue filled and dropped it (a reading lost), and meanwhile
    every confirmation rewrote an index listing each record confirmed behind it. Now the wait runs from when the
    oldest record held last changed. The test is the gateway here: it confirms every number it gets but one."""
    p = fast_gas(report_s=0.5, batch=2)
    p["queue"]["resend_s"] = 2
    p["sensors"][0]["metrics"]["ch4"]["filters"] = []  # a message every 0.5 s: confirmations well within 2 s
    listener = Listener(broker.port, SITE, DEV)
    gateway = paho.Client(CallbackAPIVersion.VERSION2, client_id="gateway")
    gateway.connect("127.0.0.1", broker.port)
    gateway.loop_start()

    def confirm(lost: int) -> int:
        """Every number received but `lost`, as the gateway's ranges; the highest number confirmed."""
        ranges: list[list[int]] = []
        for n in sorted(set(seqs(listener)) - {lost}):
            if ranges and ranges[-1][1] == n - 1:
                ranges[-1][1] = n
            else:
                ranges.append([n, n])
        body = done_body([(a, b) for a, b in ranges[-topics.MAX_DONE_RANGES:]])
        gateway.publish(topics.device(SITE, DEV, topics.DONE), body, qos=1, retain=True).wait_for_publish(5)
        return ranges[-1][1]

    def hold_on() -> bool:
        with contextlib.suppress(OSError, ValueError):
            return bool(json.loads((dev.flash / "q" / "idx").read_text()).get("h"))
        return False

    try:
        with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0], [60, 9.0]]}) as dev:
            assert listener.wait(lambda m: len(seqs_of(m)) >= 2, 20), dev.console()
            confirm(0)
            deadline = time.monotonic() + 10
            while not hold_on() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert hold_on(), dev.console()
            lost = max(seqs(listener)) + 2  # PUBACKed after hold went on: held until confirmed
            told = 0
            deadline = time.monotonic() + 15
            while seqs(listener).count(lost) < 2 and time.monotonic() < deadline:
                if max(seqs(listener)) > told:
                    told = confirm(lost)
                time.sleep(0.2)
            console = dev.console()
    finally:
        gateway.loop_stop()
        gateway.disconnect()
        listener.close()
    assert seqs(listener).count(lost) >= 2, f"{lost} not sent again; confirmed up to {told}: {console[-2000:]}"
    assert len([b for b in listener.of(topics.STATE) if b["st"] == message.ONLINE]) == 1, "sent again on one link"


def queue_bytes(dev: FlashDirDevice) -> int:
    return sum(f.stat().st_size for f in (dev.flash / "q").iterdir() if f.name[0] in "ar")


def seqs_of(m: list[tuple[str, dict[str, Any], bytes, bool]]) -> list[int]:
    return [b["seq"] for k, b, _, _ in m if k in (topics.DATA, topics.EVENT)] or [0]


def test_network_cut_drops_the_link_until_restored(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(report_s=0.5, batch=2), broker.port,
                       {"ch4": [[0, 2.0], [60, 9.0]]}) as dev:
        assert listener.wait(lambda m: len(seqs_of(m)) >= 2, 20), dev.console()
        assert dev.control(net=False)["ok"]
        # the link breaks on its next read or write: the broker sees it gone and publishes the will
        assert listener.wait(lambda m: any(x[0] == topics.STATE and x[1]["st"] == message.OFFLINE for x in m), 15)
        cut_at = max(seqs(listener))
        time.sleep(3)
        assert max(seqs(listener)) == cut_at, "nothing gets out while the network is cut"
        assert dev.control(net=True)["ok"]
        assert listener.wait(lambda m: len(online_births(listener)) >= 2, 20), dev.console()
        assert listener.wait(lambda m: max(seqs_of(m)) >= cut_at + 6, 20), dev.console()
    listener.close()
    unique = sorted(set(seqs(listener)))
    assert unique == list(range(unique[0], unique[-1] + 1))
    assert online_births(listener)[1]["boot"] == 1, "a reconnect, not a reboot"


def test_command_changes_report_interval_and_is_acked(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    listener = Listener(broker.port, SITE, DEV)
    p = fast_gas(report_s=600, batch=64)
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0], [40, 12.0]]}) as dev:
        assert listener.wait(lambda m: any(x[0] == topics.STATE for x in m), 20), dev.console()
        time.sleep(3)
        assert not listener.of(topics.DATA), "nothing is due before the 600 s report interval"
        dev.command(41, "set_intervals", {"report_s": 1})
        assert listener.wait(lambda m: any(x[0] == topics.ACK for x in m), 10), dev.console()
        acked = time.time()
        assert listener.wait(lambda m: len([x for x in m if x[0] == topics.DATA]) >= 3, 10), dev.console()
        stored = dev.read("profile.json")
    listener.close()
    ack = listener.of(topics.ACK)[0]
    assert (ack["id"], ack["ok"], ack["res"]["report_s"]) == (41, True, 1)
    assert stored["report_s"] == 1, "the change is on flash and survives a reset"
    assert time.time() - acked < 10


def test_command_past_its_expiry_is_dropped_unanswered(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """By its exp the gateway has reported the command upstream as timed out, and the district may have sent
    it again under a new id: a node that knows the time does not run it late."""
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(report_s=600), broker.port, {"ch4": [[0, 2.0]]}) as dev:
        assert listener.wait(lambda m: any(x[0] == topics.STATE for x in m), 20), dev.console()
        assert listener.of(topics.STATE)[0]["clk"] == message.CLK_EPOCH
        dev.command(50, "set_intervals", {"report_s": 5}, exp=int(time.time()) - 2)
        dev.command(51, "set_intervals", {"report_s": 7})
        assert listener.wait(lambda m: any(x[0] == topics.ACK for x in m), 10), dev.console()
        time.sleep(0.5)
        stored = dev.read("profile.json")
        console = dev.console()
    listener.close()
    assert [(a["id"], a["ok"]) for a in listener.of(topics.ACK)] == [(51, True)]
    assert stored["report_s"] == 7
    assert console.count("command rejected: out of date") == 1, console


def test_command_that_cannot_write_flash_fails_and_the_next_runs(tmp_path: Path, mpy: Path,
                                                                  broker: Mosquitto) -> None:
    """A flash error in an op is the command's failure, acked with the reason, not the end of the node's
    command handling (it used to end the task that takes them)."""
    listener = Listener(broker.port, SITE, DEV)
    flash = tmp_path / "flash"
    with FlashDirDevice(flash, mpy, fast_gas(report_s=600), broker.port, {"ch4": [[0, 2.0]]}) as dev:
        assert listener.wait(lambda m: any(x[0] == topics.STATE for x in m), 20), dev.console()
        (flash / "profile.json.tmp").mkdir()  # persist.save writes here first: now it cannot
        dev.command(60, "set_intervals", {"report_s": 5})
        assert listener.wait(lambda m: any(x[0] == topics.ACK for x in m), 10), dev.console()
        (flash / "profile.json.tmp").rmdir()
        dev.command(61, "set_intervals", {"report_s": 7})
        assert listener.wait(lambda m: len([x for x in m if x[0] == topics.ACK]) >= 2, 10), dev.console()
        stored = dev.read("profile.json")
        console = dev.console()
    listener.close()
    failed, done = listener.of(topics.ACK)
    assert (failed["id"], failed["ok"]) == (60, False) and "Errno" in failed["res"], failed
    assert (done["id"], done["ok"]) == (61, True) and stored["report_s"] == 7
    assert "Traceback" not in console, console


def test_heapmin_reports_the_command_paths_high_point(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """Health figures carry the lowest free heap since the figures before. Between commands that is the
    figure's own sample; over a command it is the moment the decoder was loaded, which is several KB
    lower than any figure taken once the command is over."""
    listener = Listener(broker.port, SITE, DEV)
    p = fast_gas(report_s=600)
    p["health_s"] = 2
    with FlashDirDevice(tmp_path / "flash", mpy, p, broker.port, {"ch4": [[0, 2.0]]}) as dev:
        assert listener.wait(lambda m: len([x for x in m if x[1].get("ev") == "health"]) >= 2, 20), dev.console()
        dev.command(42, "set_intervals", {"report_s": 600})
        assert listener.wait(lambda m: any(x[0] == topics.ACK for x in m), 10), dev.console()
        acked_at = len(listener.messages)
        assert listener.wait(lambda m: len([x for x in m[acked_at:] if x[1].get("ev") == "health"]) >= 2, 10)
    listener.close()
    figures = []
    for i, (kind, body, _, _) in enumerate(listener.messages):
        if kind == topics.EVENT and body["ev"] == "health":
            f = {r["n"]: r["v"] for r in senml_resolve.resolve(list(body["e"]))}
            figures.append((i, f["heap"], f["heapmin"]))
    before = [(heap, low) for i, heap, low in figures if i < acked_at]
    after = [(heap, low) for i, heap, low in figures if i >= acked_at]
    # the command falls in the span of the last figures before its ack or the first after it
    quiet, spanning = before[:-1] + after[1:], [before[-1], after[0]]
    assert len(quiet) >= 2 and all(low == heap for heap, low in quiet), figures
    floor = min(heap for heap, _ in before + after)
    assert any(low < floor - 4096 for _, low in spanning), figures


def test_a_reading_without_a_unit_arrives_without_one(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """A pack's base unit is inherited by every record that gives none (RFC 8428 section 4.5.2), so a pack
    that mixes readings with and without units must not give one: the drone's GNSS fix is a code, not a
    concentration, in the packs its methane readings lead."""
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, sped_up("drone"), broker.port, STIMULUS["drone"]) as dev:
        assert listener.wait(lambda m: sum(x[0] == topics.DATA for x in m) >= 3, 30), dev.console()
    listener.close()
    units: dict[str, set[str | None]] = {}
    for body in listener.of(topics.DATA):
        for r in senml_resolve.resolve(list(body["e"])):
            units.setdefault(r["n"].rsplit(":", 1)[-1], set()).add(r.get("u"))
    assert units["fix"] == {None} and units["ch4"] == {"%LEL"}, units


def test_seq_and_boot_continue_across_power_cuts(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(report_s=0.5, batch=1), broker.port,
                       {"ch4": [[0, 2.0], [60, 9.0]]}) as dev:
        for boot in (1, 2):
            assert listener.wait(lambda m, b=boot: any(x[1].get("boot") == b and x[0] == topics.DATA
                                                       for x in m), 20), dev.console()
            time.sleep(1.5)
            dev.kill()
        assert listener.wait(lambda m: any(x[1].get("boot") == 3 and x[0] == topics.DATA for x in m), 20)
        time.sleep(2)
    listener.close()
    births = [b for b in listener.of(topics.STATE) if b["st"] == message.ONLINE]
    assert [b["boot"] for b in births] == [1, 2, 3], "the soft reset after the first boot's config check is no boot"
    assert dev.soft_resets == 1, "only the fresh flash's config is checked, and then the node starts over once"
    assert [b["rst"] for b in births] == ["power-on"] * 3
    sent = [(b["boot"], b["seq"]) for k, b, _, _ in listener.messages if k in (topics.DATA, topics.EVENT)]
    unique = sorted({s for _, s in sent})
    assert unique == list(range(unique[0], unique[-1] + 1)), "a seq is never skipped"
    for birth in births[1:]:
        # a birth announces the seq right after the last one issued before the cut
        earlier = [s for boot, s in sent if boot < birth["boot"]]
        assert birth["seq"] == max(earlier) + 1, (birth, earlier)


def online_births(listener: Listener) -> list[dict[str, Any]]:
    return [b for b in listener.of(topics.STATE) if b["st"] == message.ONLINE]


def test_records_cut_as_damaged_count_in_qdrop(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """A record the queue finds damaged (a flash fault, a torn write) is cut and never sent: a reading lost on
    the node, as one dropped to make room is. The health figures said qdrop 0 for it, so a node whose flash
    went bad looked as if it had lost nothing."""
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(report_s=0.5, batch=1), broker.port,
                       {"ch4": [[0, 2.0], [60, 9.0]]}) as dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 20), dev.console()
        assert dev.control(net=False)["ok"]
        time.sleep(3)  # readings held in flash while the link is down
        dev.power_off()
        seg = max((f for f in (dev.flash / "q").iterdir() if f.name[0] == "r"), key=lambda f: int(f.name[1:]))
        raw = bytearray(seg.read_bytes())
        raw[-3] ^= 0x40  # in the last record's payload: its CRC no longer matches
        seg.write_bytes(bytes(raw))
        assert dev.control(net=True)["ok"]
        dev.power_on()
        assert listener.wait(lambda m: len(online_births(listener)) >= 2, 20), dev.console()
    listener.close()
    assert online_births(listener)[1]["qdrop"] == 1, online_births(listener)[1]


def test_config_replacement_applies_or_rolls_back(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(), broker.port, {"ch4": [[0, 2.0]]}) as dev:
        assert listener.wait(lambda m: len(online_births(listener)) >= 1, 20), dev.console()
        good = dev.read("profile.json")
        good["report_s"] = 7
        dev.command(100, "config", {"profile": good})
        assert listener.wait(lambda m: any(x[0] == topics.ACK and x[1]["id"] == 100 for x in m), 20), dev.console()
        device = dev.read("device.json")
        device["broker"]["port"] = 1  # nothing listens there: the trial cannot connect
        device["trial_s"] = 5
        dev.command(101, "config", {"device": device})
        assert listener.wait(lambda m: any(x[0] == topics.ACK and x[1]["id"] == 101 for x in m), 40), dev.console()
        bad = dev.read("profile.json")
        bad["sensors"][0]["driver"] = "no-such-driver"
        dev.command(102, "config", {"profile": bad})
        assert listener.wait(lambda m: any(x[0] == topics.ACK and x[1]["id"] == 102 for x in m), 20), dev.console()
        final_profile, final_device = dev.read("profile.json"), dev.read("device.json")
        assert listener.wait(lambda m: len(online_births(listener)) >= 5, 20), dev.console()
    listener.close()
    # A soft reset follows each check but a trial's, and the next start reports the reset it followed;
    # a confirmed trial reboots once its ack is out, so no boot runs on after its checks.
    assert dev.soft_resets == 3, "the fresh flash, the two rollbacks; the trials are checked at every boot instead"
    births = online_births(listener)
    assert [b["rst"] for b in births] == ["power-on", "soft", "soft", "soft", "soft"]
    # 2: the trial, 3: after it; 4: the trial that never connected, 5: after its rollback; the trial that
    # failed its check was rolled back and soft-reset before it was counted, so 6 is the boot after it
    assert [b["boot"] for b in births] == [1, 2, 3, 5, 6]
    acks = {a["id"]: a for a in listener.of(topics.ACK)}
    assert (acks[100]["ok"], acks[100]["res"]) == (True, "config applied")
    assert acks[101]["ok"] is False and "no broker connection" in acks[101]["res"]
    assert acks[102]["ok"] is False and "driver" in acks[102]["res"]
    assert final_profile["report_s"] == 7 and final_device["broker"]["port"] == broker.port
    assert not list(dev.flash.glob("*.prev")) and not (dev.flash / "trial.json").exists()


def test_readings_before_time_sync_are_boot_relative_then_corrected(tmp_path: Path, mpy: Path,
                                                                  broker: Mosquitto) -> None:
    listener = Listener(broker.port, SITE, DEV)
    with FlashDirDevice(tmp_path / "flash", mpy, fast_gas(report_s=1), broker.port, {"ch4": [[0, 2.0], [30, 9.0]]},
                       ntp=False) as dev:
        assert listener.wait(lambda m: len([x for x in m if x[0] == topics.DATA]) >= 2, 20), dev.console()
        assert dev.control(ntp=True)["ok"]
        time.sleep(0.5)  # the device polls its world every 100 ms
        synced = time.time()
        dev.command(5, "sync_time", {})
        assert listener.wait(lambda m: any(x[0] == topics.EVENT and x[1]["ev"] == "clock" for x in m),
                             10), dev.console()
        assert listener.wait(lambda m: any(x[0] == topics.DATA and x[1]["clk"] == 0 for x in m), 10)
    listener.close()
    data = listener.of(topics.DATA)
    early = [b for b in data if b["clk"] == message.CLK_BOOT]
    assert early and all(r["t"] < 100 for b in early for r in readings(b, "ch4")), "seconds since boot"
    boot_t = readings(next(b for b in listener.of(topics.EVENT) if b["ev"] == "clock"), "boot_t")[0]["v"]
    assert abs(boot_t - (synced - 30)) < 40, "the epoch of boot, to correct the early packs with"
    late = [r for b in data if b["clk"] == message.CLK_EPOCH for r in readings(b, "ch4")]
    assert late and all(abs(r["t"] - time.time()) < 60 for r in late)
    ack = listener.of(topics.ACK)[0]
    assert ack["ok"] and ack["res"]["clk"] == message.CLK_EPOCH


def run_every_profile(tmp_path: Path, mpy: Path, broker: Mosquitto, heap: str, romfs: Path | None = None,
                      hal: str = "sim") -> tuple[dict[str, FlashDirDevice], dict[str, Listener]]:
    """All six profiles with their real drivers, sped up, side by side for a bounded run, checked for no
    MemoryError, no traceback, no exit other than deep sleep, data on the broker. Halfway through, each
    awake profile takes a set_filters command, which loads the command path beside the running node, and
    must ack it (a sleeping profile is asleep when it would arrive)."""
    devices, listeners = {}, {}
    for name in STIMULUS:
        dev_id = f"{name}-01"
        listeners[name] = Listener(broker.port, SITE, dev_id)
        devices[name] = FlashDirDevice(tmp_path / name, mpy, sped_up(name), broker.port, STIMULUS[name], dev=dev_id,
                                      heap=heap, romfs=romfs, hal=hal).start()
    try:
        time.sleep(RUN_S / 2)
        for dev in devices.values():
            if not dev.profile.get("sleep"):
                sensor = dev.profile["sensors"][0]
                metric = next(iter(sensor["metrics"]))
                dev.command(5, "set_filters", {metric: sensor["metrics"][metric]["filters"]})
        time.sleep(RUN_S / 2)
    finally:
        for dev in devices.values():
            dev.stop()
    problems = []
    for name, dev in devices.items():
        listeners[name].close()
        console = dev.console()
        sleeps = {4} if dev.profile.get("sleep") else set()
        sent = listeners[name].of(topics.DATA) + listeners[name].of(topics.EVENT)
        births = online_births(listeners[name])
        acks = listeners[name].of(topics.ACK)
        if "MemoryError" in console or "Traceback" in console or not set(dev.exits) <= sleeps:
            problems.append(f"{name}: exits {dev.exits}\n{console[-1500:]}")
        elif not sent or not births or min(b["heap"] for b in births) <= 0:
            problems.append(f"{name}: {len(sent)} messages, {len(births)} births")
        elif not dev.profile.get("sleep") and [(a["id"], a["ok"]) for a in acks] != [(5, True)]:
            problems.append(f"{name}: acks {acks}\n{console[-1500:]}")
    assert not problems, "\n".join(problems)
    for body in listeners["drone"].of(topics.DATA):  # every drone pack carries position and fix quality
        assert {"lat", "lon", "fix"} <= {r["n"] for r in senml_resolve.resolve(list(body["e"]))}, body
    return devices, listeners


NAME_POOLS = 5  # past 620 interned names MicroPython adds a sixth pool, 640 entries in one 7 KB block


def name_pools(console: str) -> tuple[int, int]:
    """The most name pools and interned names a virtual device's sim printed (micropython.qstr_info)."""
    found = [(int(p), int(n)) for p, n in re.findall(r"n_pool=(\d+), n_qstr=(\d+)", console)]
    return max(found, default=(0, 0))


@pytest.mark.parametrize("deploy", ["files", "romfs"])
def test_every_profile_runs_within_the_heap(tmp_path: Path, mpy: Path, broker: Mosquitto, deploy: str) -> None:
    """run_every_profile at the firmware's heap: once with the firmware as .mpy files, once as a ROMFS
    image, the only place that deployment imports from (firmware/sim/simrom.py). Either way every node
    stays under the name line: a change that took them past it cost every profile 3.5wK (docs/firmware.md,
    "The name line again"); from ROMFS, where the sim's start-up adds names, four profiles were past it
    unseen, 3.5-3.9wK each ("ROMFS")."""
    romfs = build_romfs(mpy) if deploy == "romfs" else None
    devices, listeners = run_every_profile(tmp_path, mpy, broker, FIRMWARE_HEAP, romfs=romfs)
    pools = {name: name_pools(dev.console()) for name, dev in devices.items()}
    print("name pools, names:", pools)
    assert all(0 < p <= NAME_POOLS for p, _ in pools.values()), f"past the name line: {pools}"
    routine = sorted(r["t"] for b in listeners["water"].of(topics.DATA) if not b["pri"]
                     for r in readings(b, "pressure"))
    assert any(b - a < 1 for a, b in itertools.pairwise(routine)), \
        f"a burst samples water pressure faster than its 2 s schedule: {routine}"


def test_every_profile_runs_on_the_esp32_backend(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """run_every_profile with hal/esp32.py as the backend: each profile's buses made from its profile
    entry through machine (ADC, I2C, UART, Pin with its IRQ), network.WLAN, machine.WDT, RTC memory,
    the EXT0 wake and deep sleep, against the sim world's models (firmware/sim/esp32_machine). Those
    modules bring the sim backend (hal_sim.py) in beside hal/esp32.py, so the heap is upy.ESP32_SIM_HEAP, not
    the firmware's."""
    devices, listeners = run_every_profile(tmp_path, mpy, broker, upy.ESP32_SIM_HEAP, hal="esp32")
    for name, dev in devices.items():
        births = online_births(listeners[name])
        # the config check's soft reset came first, and hal/esp32.py carried the power-on across it
        assert dev.soft_resets == 1 and births[0]["rst"] == "power-on", (name, births[0])
        assert all(b["rst"] == "deepsleep" for b in births[1:]), (name, [b["rst"] for b in births])
        sent = listeners[name].of(topics.DATA) + listeners[name].of(topics.EVENT)
        got = {r["n"] for b in sent for r in senml_resolve.resolve(list(b["e"]))}
        metrics = {m for s in dev.profile["sensors"] for m in s["metrics"]}
        assert metrics <= got, f"{name}: no readings of {metrics - got} through its bus"


RUN_S = 15
