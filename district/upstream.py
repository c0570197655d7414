"""What a site sends up, checked before anything is stored: the district's side of gateway/district_wire.py.

A site is trusted no further than its seal, and a gateway can be wrong, so every field is checked for type,
size and range (ids as protocol/topics.py allows them, sequence numbers within 64 bits, times finite).
The site seal and each device's own MAC are checked by protocol/district_verify.py first. A bad body is
refused whole with `Refused(reason, detail)`; inside a telemetry body, one bad pack entry or thinned summary is
refused alone and the good entries beside it are kept.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Column, String

from district.schema import alarms, devices, ota_releases, readings
from gateway.numbers import finite
from protocol.district import MAX_UP_BODY
from protocol.district_verify import Verifier, VerifyError

ID = re.compile(r"[a-z0-9_-]{1,32}\Z")  # protocol/topics.py: site and device ids
ALARM_ID = re.compile(r"[0-9a-f]{32}\Z")
VERSION = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6}){0,4}\Z")  # lifeline/release.py: numbers and dots
ALARM_EVS = {"raised", "escalated", "de-escalated", "cleared", "inhibited", "resumed"}
ALARM_KINDS = {"level", "rate", "sum", "stale"}
LEVELS = {"blue", "yellow", "orange", "red"}
MAX_TEXT = 200
U64 = 1 << 64
I64 = 1 << 63  # an integer the database keeps (BIGINT) is below this
MAX_RELEASE = 1 << 24  # bytes: a release far past any node's flash
MAX_OTA_NODES = 10_000  # nodes in one progress report (a site's devices)
MAX_RELEASES = 64
# A telemetry body's packs and thinned together: every entry a gateway makes is 58 bytes or more (a pack entry 77,
# a thinned summary 58; 48 leaves a margin), so none sends more than this in a publish (MAX_UP_BODY)
MAX_ENTRIES = MAX_UP_BODY // 48


class Refused(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _field(body: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in body:
        raise Refused("schema", f"{where}: {key} missing")
    return body[key]


def ident(body: Mapping[str, Any], key: str, where: str, pattern: re.Pattern[str] = ID) -> str:
    value = _field(body, key, where)
    if not isinstance(value, str) or not pattern.match(value):
        # a text shown, cut short; anything else by its type: the repr of an integer of more than 4,300 digits
        # raises ValueError, which made this a failure no check foresaw ("internal", a traceback logged)
        shown = repr(value[:40]) if isinstance(value, str) else f"(a {type(value).__name__})"
        raise Refused("schema", f"{where}: {key} {shown} is not a valid id")
    return value


def uint(body: Mapping[str, Any], key: str, where: str, limit: int = U64) -> int:
    value = _field(body, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise Refused("schema", f"{where}: {key} must be an integer in 0..{limit - 1}")
    return value


def number(body: Mapping[str, Any], key: str, where: str, optional: bool = False) -> float | None:
    value = body.get(key) if optional else _field(body, key, where)
    if value is None and optional:
        return None
    number = finite(value)
    if number is None:
        raise Refused("schema", f"{where}: {key} must be a finite number")
    return number


def width(column: Column[Any]) -> int:
    """The characters a text column holds (PostgreSQL refuses more; SQLite would keep them)."""
    assert isinstance(column.type, String) and column.type.length is not None
    return column.type.length


def text(body: Mapping[str, Any], key: str, where: str, choices: set[str] | None = None,
         optional: bool = False, limit: int = MAX_TEXT) -> str | None:
    value = body.get(key)
    if value is None:
        if optional:
            return None
        raise Refused("schema", f"{where}: {key} missing")
    if (not isinstance(value, str) or len(value) > limit or "\x00" in value
            or (choices is not None and value not in choices)):
        allowed = f"one of {', '.join(sorted(choices))}" if choices else f"text of at most {limit} characters"
        raise Refused("schema", f"{where}: {key} must be {allowed}")
    return value


def position(body: Mapping[str, Any], where: str) -> tuple[float, float] | None:
    pos = body.get("pos")
    if pos is None:
        return None
    if (not isinstance(pos, list) or len(pos) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                              for x in pos)
            or not -90 <= pos[0] <= 90 or not -180 <= pos[1] <= 180):
        raise Refused("schema", f"{where}: pos must be [lat, lon]")
    return float(pos[0]), float(pos[1])


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise Refused("schema", f"{where}: not a map with text keys")
    return value


def report(value: Any, where: str) -> tuple[str | None, str]:
    """(dev, JSON text) of a body kept as it came (dq, event, ack, a thinned summary): byte strings as hex,
    any other value JSON has no form for (a CBOR tag, undefined) by its repr. A body JSON cannot hold at all (a
    map with an array for a key) is refused, as is a device id that is not one."""
    body = mapping(value, where)
    dev = body.get("dev")
    if dev is not None:
        ident(body, "dev", where)
    try:
        return dev, json_text(body)
    except (TypeError, ValueError) as exc:
        raise Refused("schema", f"{where}: not storable as JSON: {exc}") from None


def json_text(value: Any) -> str:
    """The JSON text the district keeps of a site's value (a body kept as it came, a command's answer), with
    `jsonable`'s forms of what JSON has no form for. A NaN or an infinity is kept by its repr too: written bare
    (NaN, Infinity) it is no JSON, and the desk's encoder refused what it read back (a 500)."""
    try:
        return json.dumps(value, default=jsonable, allow_nan=False)
    except ValueError:  # a float JSON has no form for: walked only then
        return json.dumps(_finite(value), default=jsonable, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {_finite(k): _finite(v) for k, v in value.items()}
    return value


def jsonable(value: Any) -> str:
    """JSON's form of a value it has none for: bytes as hex, anything else by its repr."""
    return value.hex() if isinstance(value, bytes) else repr(value)


def pack_entry(raw: Any, where: str, verifier: Verifier) -> tuple[str, int, int, int, list[dict[str, Any]], bytes]:
    """(dev, seq, boot, pri, readings, sealed) of one telemetry pack entry whose device MAC verifies; reading
    names lose the "{dev}:" base."""
    entry = mapping(raw, where)
    dev = ident(entry, "dev", where)
    seq, boot = uint(entry, "seq", where), uint(entry, "boot", where, I64)
    pri = uint(entry, "pri", where, 2) if "pri" in entry else 0
    try:
        records = verifier.entry(entry)
    except VerifyError as exc:
        raise Refused(exc.reason, f"{where}: {exc}") from None
    prefix = dev + ":"
    out = []
    for r in records:
        name = r["n"]
        if name.startswith(prefix):
            name = name[len(prefix):]
        if not 0 < len(name) <= width(readings.c.n):
            raise Refused("senml", f"{where}: reading name {r['n']!r} too long")
        t = finite(r["t"])
        if t is None:
            raise Refused("senml", f"{where}: reading {name!r} has no finite time")
        for k in ("v", "s"):
            if k in r and finite(r[k]) is None:
                raise Refused("senml", f"{where}: reading {name!r} has a {k} that is not finite")
        unit = r.get("u")
        if unit is not None and (len(unit) > width(readings.c.u) or "\x00" in unit):
            raise Refused("senml", f"{where}: reading {name!r} has a unit of more than {width(readings.c.u)} "
                                   "characters or a NUL")
        if "\x00" in r.get("vs", ""):
            raise Refused("senml", f"{where}: reading {name!r} has a NUL in its text")
        out.append({**r, "n": name, "t": t})
    return dev, seq, boot, pri, out, entry["m"]


def gateway_state(raw: Any) -> tuple[bool, int]:
    """(online, session) of a gateway's birth or death."""
    body = mapping(raw, "gateway")
    st = text(body, "st", "gateway", {"online", "offline"})
    return st == "online", uint(body, "session", "gateway", 1 << 63)


def alarm(raw: Any) -> Mapping[str, Any]:
    body = mapping(raw, "alarm")
    ident(body, "id", "alarm", ALARM_ID)
    ident(body, "dev", "alarm")
    text(body, "ev", "alarm", ALARM_EVS)
    text(body, "kind", "alarm", ALARM_KINDS)
    text(body, "level", "alarm", LEVELS, optional=True)
    text(body, "prev", "alarm", LEVELS, optional=True)
    text(body, "cls", "alarm", limit=width(alarms.c.cls))
    text(body, "rule", "alarm", limit=width(alarms.c.rule))
    for key in ("metric", "unit", "point"):
        text(body, key, "alarm", optional=True, limit=width(alarms.c[key]))
    text(body, "cause", "alarm", optional=True)
    number(body, "t_gw", "alarm")
    for key in ("value", "reading", "t_dev"):
        number(body, key, "alarm", optional=True)
    uint(body, "resend", "alarm", 1 << 31)
    if body.get("step") is not None:
        uint(body, "step", "alarm", 1 << 31)
    position(body, "alarm")
    if body["ev"] != "cleared" and body.get("level") is None:
        raise Refused("schema", f"alarm: {body['ev']} without a level")
    return body


def device_state(raw: Any) -> Mapping[str, Any]:
    body = mapping(raw, "state")
    ident(body, "dev", "state")
    text(body, "st", "state", {"online", "offline"})
    uint(body, "boot", "state", I64)
    number(body, "t", "state")
    for key in ("fw", "prof"):
        text(body, key, "state", optional=True, limit=width(devices.c[key]))
    text(body, "rst", "state", optional=True)
    for key in ("batt", "rssi"):
        number(body, key, "state", optional=True)
    position(body, "state")
    return body


def ota_report(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(download progress per node, the releases the site serves or None when the report names none)."""
    body = mapping(raw, "ota")
    number(body, "t", "ota")
    nodes = body.get("nodes")
    if not isinstance(nodes, list) or len(nodes) > MAX_OTA_NODES:
        raise Refused("schema", f"ota: nodes must be a list of at most {MAX_OTA_NODES}")
    progress = []
    for i, raw_node in enumerate(nodes):
        where = f"ota nodes[{i}]"
        node = mapping(raw_node, where)
        total = uint(node, "total", where, MAX_RELEASE + 1)
        if uint(node, "done", where, MAX_RELEASE + 1) > total:
            raise Refused("schema", f"{where}: done is past total")
        progress.append({"dev": ident(node, "dev", where), "v": version(node, where),
                         "done": node["done"], "total": total, "t": number(node, "t", where)})
    if "releases" not in body:
        return progress, None
    releases = body["releases"]
    if not isinstance(releases, list) or len(releases) > MAX_RELEASES:
        raise Refused("schema", f"ota: releases must be a list of at most {MAX_RELEASES}")
    offers = []
    for i, raw_rel in enumerate(releases):
        where = f"ota releases[{i}]"
        rel = mapping(raw_rel, where)
        profiles = rel.get("profiles")
        if not isinstance(profiles, list) or not 0 < len(profiles) <= 16 or not all(
                isinstance(p, str) and ID.match(p) for p in profiles):
            raise Refused("schema", f"{where}: profiles must be a list of 1-16 class names")
        sig = rel.get("sig")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise Refused("schema", f"{where}: sig must be 64 bytes")
        size = uint(rel, "size", where, MAX_RELEASE + 1)
        if not 0 < uint(rel, "n", where, MAX_RELEASE + 1) <= size:
            raise Refused("schema", f"{where}: n must be 1..size")
        offers.append({"v": version(rel, where), "profiles": list(profiles), "n": rel["n"], "sig": sig,
                       "size": size})
    if len({o["v"] for o in offers}) != len(offers):
        raise Refused("schema", "ota: a release version is listed twice")
    return progress, offers


def version(body: Mapping[str, Any], where: str) -> str:
    v = ident(body, "v", where, VERSION)
    if len(v) > width(ota_releases.c.v):
        raise Refused("schema", f"{where}: v {v!r} is longer than {width(ota_releases.c.v)} characters")
    return v
