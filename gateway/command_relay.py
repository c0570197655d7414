"""District commands relayed to devices, and each one's result correlated for the district.

A command comes down as a `cmd` body (read by gateway.district_wire; the district broker's ACL lets only the
district write it and the gateway reads it over mutual TLS). It is re-sealed here with the device's own key
(protocol.message.command + encode), because a device trusts nothing else, and remembered in the store
until the device's ack or the deadline, whichever comes first; either way one result goes upstream on the
"ack" topic. Results and pending commands are written into the caller's transaction: nothing here commits.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import district_wire
from gateway.district_wire import CommandResult, DownlinkError
from gateway.logs import event
from gateway.registry import Registry
from protocol import message, topics

log = logging.getLogger("lifeline.gateway.command_relay")


@dataclass(frozen=True)
class Outgoing:
    """A sealed command for a device's command topic."""

    topic: str
    payload: bytes
    dev: str
    id: int


class Commands:
    def __init__(self, conn: sqlite3.Connection, site: str, registry: Registry, timeout_s: float = 30.0) -> None:
        self._conn = conn
        self.site = site
        self.registry = registry
        self.timeout_s = timeout_s
        conn.execute("CREATE TABLE IF NOT EXISTS command_pending (dev TEXT NOT NULL, id INTEGER NOT NULL, "
                     "op TEXT NOT NULL, sent_at REAL NOT NULL, deadline REAL NOT NULL, PRIMARY KEY (dev, id))")

    def command(self, payload: bytes, now: float,
                retained: bool = False) -> tuple[Outgoing | None, CommandResult | None]:
        """A district command: (sealed command for the device, None) or (None, a refusal for upstream). A retained
        one is refused: the broker delivers it again at every subscribe, and it would run at each reconnect."""
        sent: Mapping[str, Any] = {}
        try:
            sent = district_wire.downlink(payload)
            req = district_wire.command_request(sent)
            if retained:
                raise DownlinkError("retained: it would run again at every reconnect of the gateway")
            device = self.registry.devices.get(req.dev)
            if device is None:
                raise DownlinkError(f"unknown device {req.dev!r}")
            # The device refuses it after the deadline, when it has been reported upstream as a timeout and
            # the district may already have sent it again under a new id. A device that deep-sleeps hears it
            # at its next wake (the broker keeps it for the device's session), so its wake interval is added.
            deadline = now + self.timeout_s + self.registry.sleep_s(device.id)
            try:
                sealed = message.encode(message.command(device.id, req.id, req.op, req.args, int(deadline)),
                                        device.key)
            except ValueError as exc:  # args our CBOR encoder does not write (too deep, a tag, undefined)
                raise DownlinkError(f"args cannot be sent to a device: {exc}") from None
            if len(sealed) > message.MAX_MESSAGE:  # the device would refuse it unread, and never ack
                raise DownlinkError(f"{len(sealed)} bytes sealed, a device takes {message.MAX_MESSAGE}")
        except DownlinkError as exc:
            event(log, "command-rejected", logging.WARNING, error=str(exc))
            return None, district_wire.command_refused(sent, str(exc))
        self._conn.execute("INSERT OR REPLACE INTO command_pending (dev, id, op, sent_at, deadline) "
                           "VALUES (?, ?, ?, ?, ?)", (device.id, req.id, req.op, now, deadline))
        event(log, "command", dev=device.id, id=req.id, op=req.op)
        return Outgoing(topics.device(self.site, device.id, topics.CMD), sealed, device.id, req.id), None

    def on_ack(self, dev: str, body: Mapping[str, Any], now: float) -> CommandResult | None:
        """A device's ack: the result for upstream if it answers a pending command, else None (logged)."""
        if body["id"] >= 1 << 63:  # past any id SQLite keeps, so past any command relayed
            event(log, "ack-unmatched", logging.WARNING, dev=dev, id=body["id"])
            return None
        row = self._conn.execute("SELECT op, sent_at FROM command_pending WHERE dev = ? AND id = ?",
                                 (dev, body["id"])).fetchone()
        if row is None:
            event(log, "ack-unmatched", logging.WARNING, dev=dev, id=body["id"])
            return None
        self._conn.execute("DELETE FROM command_pending WHERE dev = ? AND id = ?", (dev, body["id"]))
        op, sent_at = row
        return district_wire.command_done(dev, body["id"], op, body["ok"], body.get("res"), body["boot"],
                                          round(now - sent_at, 3))

    def clock_stepped(self, step: float) -> None:
        """The wall clock was set by `step` seconds: a pending command's deadline and its round trip are spans."""
        self._conn.execute("UPDATE command_pending SET deadline = deadline + ?, sent_at = sent_at + ?", (step, step))

    def expire(self, now: float) -> list[CommandResult]:
        """Commands past their deadline: each reported once as a timeout."""
        rows = self._conn.execute("SELECT dev, id, op, sent_at FROM command_pending WHERE deadline <= ?",
                                  (now,)).fetchall()
        if rows:
            self._conn.execute("DELETE FROM command_pending WHERE deadline <= ?", (now,))
        out = []
        for dev, cmd_id, op, sent_at in rows:
            event(log, "command-timeout", logging.WARNING, dev=dev, id=cmd_id, op=op)
            out.append(district_wire.command_timeout(dev, cmd_id, op, round(now - sent_at, 3)))
        return out
