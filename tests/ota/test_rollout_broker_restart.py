"""`lifeline ota rollout` across a restart of the site broker (an upgrade of Mosquitto, a site box rebooting it):
a command sent while the broker is away goes out when it is back, and the nodes' acks still reach the rollout.
The send ended the rollout in a RuntimeError traceback ("The client is not currently connected"), its later
stages never sent and no summary written."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_rollout_refusals import release_dir

from gateway.ota_relay import Ledger
from lifeline import cli
from lifeline.virtual.broker import Mosquitto
from protocol import message, message_check, topics

KEY = bytes(32)


def config(tmp_path: Path, port: int, served: Path, store: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(f'[site]\nid = "site-a"\n[site_broker]\nhost = "127.0.0.1"\nport = {port}\n'
                    f'[district_broker]\nhost = "127.0.0.1"\n[store]\npath = "{store}"\n'
                    f'[ota]\nreleases = ["{served}"]\n'
                    + "".join(f'\n[[devices]]\nid = "{d}"\nclass = "gas"\nkey = "{KEY.hex()}"\n'
                              for d in ("gas-01", "gas-02")))
    return path


class Nodes:
    """gas-01 and gas-02 behind one persistent session: gas-01 takes the command and comes back on the release
    (its birth written into the gateway's store, as the gateway would), then the broker goes down for 2 s;
    gas-02 refuses it in its ack. `commands` lists the devices the broker delivered commands for, once each."""

    def __init__(self, broker: Mosquitto, store: Path) -> None:
        self.broker, self.store = broker, store
        self.commands: list[str] = []
        self.restarted = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="nodes", clean_session=False)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.device_filter("site-a", topics.CMD), 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        _, dev, _ = topics.parse_device(msg.topic)
        body = message_check.decode(bytes(msg.payload), lambda kid: KEY, topics.CMD, loads=cbor2.loads)
        if dev in self.commands:  # again: the broker had not had this client's PUBACK when it went down
            return
        self.commands.append(dev)
        if dev == "gas-01":
            self.broker.stop()
            with sqlite3.connect(self.store) as conn:
                ledger = Ledger(conn)
                ledger.birth(dev, "0.2.0", time.time())
                ledger.flush()
            conn.close()
            threading.Timer(2.0, self._restart).start()
        else:
            client.publish(topics.device("site-a", dev, topics.ACK),
                           message.encode(message.ack(dev, 1, body["id"], False, "no room"), KEY), qos=1)

    def _restart(self) -> None:
        self.broker.start()
        self.restarted.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_rollout_goes_on_across_a_broker_restart(tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    served = release_dir(tmp_path / "0.2.0")
    store = tmp_path / "gw.db"
    sqlite3.connect(store).close()
    nodes = Nodes(broker, store)
    summary = tmp_path / "summary.json"
    try:
        code = cli.main(["ota", "rollout", "--config", str(config(tmp_path, broker.port, served, store)),
                         "--release", str(served), "--canary", "1", "--stage-timeout", "30", "--poll", "0.1",
                         "--halt-share", "0.5", "--summary", str(summary)])
    finally:
        nodes.close()
    out = capsys.readouterr().out
    assert nodes.restarted.is_set() and nodes.commands == ["gas-01", "gas-02"], (nodes.commands, out)
    assert (f"site_broker 127.0.0.1:{broker.port}: not connected; the commands wait until it is back (the stage's "
            "timeout runs on)") in out, out
    assert "gas-02           failed: refused the command: no room" in out, out  # the ack, after the restart
    assert "0.2.0: 1 landed, 1 failed, 0 not sent" in out and summary.exists(), out
    assert code == 1
