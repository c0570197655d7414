"""device.json broker.tls: the node takes only a broker whose certificate the CA on its flash signed
(broker_ca.der, written by `lifeline flash --tls`; app.tls), on the firmware's heap; without that CA it is a
config error at boot, never TLS that takes any certificate. The impostor broker: tests/hil/test_flash.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lifeline import flash
from lifeline.virtual.broker import Mosquitto, free_port
from lifeline.virtual.flashdir import FlashDirDevice
from lifeline.virtual.listener import Listener
from lifeline.virtual.site import make_pki
from protocol import topics
from tests.firmware.test_device import DEV, SITE, fast_gas


def tls_on(dev: FlashDirDevice, port: int, ca: Path | None) -> None:
    """The device's broker over TLS at `port`, with the CA as `lifeline flash --tls` writes it (or none)."""
    d = dev.read("device.json")
    d["broker"].update(port=port, tls=True)
    (dev.flash / "device.json").write_text(json.dumps(d))
    if ca is not None:
        (dev.flash / flash.BROKER_CA).write_bytes(flash.read_ca(ca))


@contextmanager
def tls_node(tmp_path: Path, mpy: Path) -> Iterator[tuple[FlashDirDevice, Listener]]:
    """A gas node (not started) with its CA on flash, and a listener, on a Mosquitto TLS listener whose
    certificate that CA signed for 127.0.0.1; the node stopped on the way out."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    with Mosquitto(f"listener {port} 127.0.0.1\ncertfile {pki['server.crt']}\nkeyfile {pki['server.key']}\n") as b:
        listener = Listener(b.port, SITE, DEV)
        dev = FlashDirDevice(tmp_path / "flash", mpy, fast_gas(), b.port, {"ch4": [[0, 2.0]], "temp": [[0, 11.5]]})
        tls_on(dev, port, pki["ca"])
        try:
            yield dev, listener
        finally:
            dev.stop()
        listener.close()


def test_a_node_with_its_ca_on_flash_publishes_over_tls_within_the_heap(tmp_path: Path, mpy: Path) -> None:
    """At 64wK, against a Mosquitto TLS listener whose certificate that CA signed for 127.0.0.1 (the heap it
    costs every profile: docs/firmware.md, Memory, "TLS")."""
    with tls_node(tmp_path, mpy) as (dev, listener):
        dev.start()
        ok = listener.wait(lambda m: len([x for x in m if x[0] == topics.DATA]) >= 2, 30)
    console = dev.console()
    assert ok, console
    assert "MemoryError" not in console and "Traceback" not in console, console
    assert listener.of(topics.STATE)[0]["heap"] > 0


def test_tls_without_the_ca_on_flash_is_a_config_error(tmp_path: Path, mpy: Path, broker: Mosquitto) -> None:
    """It connected with TLS that took any certificate. The config check names the missing file, and the node
    never reaches a broker: a node in the field is flashed again, not left talking to whoever answers."""
    listener = Listener(broker.port, SITE, DEV)
    dev = FlashDirDevice(tmp_path / "flash", mpy, fast_gas(), broker.port)
    tls_on(dev, broker.port, None)
    try:
        dev.start()
        deadline = time.monotonic() + 15
        while "broker.tls needs broker_ca.der" not in dev.console() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    finally:
        dev.stop()
    console = dev.console()
    listener.close()
    assert "config: device.json: broker.tls needs broker_ca.der, the broker's CA certificate (DER) on flash " \
           "(`lifeline flash --tls`): missing" in console, console
    assert listener.messages == []


def test_a_ca_damaged_after_the_config_check_is_a_config_error(tmp_path: Path, mpy: Path) -> None:
    """The check's stamp (app/checked.py) covered device.json, secrets.json and profile.json only, so a CA
    truncated or worn on flash after a clean boot went unchecked: each boot was counted and crashed in app.tls
    with the ssl module's bare "ValueError: invalid cert", into safe mode, which crashed the same way. Now a
    changed CA is checked again, and the node says which file and why, and backs off as from any config error."""
    with tls_node(tmp_path, mpy) as (dev, listener):
        dev.start()
        assert listener.wait(lambda m: any(x[0] == topics.DATA for x in m), 30), dev.console()
        ca = dev.flash / flash.BROKER_CA
        ca.write_bytes(ca.read_bytes()[:200])  # a half-written file
        dev.kill()
        deadline = time.monotonic() + 20
        while len(dev.exits) < 5 and time.monotonic() < deadline:  # the cut, three quick resets, a deep sleep
            time.sleep(0.1)
        exits = list(dev.exits)
    console = dev.console()
    assert "config: device.json: broker.tls needs broker_ca.der, the broker's CA certificate (DER) on flash " \
           "(`lifeline flash --tls`): invalid cert" in console, console[-3000:]
    assert "safe mode" not in console, console[-3000:]
    assert exits == [-9, 3, 3, 3, 4], exits
    state = dev.read("state.json")
    assert (state["boot"], state["err"]) == (1, 4), state  # no boot counted after the cut: config errors
