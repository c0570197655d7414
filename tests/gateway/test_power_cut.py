"""A power cut of the site box under load: the site broker and the gateway SIGKILLed together while the
gateway lags behind its broker, both started again (the broker from its persistence directory, as
deploy/mosquitto/site.conf has it), and every reading the devices took reaches the district exactly once
after de-duplication by (dev, seq).

The devices are the real firmware on the MicroPython unix port (lifeline/virtual/flashdir.py). Before
end-to-end delivery a device forgot a message at the site broker's PUBACK, and what the broker held only in
memory (it saves every 30 s) died with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from sitekit import District

from lifeline.virtual.faultlog import FaultLog
from lifeline.virtual.firmware import build_firmware
from lifeline.virtual.flashdir import KEY, FlashDirDevice
from lifeline.virtual.profiles import load_profile
from lifeline.virtual.site import GatewayProcess, Site

DEVICES = 3
LAG_S = 3.0  # the gateway falls this far behind its broker before the cut
OFF_S = 2.0  # the site box stays dark this long


def busy_gas() -> dict[str, Any]:
    """The gas profile sampling and reporting every second or so: a device under load."""
    p = load_profile("gas")
    p["report_s"], p["batch"], p["health_s"] = 1, 4, 4
    p["queue"]["resend_s"] = 4
    for s in p["sensors"]:
        s["sample_s"] = 0.5
        for m in s["metrics"].values():
            m["filters"] = [{"heartbeat": 0.5}]
    return p


def sealed(flash: Path) -> int:
    """The highest sequence number the device has used, from its queue's index on flash."""
    n: int = json.loads((flash / "q" / "idx").read_text())["n"]
    return n - 1


@pytest.mark.timeout(120)
async def test_power_cut_of_the_site_box_loses_no_reading(tmp_path: Path, fault_log: FaultLog) -> None:
    mpy = build_firmware(tmp_path / "mpy")
    s = Site(tmp_path / "site", tls=False)
    names = [f"gas{i}" for i in range(DEVICES)]
    for dev in names:
        s.add(dev, "gas", key=KEY)
    s.start()
    assert s.site_broker is not None
    gw = GatewayProcess(s).start()
    devices: list[FlashDirDevice] = []
    try:
        await gw.ready()
        for dev in names:
            d = FlashDirDevice(tmp_path / dev, mpy, busy_gas(), s.ports["site"], {"ch4": [[0, 2.0]]}, dev=dev,
                               site=s.id)
            d._write("device.json", {**d.read("device.json"),
                                      "broker": {"host": "127.0.0.1", "port": s.ports["site"], "user": dev}})
            d._write("secrets.json", {**d.read("secrets.json"), "mqtt_password": s.passwords[dev]})
            devices.append(d.start())
        async with District(s) as district:

            await district.wait_for(lambda: {dev for dev, _ in district.packs()} == set(names), 40)
            await asyncio.sleep(3.0)
            # The gateway lags (a slow disk, a burst): the broker holds what the devices sent meanwhile.
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(LAG_S)
            before = {d.dev: sealed(d.flash) for d in devices}
            # The power cut: both die at once, neither writes anything more.
            assert s.site_broker.proc is not None
            s.site_broker.proc.kill()
            gw.kill()
            s.site_broker.proc.wait()
            await asyncio.sleep(OFF_S)
            s.site_broker.start()  # same port, same persistence directory
            gw = GatewayProcess(s).start()
            await gw.ready()
            await asyncio.sleep(3.0)
            # Each device is power-cycled too: its queue, opened again, writes the exact next number to its
            # index, so `taken` covers every message sealed before this point.
            marks = {d.dev: (d.flash / "q" / "idx").stat().st_mtime_ns for d in devices}
            for d in devices:
                d.cut()
            while any((d.flash / "q" / "idx").stat().st_mtime_ns == marks[d.dev] for d in devices):
                await asyncio.sleep(0.05)
            taken = {d.dev: sealed(d.flash) for d in devices}

            def delivered() -> bool:
                got = district.packs()
                return all((dev, seq) in got for dev, top in taken.items() for seq in range(1, top + 1))

            try:
                await district.wait_for(delivered, 30)
            finally:
                got = district.packs()
                missing = {dev: [q for q in range(1, top + 1) if (dev, q) not in got] for dev, top in taken.items()}
                print(f"sealed before the cut {before}, by the end {taken}; missing {missing}")
        lost = sum(len(v) for v in missing.values())
        assert all(top > before[dev] for dev, top in taken.items()), "the devices ran on after the cut"
        assert not lost, f"{lost} messages lost: {missing}"
        duplicates = sum(got.values()) - len(got)
        fault_log.record("site box power cut (site broker and gateway SIGKILLed, gateway lagging)", injected=1,
                         unit="messages", sent=sum(taken.values()), delivered=len(got), duplicates=duplicates,
                         where="district")
    finally:
        for d in devices:
            d.stop()
        gw.kill()
        s.stop()
