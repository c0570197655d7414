"""Releases relayed to nodes over the site broker (docs/ota.md): a node updating asks for a range of a
release's bytes on its `otareq` topic and gets them on its `ota` topic. The gateway holds each release once,
in memory, and serves every node from it. It cannot make or alter a release that a node would take: nodes
check the manifest's Ed25519 signature with the district's public key, and each file against the manifest.

A request is text, "version offset length". One that names an unknown release, runs past its end, asks for
more than MAX_CHUNK or does not parse is answered with nothing, counted by reason in `refused`, and logged
once per reason; the node asks again and in the end gives up on its own.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from gateway.logs import event
from protocol import topics

log = logging.getLogger("lifeline.gateway.ota_relay")

MAX_CHUNK = 2048  # the node asks for 1 KB; its MQTT client takes packets up to a little more


class Releases:
    """The releases this gateway serves, by version, and the answers to nodes' requests."""

    def __init__(self, site: str) -> None:
        self.site = site
        self._data: dict[str, bytes] = {}
        self.refused: Counter[str] = Counter()
        self.served = 0

    def add(self, version: str, data: bytes) -> None:
        self._data[version] = data

    def add_dir(self, release_dir: Path) -> str:
        """A release built by `lifeline release build`: its release.bin, under its manifest's version."""
        import json

        version = str(json.loads((release_dir / "manifest.json").read_bytes())["version"])
        self.add(version, (release_dir / "release.bin").read_bytes())
        return version

    def versions(self) -> list[str]:
        return sorted(self._data)

    def _refuse(self, reason: str, dev: str) -> None:
        if not self.refused[reason]:
            event(log, "ota-request-refused", logging.WARNING, reason=reason, dev=dev)
        self.refused[reason] += 1

    def answer(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """(topic, payload) of the chunk a request asks for, or None when it is refused."""
        try:
            site, dev, kind = topics.parse_device(topic)
        except topics.TopicError:
            self._refuse("topic", "?")
            return None
        if site != self.site or kind != topics.OTA_REQ:
            self._refuse("topic", dev)
            return None
        try:
            version, off_text, n_text = payload.decode("ascii").split(" ")
            off, n = int(off_text), int(n_text)
        except (UnicodeDecodeError, ValueError):
            self._refuse("malformed", dev)
            return None
        data = self._data.get(version)
        if data is None:
            self._refuse("unknown release", dev)
            return None
        if not 0 < n <= MAX_CHUNK or off < 0 or off + n > len(data):
            self._refuse("out of range", dev)
            return None
        self.served += 1
        return topics.device(site, dev, topics.OTA), off.to_bytes(4, "big") + data[off:off + n]
