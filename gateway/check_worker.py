"""A check process (gateway/check_stage.py): it decodes and authenticates device messages for the ingest.

It reads frames from stdin and writes frames to stdout. A frame is a 4-byte big-endian length and a pickle.
- In: ("devices", DeviceList), the registry at start and after each reload.
- In: ("batch", [(topic, raw), ...]).
- Out, for each batch: one list with an `admission.Decoded`, or None, per message. None means the topic is not
  a device uplink topic; the ingest judges those itself.

Only the gateway writes to this process, so its pickles are trusted. The process ends when its stdin ends:
the gateway closed it, or the gateway died. Ctrl-C and SIGTERM are the gateway's to handle, so they are
ignored here: the gateway may still send batches while it drains.
"""

from __future__ import annotations

import logging
import pickle
import signal
import struct
import sys
import time
from typing import Any, BinaryIO, cast

from gateway.device_list import DeviceList
from gateway.message_decode import Decoded, decode
from protocol import topics

log = logging.getLogger("lifeline.gateway.check_worker")
HEAD = struct.Struct(">I")
BUG_LOG_S = 60.0  # a bug's traceback, at most this often (the quarantine's default log interval)


class _Bugs:
    """Messages whose decoding met a bug. The ingest quarantines, counts and logs each as "internal"; here its
    traceback is logged once an interval, with how many met one since, or a device repeating such a message
    would put a traceback a message in the journal."""

    def __init__(self) -> None:
        self.logged_at: float | None = None
        self.since = 0

    def met(self, topic: str, exc: Exception) -> None:
        self.since += 1
        now = time.monotonic()
        if self.logged_at is None or now - self.logged_at >= BUG_LOG_S:
            log.error("decoding a message on %s failed (%d since the last such line)", topic, self.since,
                      exc_info=exc)
            self.logged_at, self.since = now, 0


_BUGS = _Bugs()


def check_batch(devices: DeviceList, batch: list[tuple[str, bytes]]) -> list[Decoded | None]:
    out: list[Decoded | None] = []
    for topic, raw in batch:
        try:
            kind = topics.parse_device(topic)[2]
        except topics.TopicError:
            out.append(None)
            continue
        if kind == topics.CMD:
            out.append(None)
            continue
        try:
            out.append(decode(kind, raw, devices.key_for))
        except Exception as exc:  # a bug: the message is quarantined as "internal", the rest go on
            _BUGS.met(topic, exc)
            out.append((False, "internal", f"{type(exc).__name__}: {exc}"))
    return out


def read_frame(stream: BinaryIO) -> tuple[str, Any] | None:
    """The next frame's (what, value), or None at the end of the stream. Only the gateway writes here."""
    head = stream.read(HEAD.size)
    if len(head) < HEAD.size:
        return None
    return cast(tuple[str, Any], pickle.loads(stream.read(HEAD.unpack(head)[0])))


def frame(obj: object) -> bytes:
    body = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return HEAD.pack(len(body)) + body


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="check process %(process)d: %(message)s")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    devices = DeviceList()
    while (msg := read_frame(stdin)) is not None:
        what, value = msg
        if what == "devices":
            devices = value
        else:
            stdout.write(frame(check_batch(devices, value)))
            stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
