"""`lifeline ota rollout` run again after one was interrupted (Ctrl-C, a dropped SSH session): the nodes the first
run sent the release go on downloading and land while the second runs; a node whose trial of the release rolled
back in an earlier run is left out unless asked; and what the rollout warns of at start. A real broker and the
gateway's store (written as the daemon writes it: gateway/ota_relay.Ledger, gateway/registry.Registry); the nodes
are paho clients that land on a command."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_rollout_refusals import release_dir

from gateway.ota_relay import Chunk, Ledger
from gateway.registry import Registry
from gateway.site_config import load
from lifeline import cli, ota
from lifeline.virtual.broker import Mosquitto
from protocol import topics

DEVICES = ("gas-01", "gas-02", "gas-03")
NEW = "0.2.0"


class Nodes:
    """Each node lands on 0.2.0 as its command arrives (its birth in the store); `also` lands with gas-01's,
    committed just before it."""

    def __init__(self, store: Path, port: int, also: tuple[str, ...]) -> None:
        self.conn = sqlite3.connect(store, check_same_thread=False)
        self.ledger = Ledger(self.conn)
        self.also = also
        self.commands: dict[str, int] = {}
        self.lock = threading.Lock()
        for dev in DEVICES:
            self._born(dev, "0.1.0", time.time() - 3600)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="nodes")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topics.device_filter("site-a", topics.CMD), qos=1)
        self.client.loop_start()

    def _born(self, dev: str, version: str, t: float) -> None:
        with self.lock:
            self.ledger.birth(dev, version, t)
            self.ledger.flush()
            self.conn.commit()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        dev = topics.parse_device(msg.topic)[1]
        self.commands[dev] = self.commands.get(dev, 0) + 1
        # `also` first: the rollout moves on once it reads gas-01 landed, and must find them landed by then
        for d in (*self.also, dev) if dev == "gas-01" else (dev,):
            self._born(d, NEW, time.time())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.conn.close()


def rollout(site: Path, served: Path, summary: Path, *options: str) -> int:
    """`lifeline ota rollout` of the release at `served` with `options`, its summary written to `summary`."""
    return cli.main(["ota", "rollout", "--config", str(site), "--release", str(served), *options,
                     "--summary", str(summary)])


def config(tmp_path: Path, served: Path, port: int) -> Path:
    path = tmp_path / "site.toml"
    devices = "".join(f'\n[[devices]]\nid = "{d}"\nclass = "gas"\nkey = "{bytes(32).hex()}"\n' for d in DEVICES)
    path.write_text(f'[site]\nid = "site-a"\n[site_broker]\nhost = "127.0.0.1"\nport = {port}\n'
                    f'[district_broker]\nhost = "127.0.0.1"\n[store]\npath = "{tmp_path / "gw.db"}"\n'
                    f'[ota]\nreleases = ["{served}"]\n{devices}')
    return path


def test_a_node_that_lands_before_its_stage_is_not_sent_the_release_again(
        tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    """gas-02 had the release from the interrupted run and lands while this run's canary updates: its wave
    found it running 0.2.0 and sent it the command all the same, a reboot into the updater for nothing, which
    refused the release (not above the version running) and told the district so as a failed update."""
    served = release_dir(tmp_path / NEW)
    site = config(tmp_path, served, broker.port)
    nodes = Nodes(tmp_path / "gw.db", broker.port, also=("gas-02",))
    summary = tmp_path / "summary.json"
    try:
        assert rollout(site, served, summary, "--canary", "1", "--stage-timeout", "20", "--poll", "0.1") == 0
    finally:
        nodes.close()
    out = capsys.readouterr().out
    assert nodes.commands == {"gas-01": 1, "gas-03": 1}, (nodes.commands, out)
    doc = json.loads(summary.read_text())
    assert doc["landed"] == list(DEVICES) and not doc["failed"] and not doc["pending"], doc
    assert "gas-02           already running 0.2.0" in out, out


def test_a_rollout_interrupted_while_it_sends_names_the_nodes_it_never_sent(
        tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or a hang-up) after the first of a stage's commands went out: the summary listed every node of the
    stage as sent and pending, none untouched, so a script resuming from it waited for nodes that never had the
    command, and the halt share's count was out by as many."""
    send = ota.Sender.send
    calls = []

    def send_once(self: ota.Sender, *args: Any) -> bool:
        calls.append(args)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return send(self, *args)

    monkeypatch.setattr(ota.Sender, "send", send_once)
    served = release_dir(tmp_path / NEW)
    site = config(tmp_path, served, broker.port)
    nodes = Nodes(tmp_path / "gw.db", broker.port, also=())
    summary = tmp_path / "summary.json"
    try:
        assert rollout(site, served, summary, "--canary", "3") == 130
    finally:
        nodes.close()
    doc = json.loads(summary.read_text())
    assert (doc["pending"], doc["untouched"]) == (["gas-01"], ["gas-02", "gas-03"]), doc


def test_a_node_still_downloading_the_release_is_followed_not_sent_it_again(
        tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    """gas-02 is downloading the release the interrupted run sent it when its wave comes: sent the command again,
    it took it once it had landed, rebooted into the updater, which refused the release as no newer, and its last
    outcome (ota status, the district) read "refused" on a node running it. Its download is followed instead."""
    served = release_dir(tmp_path / NEW)
    site = config(tmp_path, served, broker.port)
    nodes = Nodes(tmp_path / "gw.db", broker.port, also=())
    stop = threading.Event()

    def download() -> None:  # a chunk every 0.2 s, as the gateway records them; landed after 3 s
        for done in range(1, 16):
            with nodes.lock:
                nodes.ledger.progress(Chunk("", b"", "gas-02", NEW, done * 1024, 15 * 1024), time.time())
                nodes.ledger.flush()
                nodes.conn.commit()
            if stop.wait(0.2):
                return
        nodes._born("gas-02", NEW, time.time())

    downloading = threading.Thread(target=download)
    downloading.start()
    summary = tmp_path / "summary.json"
    try:
        assert rollout(site, served, summary, "--canary", "1", "--stage-timeout", "20", "--poll", "0.1") == 0
    finally:
        stop.set()
        downloading.join()
        nodes.close()
    out = capsys.readouterr().out
    assert nodes.commands == {"gas-01": 1, "gas-03": 1}, (nodes.commands, out)
    assert json.loads(summary.read_text())["landed"] == list(DEVICES)
    assert "gas-02           downloading 0.2.0 already" in out, out


def test_a_rerun_skips_the_nodes_whose_trial_of_the_release_rolled_back_unless_asked(
        tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    """gas-02 tried 0.2.0 in an earlier run and rolled back to its old image. Run again, the rollout sent it the
    release once more (it runs an older version), a download, a reboot and a trial that would most likely roll
    back the same way, for each such node of a large site. It is skipped and listed, in the output and the
    summary; --retry-rolled-back sends it the release as before."""
    served = release_dir(tmp_path / NEW)
    site = config(tmp_path, served, broker.port)
    nodes = Nodes(tmp_path / "gw.db", broker.port, also=())
    why = "rolled back: 2 boots without a confirmed connection"
    with nodes.lock:  # its "ota" event, as the gateway records it
        nodes.ledger.outcome("gas-02", NEW, False, why, time.time() - 600)
        nodes.ledger.flush()
        nodes.conn.commit()
    summary = tmp_path / "summary.json"
    try:
        assert rollout(site, served, summary, "--canary", "1", "--stage-timeout", "20", "--poll", "0.1") == 0
        out = " ".join(capsys.readouterr().out.split())
        assert nodes.commands == {"gas-01": 1, "gas-03": 1}, (nodes.commands, out)
        doc = json.loads(summary.read_text())
        assert (doc["landed"], doc["rolled_back"]) == (["gas-01", "gas-03"], {"gas-02": why}), doc
        assert f"skipped gas-02 (its trial of 0.2.0 {why})" in out, out
        assert "--retry-rolled-back sends it to them too" in out and "1 skipped as rolled back before: gas-02" in out
        assert rollout(site, served, summary, "--retry-rolled-back", "--stage-timeout", "20", "--poll", "0.1") == 0
    finally:
        nodes.close()
    assert nodes.commands == {"gas-01": 1, "gas-02": 1, "gas-03": 1}
    doc = json.loads(summary.read_text())
    assert (doc["landed"], doc["rolled_back"]) == (["gas-02"], {}), doc


def test_a_stage_timeout_within_a_sleeping_nodes_wake_interval_is_warned_of_at_start(
        tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    """gas-03 sleeps 300 s between wakes (its birth says so) and --stage-timeout is 20 s: it would hear the command
    only at its next wake and be counted failed at the stage's end though it only slept, and nothing said so
    before. The rollout warns on stderr before it sends anything, naming the node and its interval."""
    served = release_dir(tmp_path / NEW)
    site = config(tmp_path, served, broker.port)
    nodes = Nodes(tmp_path / "gw.db", broker.port, also=())
    registry = Registry(nodes.conn, load(site).devices)  # the births as the gateway stores them
    for dev, sleep in (("gas-01", 0), ("gas-03", 300)):
        registry.birth(dev, {"boot": 1, "fw": "0.1.0", "prof": "gas", "rst": "power-on", "clk": 0, "t": 5,
                             "sleep": sleep}, time.time(), live=True)
    registry.flush()
    nodes.conn.commit()
    summary = tmp_path / "summary.json"
    try:
        assert rollout(site, served, summary, "--canary", "1", "--stage-timeout", "20", "--poll", "0.1") == 0
    finally:
        nodes.close()
    err = " ".join(capsys.readouterr().err.split())
    assert ("warning: --stage-timeout 20 s is not above the wake interval of 1 node(s) (gas-03 300 s, from their "
            "births)") in err, err
    assert "give --stage-timeout above 300 s plus the download" in err, err
