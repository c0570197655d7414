"""The district's downlink: device commands, alarm acknowledgements and rule-set replacement.

Downlink payloads are CBOR maps (docs/gateway.md, "Downlink"); the district broker's ACL lets only the
district write them and the gateway reads them over mutual TLS. A command is re-sealed here with the
device's own key (protocol.message.command + encode), because a device trusts nothing else, and remembered
in the store until the device's ack or the deadline, whichever comes first; either way one result goes
upstream on the "ack" topic. Results and pending commands are written into the caller's transaction:
nothing here commits.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.logs import event
from gateway.registry import Registry
from gateway.rules import RuleError, RuleSet, parse_ruleset
from protocol import message, topics

log = logging.getLogger("lifeline.gateway.commands")


class DownlinkError(ValueError):
    pass


@dataclass(frozen=True)
class Outgoing:
    """A sealed command for a device's command topic."""

    topic: str
    payload: bytes
    dev: str
    id: int


def decode_downlink(payload: bytes) -> Mapping[str, Any]:
    try:
        body = cbor2.loads(payload)
    except Exception as exc:
        raise DownlinkError(f"not CBOR: {exc}") from None
    if not isinstance(body, Mapping):
        raise DownlinkError("not a CBOR map")
    return body


class Commands:
    def __init__(self, conn: sqlite3.Connection, site: str, registry: Registry, timeout_s: float = 30.0) -> None:
        self._conn = conn
        self.site = site
        self.registry = registry
        self.timeout_s = timeout_s
        conn.execute("CREATE TABLE IF NOT EXISTS command_pending (dev TEXT NOT NULL, id INTEGER NOT NULL, "
                     "op TEXT NOT NULL, sent_at REAL NOT NULL, deadline REAL NOT NULL, PRIMARY KEY (dev, id))")

    def command(self, payload: bytes, now: float) -> tuple[Outgoing | None, dict[str, Any] | None]:
        """A district command: (sealed command for the device, None) or (None, a rejection for upstream)."""
        body: Mapping[str, Any] = {}
        try:
            body = decode_downlink(payload)
            cmd_id, op, args = body.get("id"), body.get("op"), body.get("args", {})
            if not isinstance(cmd_id, int) or isinstance(cmd_id, bool) or not 0 <= cmd_id < 2**63:
                raise DownlinkError("id must be an unsigned integer below 2**63")
            if not isinstance(op, str) or not op:
                raise DownlinkError("op must be a non-empty string")
            if not isinstance(args, Mapping):
                raise DownlinkError("args must be a map")
            dev = body.get("dev")
            device = self.registry.devices.get(dev) if isinstance(dev, str) else None
            if device is None:
                raise DownlinkError(f"unknown device {dev!r}")
        except DownlinkError as exc:
            event(log, "command-rejected", logging.WARNING, error=str(exc))
            return None, {"re": "cmd", "dev": body.get("dev"), "id": body.get("id"), "ok": False,
                          "error": str(exc)}
        # The device refuses it after the deadline, when it has been reported upstream as a timeout and
        # the district may already have sent it again under a new id. A device that deep-sleeps hears it
        # at its next wake (the broker keeps it for the device's session), so its wake interval is added.
        deadline = now + self.timeout_s + self.registry.sleep_s(device.id)
        sealed = message.encode(message.command(device.id, cmd_id, op, _thaw(args), int(deadline)), device.key)
        self._conn.execute("INSERT OR REPLACE INTO command_pending (dev, id, op, sent_at, deadline) "
                           "VALUES (?, ?, ?, ?, ?)", (device.id, cmd_id, op, now, deadline))
        event(log, "command", dev=device.id, id=cmd_id, op=op)
        return Outgoing(topics.device(self.site, device.id, topics.CMD), sealed, device.id, cmd_id), None

    def on_ack(self, dev: str, body: Mapping[str, Any], now: float) -> dict[str, Any] | None:
        """A device's ack: the result for upstream if it answers a pending command, else None (logged)."""
        row = self._conn.execute("SELECT op, sent_at FROM command_pending WHERE dev = ? AND id = ?",
                                 (dev, body["id"])).fetchone()
        if row is None:
            event(log, "ack-unmatched", logging.WARNING, dev=dev, id=body["id"])
            return None
        self._conn.execute("DELETE FROM command_pending WHERE dev = ? AND id = ?", (dev, body["id"]))
        op, sent_at = row
        return {"re": "cmd", "dev": dev, "id": body["id"], "op": op, "ok": body["ok"], "res": body.get("res"),
                "boot": body["boot"], "rtt_s": round(now - sent_at, 3)}

    def expire(self, now: float) -> list[dict[str, Any]]:
        """Commands past their deadline: each reported once as a timeout."""
        rows = self._conn.execute("SELECT dev, id, op, sent_at FROM command_pending WHERE deadline <= ?",
                                  (now,)).fetchall()
        if rows:
            self._conn.execute("DELETE FROM command_pending WHERE deadline <= ?", (now,))
        out = []
        for dev, cmd_id, op, sent_at in rows:
            event(log, "command-timeout", logging.WARNING, dev=dev, id=cmd_id, op=op)
            out.append({"re": "cmd", "dev": dev, "id": cmd_id, "op": op, "ok": False, "error": "timeout",
                        "waited_s": round(now - sent_at, 3)})
        return out


def alarm_ack_ids(payload: bytes) -> list[str]:
    """Alarm ids the district acknowledges: {"id": ID} or {"ids": [ID, ...]}."""
    body = decode_downlink(payload)
    ids = body.get("ids", [body.get("id")] if "id" in body else [])
    if not isinstance(ids, list | tuple) or not ids or not all(isinstance(i, str) for i in ids):
        raise DownlinkError("expected {'id': alarm id} or {'ids': [alarm ids]}")
    return list(ids)


def ruleset_from_downlink(payload: bytes) -> RuleSet:
    """A rule set sent down: a CBOR map {"ruleset": <rule set, as in a rule file>}, or a JSON text."""
    body = decode_downlink(payload)
    data = body.get("ruleset")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise DownlinkError(f"ruleset: not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise DownlinkError("expected {'ruleset': {...}}")
    try:
        return parse_ruleset(_thaw(data))
    except RuleError as exc:
        raise DownlinkError(str(exc)) from None


def _thaw(value: Any) -> Any:
    """cbor2 may hand nested maps over as frozendicts and arrays as tuples; the rule parser wants plain ones."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value
