"""A power cut at each step of a `config` replacement (tests/firmware/upy/cutboot.py): the real firmware on
virtual devices, a real Mosquitto. Whatever step the cut falls on, the node ends with either the whole new
config, acked "config applied", or the whole old one (acked ok=false, or not acked when the cut came before
the trial was recorded): never "config applied" over a partial set of files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from upy_support import WrappedDevice

from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.listener import Listener
from lifeline.virtual.profiles import load_profile
from protocol import message, topics

SITE = "site-a"
STEPS = 14  # renames and removals of a whole replacement (device and profile) are 13: the last run is uncut
CMD = 300
PROBE = 301


class CutDevice(WrappedDevice):
    """A FlashDirDevice whose power is cut at step `cut` of a config replacement."""

    script = "cutboot.py"

    def __init__(self, *args: Any, cut: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        (self.flash / ".cut").write_text(str(cut))
        self.probed = False  # settled() has sent its probe


def quiet_gas() -> dict[str, Any]:
    p = load_profile("gas")
    p["report_s"] = 600
    return p


def acks(listener: Listener) -> list[tuple[bool, str]]:
    return [(a["ok"], a["res"]) for a in listener.of(topics.ACK) if a["id"] == CMD]


def births(listener: Listener) -> list[int]:
    return [b["boot"] for b in listener.of(topics.STATE) if b["st"] == message.ONLINE]


def settled(dev: CutDevice, listener: Listener, boot: int) -> bool:
    """Whether the command's ack has come or never will. A cut before trial.json was written loses the command
    (its PUBACK went out as it arrived), and nothing acks it: once the node is born again after the cut, a
    probe (sync_time) is sent, and its ack, with no trial and no verdict on flash, says that no config command
    is left to run (commands run one at a time, in order). Waiting out a fixed minute for those acks was most
    of this test's time."""
    if acks(listener):
        return True
    if not any(b > boot for b in births(listener)):
        return False
    if not any(a["id"] == PROBE for a in listener.of(topics.ACK)):
        if not dev.probed:
            dev.probed = True
            dev.command(PROBE, "sync_time", {})
        return False
    return not any((dev.flash / name).exists() for name in ("trial.json", "cfgack.json"))


@pytest.mark.parametrize("steps", [range(0, 7), range(7, STEPS)])  # seven boards at a time: the machine is small
def test_power_cut_at_any_step_of_a_config_replacement(tmp_path: Path, mpy: Path, broker: Mosquitto,
                                                       steps: range) -> None:
    """A cut after trial.json was written and before every rename was done left the next boot on a partial set
    (the old profile under the new device.json, or the old files under a trial): it loaded, connected and
    acked "config applied"."""
    devices, listeners = {}, {}
    for k in steps:
        dev_id = f"cut-{k:02d}"
        listeners[k] = Listener(broker.port, SITE, dev_id)
        devices[k] = CutDevice(tmp_path / dev_id, mpy, quiet_gas(), broker.port, {"ch4": [[0, 2.0]]}, dev=dev_id,
                               cut=k).start()
    try:
        for k, dev in devices.items():
            assert listeners[k].wait(lambda m: any(x[0] == topics.STATE for x in m), 30), dev.console()
        old = {k: (dev.read("device.json"), dev.read("profile.json")) for k, dev in devices.items()}
        boots = {k: births(listeners[k])[-1] for k in devices}  # the boot that takes the command
        new = {}
        for k, dev in devices.items():
            device, profile = dict(old[k][0]), dict(old[k][1])
            device["trial_s"] = 60
            profile["report_s"] = 300
            new[k] = (device, profile)
            dev.command(CMD, "config", {"device": device, "profile": profile}, exp=int(time.time()) + 120)
        deadline = time.monotonic() + 60
        pending = set(devices)
        while pending and time.monotonic() < deadline:
            for k in list(pending):
                if settled(devices[k], listeners[k], boots[k]):
                    pending.discard(k)
            time.sleep(0.1)
        time.sleep(3)  # a second ack, if one came, and the reboot after a confirmation
    finally:
        for dev in devices.values():
            dev.stop()
    problems = []
    for k, dev in devices.items():
        listeners[k].close()
        files = (dev.read("device.json"), dev.read("profile.json"))
        got = acks(listeners[k])
        state = "new" if files == new[k] else "old" if files == old[k] else "mixed"
        left = sorted(p.name for p in dev.flash.iterdir() if p.name.endswith(".new") or p.name == "trial.json")
        if state == "mixed" or len(set(got)) > 1:
            problems.append(f"cut {k}: {state} files, acks {got}")
        elif got and got[0] == (True, "config applied") and state != "new":
            problems.append(f"cut {k}: acked applied over the {state} files")
        elif got and not got[0][0] and state != "old":
            problems.append(f"cut {k}: acked {got[0]} over the {state} files")
        elif got and left:
            problems.append(f"cut {k}: acked, and left {left}")
        if k == STEPS - 1 and ((dev.flash / ".cut").exists() is False or got != [(True, "config applied")]):
            problems.append(f"uncut run: acks {got}, .cut {'kept' if (dev.flash / '.cut').exists() else 'gone'}")
    assert not problems, "\n".join(problems)
