"""What a node says in words (a refusing ack's reason, its "ota" outcome, the version its birth names) printed by
`lifeline ota rollout` and `ota status` as text: rich took "[/]" in it for a closing tag, and a rollout ended in
a MarkupError traceback mid-stage, its later stages never sent and no summary written."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_rollout_refusals import release_dir, site

from gateway.ota_relay import Ledger
from lifeline import cli, ota
from lifeline.virtual.broker import Mosquitto
from lifeline.virtual.site import ROOT, environment, lifeline_cmd
from protocol import message, message_check, topics

KEY = bytes(32)  # the key test_rollout_refusals.site gives gas-01
HOSTILE = "[/]no room [bold]"


@pytest.fixture
def refusing_node() -> Iterator[Mosquitto]:
    """A broker with gas-01 on it, refusing each command it is sent with HOSTILE as the reason."""
    with Mosquitto() as broker:
        node = paho.Client(CallbackAPIVersion.VERSION2, client_id="gas-01")

        def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
            body = message_check.decode(bytes(msg.payload), lambda kid: KEY, topics.CMD, loads=cbor2.loads)
            client.publish(topics.device("site-a", "gas-01", topics.ACK),
                           message.encode(message.ack("gas-01", 1, body["id"], False, HOSTILE), KEY), qos=1)

        node.on_message = on_message
        node.connect(broker.host, broker.port)
        node.subscribe(topics.device("site-a", "gas-01", topics.CMD), qos=1)
        node.loop_start()
        try:
            yield broker
        finally:
            node.loop_stop()
            node.disconnect()


def test_a_refusal_whose_reason_looks_like_markup(tmp_path: Path, refusing_node: Mosquitto,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    served = release_dir(tmp_path / "0.2.0")
    config = site(tmp_path, served, refusing_node.port)
    summary = tmp_path / "summary.json"
    assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--stage-timeout", "20",
                     "--poll", "0.1", "--summary", str(summary)]) == 1
    out = capsys.readouterr().out
    assert f"gas-01           failed: refused the command: {HOSTILE}" in out, out
    assert "0.2.0: 0 landed, 1 failed, 0 not sent" in out and summary.exists()


def test_ota_status_shows_a_nodes_words_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    store = tmp_path / "gw.db"
    conn = sqlite3.connect(store)
    ledger = Ledger(conn)
    ledger.birth("gas-01", "0.1[/]", 1_800_000_000.0)
    ledger.outcome("gas-01", "0.2.0", False, "rolled back: " + HOSTILE, 1_800_000_000.0)
    ledger.flush()
    conn.commit()
    conn.close()
    assert cli.main(["ota", "status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "0.1[/]" in out and f"0.2.0 rolled back: {HOSTILE}" in out, out


def test_an_interrupted_rollout_writes_its_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while a stage waits: the nodes already sent the release go on, and which they are is what the
    operator needs next; the rollout ended with "interrupted" alone, the --summary it was given never written."""
    def interrupt(self: ota.Rollout, stage: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ota.Rollout, "look", interrupt)
    served = release_dir(tmp_path / "0.2.0")
    summary = tmp_path / "summary.json"
    with Mosquitto() as broker:
        config = site(tmp_path, served, broker.port)
        assert cli.main(["ota", "rollout", "--config", str(config), "--release", str(served), "--summary",
                         str(summary)]) == 130
    doc = json.loads(summary.read_text())
    assert doc["pending"] == ["gas-01"] and doc["untouched"] == [] and doc["halted"].startswith("interrupted")
    assert "HALTED: interrupted" in capsys.readouterr().out


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_rollout_ended_by_a_signal_writes_its_summary(tmp_path: Path, signum: signal.Signals) -> None:
    """A dropped SSH session (SIGHUP) or a stop (SIGTERM) mid-stage ended the rollout at once, with nothing
    said and the --summary never written: which nodes had the release was lost. Ended as Ctrl-C ends it: the
    outcome so far written, exit 128 + the signal."""
    served = release_dir(tmp_path / "0.2.0")
    summary = tmp_path / "summary.json"
    with Mosquitto() as broker:  # gas-01 is not on it: the stage waits
        config = site(tmp_path, served, broker.port)
        proc = subprocess.Popen([*lifeline_cmd(), "ota", "rollout", "--config", str(config), "--release",
                                 str(served), "--stage-timeout", "120", "--summary", str(summary)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(),
                                cwd=ROOT)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "gas-01" in line and "waiting" in line:
                    break
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signum, (out, err)
    doc = json.loads(summary.read_text())
    assert doc["pending"] == ["gas-01"] and doc["halted"].startswith(f"ended by {signum.name}"), doc
    assert f"HALTED: ended by {signum.name}" in out, out
