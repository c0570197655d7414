"""lifeline.virtual.recorder.Recorder standing in for the duty officer (ack_alarms): the HIL bench and the demo's
live view, where no district desk answers the site's alarms."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.virtual import recorder
from lifeline.virtual.broker import Mosquitto
from protocol import district as dtopics


def test_an_escalation_is_acknowledged_afresh_after_the_officers_pause(tmp_path: Path) -> None:
    """The recorder acknowledged every alarm the moment it arrived, so an escalation was never left waiting
    for an officer: the site never showed an orange acknowledged, then red unacknowledged until its own ack.
    Now each ack goes ACK_AFTER_S after its alarm arrived, at the step it arrived with."""
    broker = Mosquitto(workdir=tmp_path).start()
    acks: list[tuple[float, object]] = []
    got = threading.Event()
    site = paho.Client(CallbackAPIVersion.VERSION2, client_id="site")

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        acks.append((time.monotonic(), cbor2.loads(msg.payload)))
        if len(acks) == 2:
            got.set()

    site.on_message = on_message
    site.connect(broker.host, broker.port)
    site.subscribe(dtopics.down("s1", dtopics.ALARM_ACK), qos=1)
    site.loop_start()
    district = recorder.Recorder(broker.host, broker.port, "s1", ack_alarms=True)
    try:
        assert district.subscribed.wait(10)
        sent = time.monotonic()
        for ev, level, step in (("raised", "orange", 0), ("escalated", "red", 1)):
            body = {"id": "a1", "ev": ev, "level": level, "step": step}
            site.publish(dtopics.up("s1", dtopics.ALARM), cbor2.dumps(body), qos=1).wait_for_publish(5)
        assert got.wait(10), acks
        # each on its own timer: under load the second may go first, which a site takes as it would an officer's
        assert sorted((body for _, body in acks), key=str) == [{"id": "a1", "step": 0}, {"id": "a1", "step": 1}]
        assert all(at - sent >= 1.0 for at, _ in acks), [at - sent for at, _ in acks]  # a pause, not at once
        assert district.acks == 2
    finally:
        district.close()
        site.loop_stop()
        site.disconnect()
        broker.stop()
