"""Releases relayed to nodes over the site broker (docs/ota.md): a node updating asks for a range of a
release's bytes on its `otareq` topic and gets them on its `ota` topic. The gateway holds each release once,
in memory, and serves every node from it. It cannot make or alter a release that a node would take: nodes
check the manifest's Ed25519 signature with the district's public key, and each file against the manifest.

A request is text, "version offset length". One that names an unknown release, runs past its end, asks for
more than MAX_CHUNK, does not parse or comes from a device the registry does not list is answered with
nothing, counted by reason in `refused`, and logged once per reason; the node asks again and in the end gives
up on its own.

Each release is offered upstream (district_wire.ReleaseOffer) so that a district desk can roll it out: its
version, profiles and the signed manifest's length and signature, all a node's `ota` command carries.

The Ledger is the gateway's view of each node's update, kept in the store for `lifeline ota status` and
`lifeline ota rollout`: the version its last birth named, how far its download has got (the offsets it asks
for: the updater keeps no other record and seals nothing, so its requests are its progress report), and the
outcome its last sealed "ota" event reported. Progress also goes upstream (`report`), at most every
REPORT_S, for the nodes whose download moved: births and outcomes reach the district sealed by the nodes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Container
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway import release_dir
from gateway.district_wire import OtaProgress, ReleaseOffer
from gateway.logs import event
from protocol import topics

log = logging.getLogger("lifeline.gateway.ota_relay")

MAX_CHUNK = 2048  # the node asks for 1 KB; its MQTT client takes packets up to a little more


@dataclass(frozen=True)
class Chunk:
    """The answer to one request, and what it tells of the node's progress."""

    topic: str
    payload: bytes
    dev: str
    version: str
    end: int  # the node holds this many bytes of the release once it has this chunk
    total: int


@dataclass(frozen=True)
class Served:
    """One release as served: its bytes, and what the district is told of it."""

    data: bytes
    offer: ReleaseOffer


class Releases:
    """The releases this gateway serves, by version, and the answers to nodes' requests."""

    def __init__(self, site: str) -> None:
        self.site = site
        self._served: dict[str, Served] = {}
        self.refused: Counter[str] = Counter()
        self.served = 0

    def add_dir(self, release_dir: Path) -> str:
        """A release built by `lifeline release build`: its release.bin, under its manifest's version."""
        release = _read_dir(release_dir)
        self._served[release.offer["v"]] = release
        return release.offer["v"]

    def replace(self, dirs: tuple[Path, ...]) -> None:
        """Serve exactly these release directories (site.toml's [ota] releases, at start and on SIGHUP); when
        one cannot be read, the error is raised and the releases served so far stay."""
        served = [_read_dir(d) for d in dirs]
        self._served = {r.offer["v"]: r for r in served}

    def versions(self) -> list[str]:
        return sorted(self._served)

    def offers(self) -> list[ReleaseOffer]:
        return [self._served[v].offer for v in self.versions()]

    def _refuse(self, reason: str, dev: str) -> None:
        if not self.refused[reason]:
            event(log, "ota-request-refused", logging.WARNING, reason=reason, dev=dev)
        self.refused[reason] += 1

    def answer(self, topic: str, payload: bytes, devices: Container[str] | None = None) -> Chunk | None:
        """The chunk a request asks for, or None when it is refused. `devices`: the registry, when a request
        from a device outside it is to be refused (the daemon's; the site broker's ACL is the first check)."""
        try:
            site, dev, kind = topics.parse_device(topic)
        except topics.TopicError:
            self._refuse("topic", "?")
            return None
        if site != self.site or kind != topics.OTA_REQ:
            self._refuse("topic", dev)
            return None
        if devices is not None and dev not in devices:
            self._refuse("unknown device", dev)
            return None
        try:
            version, off_text, n_text = payload.decode("ascii").split(" ")
            off, n = int(off_text), int(n_text)
        except (UnicodeDecodeError, ValueError):
            self._refuse("malformed", dev)
            return None
        release = self._served.get(version)
        if release is None:
            self._refuse("unknown release", dev)
            return None
        data = release.data
        if not 0 < n <= MAX_CHUNK or off < 0 or off + n > len(data):
            self._refuse("out of range", dev)
            return None
        self.served += 1
        return Chunk(topics.device(site, dev, topics.OTA), off.to_bytes(4, "big") + data[off:off + n], dev, version,
                     off + n, len(data))


def _read_dir(path: Path) -> Served:
    r = release_dir.read(path)
    return Served(r.data, ReleaseOffer(v=r.version, profiles=list(r.profiles), n=r.manifest_len, sig=r.signature,
                                       size=len(r.data)))


@dataclass
class NodeOta:
    """One node's update as the gateway has seen it."""

    dev: str
    running: str = ""  # the version its last birth named (sealed by the node, checked by the gateway)
    born_at: float | None = None
    target: str = ""  # the release it last asked bytes of
    done: int = 0
    total: int = 0
    asked_at: float | None = None
    outcome_v: str = ""  # its last "ota" event: the version, whether it runs, and why (refused, rolled back)
    ok: bool | None = None
    res: str = ""
    outcome_at: float | None = None


class Ledger:
    """NodeOta by device, written to the store with the daemon's commits. Chunk requests change it a
    thousand times a megabyte, so it is kept in memory and written when the daemon next commits (once a
    second at most for progress alone: the tick)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.execute("CREATE TABLE IF NOT EXISTS ota_node (dev TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        self.nodes = read(conn)
        self._dirty: set[str] = set()
        self._moved: set[str] = set()  # downloads that moved since the last report upstream

    def _node(self, dev: str) -> NodeOta:
        self._dirty.add(dev)
        return self.nodes.setdefault(dev, NodeOta(dev))

    def birth(self, dev: str, fw: str, now: float) -> None:
        n = self._node(dev)
        n.running, n.born_at = fw, now

    def progress(self, c: Chunk, now: float) -> None:
        n = self._node(c.dev)
        n.target, n.done, n.total, n.asked_at = c.version, c.end, c.total, now
        self._moved.add(c.dev)

    def outcome(self, dev: str, version: str, ok: bool, res: str, now: float) -> None:
        n = self._node(dev)
        n.outcome_v, n.ok, n.res, n.outcome_at = version, ok, res, now
        if ok and n.target == version and n.done != n.total:
            n.done = n.total  # it runs the release, so every byte arrived, whatever the last request said
            self._moved.add(dev)

    def report(self) -> list[OtaProgress]:
        """The downloads that moved since the last call, for upstream."""
        moved, self._moved = sorted(self._moved), set()
        return [OtaProgress(dev=d, v=n.target, done=n.done, total=n.total, t=n.asked_at or 0.0)
                for d in moved if (n := self.nodes.get(d)) is not None and n.target]

    def rollback(self) -> None:
        """The daemon rolled its transaction back: forget what it has not committed (progress comes again
        with the next request)."""
        self.nodes = read(self._conn)
        self._dirty.clear()

    def flush(self) -> None:
        """Write what changed into the caller's transaction."""
        if self._dirty:
            self._conn.executemany("INSERT OR REPLACE INTO ota_node (dev, doc) VALUES (?, ?)",
                                   [(d, json.dumps(asdict(self.nodes[d]))) for d in sorted(self._dirty)])
            self._dirty.clear()


def read(conn: sqlite3.Connection) -> dict[str, NodeOta]:
    """Every node's NodeOta from a gateway store (empty before the daemon has made the table)."""
    try:
        rows = conn.execute("SELECT dev, doc FROM ota_node").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {dev: NodeOta(**json.loads(doc)) for dev, doc in rows}
