"""district.toml: the district service's configuration, checked the way site.toml is (every table refuses
keys it does not know, and every mistake names its field). docs/district.md explains each key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from district import accounts
from gateway.message_decode import loads_one
from gateway.site_config import (
    REQUIRED,
    BrokerConfig,
    ConfigError,
    ConfigTable,
    _table_device,
    broker_config,
    file_devices,
    read_toml,
)
from protocol import site_seal
from protocol.district_verify import Verifier

ID = re.compile(r"[a-z0-9_-]{1,32}\Z")
ROLLUP_S = 300  # [retention] rollup_s unless set: the desk's default too
MESSAGES_DAYS = 400  # [retention] messages_days unless set: as far back as the desk's history goes
REFUSALS_DAYS = 90  # [retention] refusals_days unless set: a season to look into what a site sent wrong


@dataclass(frozen=True)
class RiskPoint:
    id: str
    cls: str
    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True)
class SiteEntry:
    id: str
    seal_key: bytes | None = field(repr=False)  # the key of the site's upstream seal (None: files not read)
    device_keys: Mapping[str, bytes] = field(repr=False)  # from the registry `lifeline flash` writes
    device_classes: Mapping[str, str]
    risk_points: tuple[RiskPoint, ...]


@dataclass(frozen=True)
class DistrictConfig:
    name: str
    broker: BrokerConfig
    database: str
    base: Path  # relative paths, an SQLite file among them, start here
    workers: int
    group: str
    batch: int
    desk_host: str
    desk_port: int
    metrics_host: str
    metrics_port: int
    raw_days: float
    rollup_s: int
    sites: Mapping[str, SiteEntry]
    log_format: str
    log_level: str
    hash_memory_kib: int
    hash_time_cost: int
    messages_days: float
    reports_days: float
    refusals_days: float


def _key(t: ConfigTable, key: str) -> bytes | None:
    text = t.text(key)
    if text is None:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise t.fail(key, "must be hex") from None
    if len(raw) != 32:
        raise t.fail(key, "must be 32 bytes (64 hex digits)")
    return raw


def _registry(t: ConfigTable) -> tuple[dict[str, bytes], dict[str, str]]:
    path = t.path("devices", must_exist=True)
    if path is None or not t.check_files:
        return {}, {}
    keys: dict[str, bytes] = {}
    classes: dict[str, str] = {}
    if path.suffix == ".csv":  # a site's devices file ([site] devices_file), checked as its gateway checks it
        try:
            for line, dev in file_devices(path):
                if dev.id in keys:
                    raise ConfigError(f"{t.name('devices')} ({path}) line {line}: device {dev.id!r} is listed twice")
                keys[dev.id], classes[dev.id] = dev.key, dev.cls
        except OSError as exc:
            raise t.fail("devices", f"cannot read {path}: {exc.strerror}") from None
        except ConfigError as exc:
            raise ConfigError(f"{t.name('devices')}: {exc}") from None
        return keys, classes
    # [[devices]] tables, checked as the gateway checks them: each key was only hex, so a short key, an id
    # listed twice (the later key taken) or an id the gateway refuses loaded, and the device's every message
    # was then refused at ingest
    registry = ConfigTable(read_toml(path), f"{t.name('devices')} ({path.name})", path.parent, t.check_files)
    for dt in registry.tables("devices"):
        dev = _table_device(dt)
        if dev.id in keys:
            raise dt.fail("id", f"device {dev.id!r} is listed twice")
        keys[dev.id], classes[dev.id] = dev.key, dev.cls
    return keys, classes


def _site(t: ConfigTable) -> SiteEntry:
    sid = t.text("id", REQUIRED, ID, "must be 1-32 characters of a-z 0-9 _ -")
    seal_key = _key(t, "seal_key")
    key_file = t.path("seal_key_file", must_exist=True)
    if (seal_key is None) == (key_file is None):
        raise t.fail("seal_key", "give seal_key or seal_key_file (the site's key: [site] key or key_file), one of them")
    if key_file is not None and t.check_files:
        try:
            seal_key = site_seal.read_key(key_file)
        except (OSError, ValueError) as exc:
            raise t.fail("seal_key_file", f"cannot read a site key: {exc}") from None
    keys, classes = _registry(t)
    points = []
    for pt in t.tables("risk_points"):
        points.append(RiskPoint(pt.text("id", REQUIRED, ID, "must be 1-32 characters of a-z 0-9 _ -"),
                                pt.text("class", REQUIRED), pt.number("lat", REQUIRED, -90, 90),
                                pt.number("lon", REQUIRED, -180, 180), pt.number("radius_m", 100, 1, 100_000)))
        pt.done()
    t.done()
    return SiteEntry(sid, seal_key, keys, classes, tuple(points))


def parse(data: Mapping[str, Any], path: Path, check_files: bool = True) -> DistrictConfig:
    root = ConfigTable(data, "", path.parent, check_files)
    d = root.section("district")
    name = d.text("name", "district")
    d.done()
    broker = broker_config(root.section("broker"), "lifeline-district", client_cert=False)
    db = root.section("database")
    database = db.text("url", "district.sqlite")
    db.done()
    ing = root.section("ingest")
    workers = ing.number("workers", 1, 1, 64, integer=True)
    group = ing.text("group", "lifeline", ID, "must be 1-32 characters of a-z 0-9 _ -")
    batch = ing.number("batch", 500, 1, 10_000, integer=True)
    ing.done()
    desk = root.section("desk")
    desk_host, desk_port = desk.text("host", "127.0.0.1"), desk.number("port", 8080, 0, 65535, integer=True)
    desk.done()
    met = root.section("metrics")
    metrics_host, metrics_port = met.text("host", "127.0.0.1"), met.number("port", 9109, 0, 65535, integer=True)
    met.done()
    ret = root.section("retention")
    raw_days = ret.number("raw_days", 30, 1, 3650)
    rollup_s = ret.number("rollup_s", ROLLUP_S, 10, 86_400, integer=True)
    messages_days = ret.number("messages_days", MESSAGES_DAYS, 1, 36_500)
    if messages_days < raw_days:
        raise ret.fail("messages_days", f"must be at least raw_days ({raw_days}), not {messages_days}: a message is "
                                        "kept as long as its readings are")
    reports_days = ret.number("reports_days", messages_days, 1, 36_500)  # as long as the messages they are about
    refusals_days = ret.number("refusals_days", REFUSALS_DAYS, 1, 3650)
    ret.done()
    sites: dict[str, SiteEntry] = {}
    for st in root.tables("sites"):
        entry = _site(st)
        if entry.id in sites:
            raise st.fail("id", f"site {entry.id!r} is listed twice")
        sites[entry.id] = entry
        for other in sites.values():
            shared = set(other.device_keys) & set(entry.device_keys) if other is not entry else set()
            if shared:
                raise st.fail("devices", f"device {sorted(shared)[0]!r} is also registered at site {other.id!r}; "
                                         "device ids are unique across a district")
    log_t = root.section("log")
    log_format = log_t.text("format", "kv", re.compile(r"(kv|json)\Z"), 'must be "kv" or "json"')
    log_level = log_t.text("level", "info", re.compile(r"(debug|info|warning|error)\Z"),
                           "must be debug, info, warning or error")
    log_t.done()
    acc = root.section("accounts")
    hash_memory_kib = acc.number("hash_memory_kib", accounts.HASH_MEMORY_KIB, accounts.LEAST_MEMORY_KIB,
                                 accounts.MOST_MEMORY_KIB, integer=True)
    hash_time_cost = acc.number("hash_time_cost", accounts.HASH_TIME_COST, accounts.LEAST_TIME_COST,
                                accounts.MOST_TIME_COST, integer=True)
    acc.done()
    root.done()
    return DistrictConfig(name, broker, database, path.parent, workers, group, batch, desk_host, desk_port,
                          metrics_host, metrics_port, raw_days, rollup_s, sites, log_format, log_level,
                          hash_memory_kib, hash_time_cost, messages_days, reports_days, refusals_days)



def load(path: Path | str, check_files: bool = True) -> DistrictConfig:
    p = Path(path).resolve()
    return parse(read_toml(p), p, check_files)


# What a SIGHUP applies in a worker and in the desk (district/service.py); every other setting is read at start.
RELOADED = frozenset({"sites"})


def restart_needed(running: DistrictConfig, new: DistrictConfig) -> list[str]:
    """The settings in which `new` differs from `running` that a reload does not apply: an operator who edited
    one and sent SIGHUP is told so, rather than left to believe it took effect."""
    return [f.name for f in fields(DistrictConfig)
            if f.name not in RELOADED and getattr(running, f.name) != getattr(new, f.name)]


def site_devices(cfg: DistrictConfig) -> dict[str, frozenset[str]]:
    """Each site's registered device ids, which a worker holds the site's bodies to (district/ingest.py)."""
    return {s.id: frozenset(s.device_keys) for s in cfg.sites.values()}


def verifier(cfg: DistrictConfig) -> Verifier:
    """The checker of every upstream publish, with the keys of every registered site and device."""
    return Verifier({s.id: s.seal_key for s in cfg.sites.values() if s.seal_key is not None},
                    {d: k for s in cfg.sites.values() for d, k in s.device_keys.items()}, track=False,
                    loads=loads_one)  # cbor2, one item exactly: the pure-Python decoder was a third of a worker's time
