"""app/commands.py's handle() run against a fake node on MicroPython: what a node does with a command that passed
its MAC and schema check but says something it must refuse. Each ack is sealed and measured as the node's MQTT
client would send it (max_packet 2048). Run from source at the node's heap, in a scratch directory that holds the
profile (test_app_units.py)."""

import asyncio
import json
import os

from drivercheck import eq

from app import commands
from protocol import message, topics

KEY = b"\x01" * 32
TOPIC = topics.device("site", "dev-1", topics.ACK)
PROFILE = {"report_s": 60, "batch": 4, "sensors": [{"name": "ch4", "sample_s": 5, "metrics": {"ch4": {}}}]}


class Clock:
    epoch0_ms = None  # no time yet: exp is not judged


class Node:
    """What handle() and its ops read of the app; each ack as it would go out."""

    def __init__(self):
        self.clock = Clock()
        self.recent = []
        self.safe = False
        self.fw = "1.0.0"
        self.sensors = []
        self.beats = {}
        self.acks = []
        with open("profile.json", "w") as f:
            json.dump(PROFILE, f)

    async def ack(self, cid, ok, res):
        sealed = message.encode(message.ack("dev-1", 1, cid, ok, res), KEY)
        if len(TOPIC) + len(sealed) + 4 > 2048:  # what MQTTClient.publish refuses, with a ValueError
            raise ValueError("message over max_packet")
        self.acks.append((cid, ok, res))

    def reject(self, reason):
        raise AssertionError("rejected: %s" % reason)

    def heap(self):
        return 0

    def reboot(self):
        raise AssertionError("rebooted")


def _handle(node, cid, op, args):
    asyncio.run(commands.handle(node, {"id": cid, "op": op, "args": args, "exp": 2000000000, "dev": "dev-1"}))


def case_a_refusal_that_quotes_a_long_command_is_still_acked():
    """An error names what the command said (its op, a sensor or metric name) with %r, which writes a control
    character as four: a 600-character op made a result of 2,400 and an ack over the client's max_packet, so
    the command was never answered (a ValueError out of handle)."""
    node = Node()
    _handle(node, 2, "\x01" * 600, {})
    _handle(node, 3, "set_filters", {"m" * 1500: []})
    eq([(a[0], a[1]) for a in node.acks], [(2, False), (3, False)], "acks")
    if not node.acks[0][2].startswith("unknown op") or not node.acks[1][2].startswith("no such metric"):
        raise AssertionError("results: %r" % [a[2][:20] for a in node.acks])
    _handle(node, 2, "\x01" * 600, {})  # redelivered: answered from memory, the same
    eq(node.acks[-1], node.acks[0], "the answer again")


def case_an_ota_whose_signature_is_not_hex_is_refused_at_once():
    """A sig of 128 characters that are not hex passed the form check: the node acked "updating", rebooted into
    the updater, which failed on it at each of its 5 boots (a traceback each) and reported only that it did not
    finish. It is refused with the command's ack now, and nothing is staged."""
    node = Node()
    _handle(node, 4, "ota", {"v": "2.0.0", "n": 100, "sig": "zz" * 64})
    eq(node.acks, [(4, False, "ota needs sig: 64 bytes in hex")], "acks")
    try:
        os.stat("ota.json")
    except OSError:
        return
    raise AssertionError("ota.json staged")
