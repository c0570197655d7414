"""site.toml: the gateway's whole configuration, checked field by field at start-up.

A site runs unattended, so a typo must stop the daemon with the field's name rather than surface hours later
as a silent default. Every table rejects keys it does not know. Relative paths are taken from the config
file's directory, so a site directory can be moved as a whole. docs/gateway.md documents every key.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from gateway import device_states, release_dir
from gateway.device_list import DeviceConfig, DeviceList
from gateway.numbers import finite
from gateway.riskpoints import RiskPoints
from gateway.rules import DEVICE_CLASSES, RuleError, RuleSet, default_ruleset_paths, load_ruleset, parse_ruleset

_CLASS = {cls: cls for cls in DEVICE_CLASSES}  # one string object per class for every device
_ID = re.compile(r"[a-z0-9_-]{1,32}\Z")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_REQUIRED_COLUMNS = ("id", "class", "key")  # of the devices file ([site] devices_file)
_POSITION = ("latitude", "longitude")
_COLUMNS = _REQUIRED_COLUMNS + _POSITION
_CELL_MAX = 256  # characters; a key, the longest cell of a device, is 64
_LINE_MAX = 4096  # bytes; a device's line is under 200
_T = TypeVar("_T")


class ConfigError(ValueError):
    """A config problem, always phrased as "<field>: <why>"."""


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None
    tls: TLSFiles | None
    keepalive: int


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    site: str
    site_broker: BrokerConfig
    district_broker: BrokerConfig
    devices: DeviceList
    rule_files: tuple[Path, ...]
    rule_overrides: Mapping[str, Any]
    ruleset: RuleSet
    risk_points: RiskPoints
    store_path: Path
    site_key_file: Path  # the site key that seals every upstream publish (protocol/site_seal.py) ...
    site_key: bytes | None  # ... unless given in site.toml itself
    disk_budget_mb: float
    devices_in_memory: int  # devices whose per-device state is held in memory (gateway/device_states.py)
    batch_max_items: int
    batch_max_delay_s: float
    drain_rate: float
    ingest_batch: int
    check_processes: int  # processes that decode and authenticate device messages; 0: the ingest does (check_stage)
    clock_future_s: float
    clock_past_s: float
    gap_grace_s: float
    seq_window: int
    metrics_host: str
    metrics_port: int
    quarantine_rows: int
    quarantine_max_mb: float  # raw bytes kept, at most a quarter of the store's disk_budget_mb
    quarantine_log_interval_s: float
    command_timeout_s: float
    ota_releases: tuple[Path, ...]  # release directories the gateway serves to updating nodes (docs/ota.md)
    alarm_resend_first_s: float
    alarm_resend_max_s: float
    log_format: str
    log_level: str


# What a SIGHUP applies (gateway/daemon.py, Gateway.reload); every other setting is read at start only.
RELOADED = frozenset({"devices", "ruleset", "rule_files", "rule_overrides", "ota_releases"})


def restart_needed(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The settings in which `new` differs from `running` that a reload cannot apply: an operator who edited
    one and sent SIGHUP is told so, rather than left to believe it took effect."""
    def value(cfg: GatewayConfig, name: str) -> Any:
        v = getattr(cfg, name)
        return tuple(v) if isinstance(v, RiskPoints) else v  # RiskPoints compares by identity
    return [f.name for f in fields(GatewayConfig)
            if f.name not in RELOADED and value(running, f.name) != value(new, f.name)]


class ConfigTable:
    """One TOML table with its dotted path, handing out checked values and refusing unknown keys."""

    def __init__(self, data: Mapping[str, Any], where: str, base: Path, check_files: bool = True) -> None:
        self.data = data
        self.where = where
        self.base = base
        self.check_files = check_files
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.name(key)}: {why}")

    def _get(self, key: str, kind: type[_T] | tuple[type, ...], what: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is REQUIRED:
                raise self.fail(key, "missing (required)")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, f"must be {what}, not a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {what}, not {type(value).__name__} {value!r}")
        return value

    def text(self, key: str, default: Any = None, pattern: re.Pattern[str] | None = None,
            why: str = "") -> Any:
        value = self._get(key, str, "a string", default)
        if isinstance(value, str) and pattern is not None and not pattern.match(value):
            raise self.fail(key, why or f"{value!r} does not match {pattern.pattern}")
        return value

    def number(self, key: str, default: Any = None, low: float | None = None, high: float | None = None,
               integer: bool = False) -> Any:
        value = self._get(key, int if integer else (int, float), "an integer" if integer else "a number",
                          default)
        if value is None:
            return None
        if finite(value) is None:  # NaN, an infinity, or an integer past a float (TOML has any size)
            raise self.fail(key, "must be finite")
        if low is not None and value < low:
            raise self.fail(key, f"must be at least {low}, not {value}")
        if high is not None and value > high:
            raise self.fail(key, f"must be at most {high}, not {value}")
        return value

    def path(self, key: str, default: Any = None, must_exist: bool = False) -> Path | None:
        value = self.text(key, default)
        if value is None:
            return None
        p = Path(value)
        if not p.is_absolute():
            p = self.base / p
        if must_exist and self.check_files and not p.is_file():
            raise self.fail(key, f"file {p} does not exist")
        return p

    def table(self, key: str) -> ConfigTable | None:
        value = self._get(key, dict, "a table", None)
        return None if value is None else ConfigTable(value, self.name(key), self.base, self.check_files)

    def section(self, key: str) -> ConfigTable:
        """An optional table; absent, it reads as empty so that every key takes its default."""
        return self.table(key) or ConfigTable({}, self.name(key), self.base, self.check_files)

    def tables(self, key: str) -> list[ConfigTable]:
        value = self._get(key, list, "an array of tables ([[" + key + "]])", [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(f"{self.name(key)}[{i}]: must be a table")
            out.append(ConfigTable(item, f"{self.name(key)}[{i}]", self.base, self.check_files))
        return out

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.fail(key, "unknown key (see docs/gateway.md)")


REQUIRED = object()


def broker_config(t: ConfigTable, default_client_id: str, client_cert: bool) -> BrokerConfig:
    host = t.text("host", REQUIRED)
    if not host:
        raise t.fail("host", "must not be empty")
    tls_t = t.table("tls")
    tls = None
    if tls_t is not None:
        tls = TLSFiles(tls_t.path("ca_file", must_exist=True), tls_t.path("cert_file", must_exist=True),
                       tls_t.path("key_file", must_exist=True))
        if (tls.cert_file is None) != (tls.key_file is None):
            raise tls_t.fail("key_file" if tls.key_file is None else "cert_file",
                             "cert_file and key_file go together")
        if client_cert and tls.cert_file is None:
            raise tls_t.fail("cert_file", "missing (the district broker authenticates the gateway by "
                                          "client certificate)")
        tls_t.done()
    port = t.number("port", 8883 if tls else 1883, 1, 65535, integer=True)
    client_id = t.text("client_id", default_client_id)
    if not 0 < len(client_id) <= 23 * 4:
        raise t.fail("client_id", "must be 1-92 characters")
    username = t.text("username")
    password = t.text("password")
    password_file = t.path("password_file", must_exist=True)
    if password is not None and password_file is not None:
        raise t.fail("password_file", "give password or password_file, not both")
    if password_file is not None and t.check_files:
        try:
            password = password_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:  # e.g. 0600 for another user: the unit's, docs/gateway.md
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise t.fail("password_file", f"cannot read {password_file}: {why}") from None
    if password is not None and username is None:
        raise t.fail("username", "missing (a password needs a username)")
    keepalive = t.number("keepalive", 30, 5, 3600, integer=True)
    t.done()
    return BrokerConfig(host, port, client_id, username, password, tls, keepalive)


def _device(dev_id: str, cls: str, key: str, position: tuple[float, float] | None,
            fail: Callable[[str, str], ConfigError]) -> DeviceConfig:
    """One device, whether a [[devices]] table or a row of the devices file gave its values: both are checked
    alike. `fail(field, why)` names the field the way its source does."""
    if not _ID.match(dev_id):
        raise fail("id", "must be 1-32 characters of a-z 0-9 _ -")
    if cls not in DEVICE_CLASSES:
        raise fail("class", f"{cls!r} is not one of {', '.join(DEVICE_CLASSES)}")
    if not _HEX64.match(key):
        raise fail("key", "must be 64 hex characters (a 32-byte HMAC key)")
    if position is not None:
        for name, value, limit in zip(_POSITION, position, (90, 180), strict=True):
            if not -limit <= value <= limit:
                raise fail(name, f"{value} is outside -{limit}..{limit}")
    # What is kept of a device is copied out of what the parser made (the id as a fresh string, the class as
    # the module's own constant): the parser's objects stay scattered among its garbage and keep its memory
    # from being returned, about 25 MB at 50,000 devices as TOML tables (docs/performance.md).
    return DeviceConfig(dev_id.encode().decode(), _CLASS[cls], bytes.fromhex(key), position)


def _table_device(t: ConfigTable) -> DeviceConfig:
    def fail(name: str, why: str) -> ConfigError:
        return t.fail("position", f"{name} {why}") if name in _POSITION else t.fail(name, why)

    pos = t._get("position", list, "[latitude, longitude]", None)
    if pos is not None and (len(pos) != 2 or any(finite(x) is None for x in pos)):
        raise t.fail("position", "must be [latitude, longitude] in degrees")
    dev = _device(t.text("id", REQUIRED), t.text("class", REQUIRED), t.text("key", REQUIRED),
                  None if pos is None else (float(pos[0]), float(pos[1])), fail)
    t.done()
    return dev


def _lines(name: str, f: BinaryIO) -> Iterator[str]:
    """The devices file decoded a line at a time: a byte that is not UTF-8 is reported on its own line (a
    text file decodes in blocks), and a file that is no device list is refused before it is read whole. A
    byte-order mark, as spreadsheets write, is dropped."""
    n = 0
    while raw := f.readline(_LINE_MAX + 1):
        n += 1
        if len(raw) > _LINE_MAX:
            raise ConfigError(f"{name}:{n}: longer than {_LINE_MAX} bytes (not a devices file?)")
        try:
            yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{name}:{n}: not UTF-8 text") from None


def _records(name: str, f: BinaryIO) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) of each record that has anything in it: spreadsheets end a sheet with empty rows."""
    reader = csv.reader(_lines(name, f), strict=True)
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise ConfigError(f"{name}:{line}: not CSV ({exc})") from None
        if cells is None:
            return
        if any(cells):
            yield line, cells


def _row_error(name: str, line: int, column: str, why: str) -> ConfigError:
    return ConfigError(f"{name}:{line}: {column}: {why}")


def _degrees(cell: str, fail: Callable[[str, str], ConfigError], column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise fail(column, f"{cell!r} is not a number of degrees") from None


def _file_rows(path: Path) -> Iterator[tuple[int, str, str, str, tuple[float, float] | None]]:
    """(line, id, class, key, position) of each device in the devices file, read a row at a time: a site's
    whole registry parsed at once is what the file is for avoiding (docs/performance.md, "Memory at 50,000
    devices"). OSError if it cannot be opened."""
    f = _open_regular(path)
    name = path.name
    with f:
        records = _records(name, f)
        line, header = next(records, (1, []))
        for i, column in enumerate(header):
            if column not in _COLUMNS:
                raise _row_error(name, line, repr(column), f"unknown column (the columns are {', '.join(_COLUMNS)})")
            if column in header[:i]:
                raise _row_error(name, line, repr(column), "a column named twice")
        for column in _REQUIRED_COLUMNS:
            if column not in header:
                raise _row_error(name, line, repr(column), "missing column (required)")
        if ("latitude" in header) != ("longitude" in header):
            missing = "longitude" if "latitude" in header else "latitude"
            raise _row_error(name, line, repr(missing), "missing column (latitude and longitude go together)")
        id_at, cls_at, key_at = (header.index(c) for c in _REQUIRED_COLUMNS)
        pos_at = [header.index(c) for c in _POSITION] if "latitude" in header else None
        for line, cells in records:
            fail = partial(_row_error, name, line)
            if len(cells) != len(header):
                raise ConfigError(f"{name}:{line}: {len(cells)} cells where the first line names {len(header)}")
            for column, cell in zip(header, cells, strict=True):
                if len(cell) > _CELL_MAX:
                    raise fail(column, f"longer than {_CELL_MAX} characters")
            lat, lon = ("", "") if pos_at is None else (cells[pos_at[0]], cells[pos_at[1]])
            if bool(lat) != bool(lon):
                raise fail("longitude" if lat else "latitude", "empty (latitude and longitude go together)")
            position = (_degrees(lat, fail, "latitude"), _degrees(lon, fail, "longitude")) if lat and lon else None
            yield line, cells[id_at], cells[cls_at], cells[key_at], position


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (a symlink to one included), else OSError. Opened
    without waiting: a named pipe's open blocks until a writer comes, which held start, or on SIGHUP the
    whole daemon. A NUL in the name (TOML lets "\u0000" through) is an OSError too, not a ValueError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except ValueError as exc:
        raise OSError(errno.EINVAL, str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_devices(path: Path) -> Iterator[tuple[int, DeviceConfig]]:
    """(line, device) of each row of a devices file ([site] devices_file, docs/gateway.md), checked as a
    [[devices]] table is; a ConfigError names the file, line and column. OSError if it cannot be opened. The
    district reads a site's registry with it too."""
    for line, dev_id, cls, key, position in _file_rows(path):
        yield line, _device(dev_id, cls, key, position, partial(_row_error, path.name, line))


def _devices(root: ConfigTable, site_t: ConfigTable, devices_file: Path | None, config: Path) -> Iterator[DeviceConfig]:
    """The [[devices]] tables' devices, then the devices file's, each once (DeviceList packs them as they come)."""
    tables: list[str] = []
    seen: set[str] = set()
    for dt in root.tables("devices"):
        dev = _table_device(dt)
        if dev.id in seen:
            raise dt.fail("id", f"device {dev.id!r} is listed twice")
        seen.add(dev.id)
        tables.append(dev.id)
        yield dev
    if devices_file is None:
        return
    try:
        for line, dev in file_devices(devices_file):
            if dev.id in seen:  # where the first one is, looked up only now: remembering costs memory per device
                fail = partial(_row_error, devices_file.name, line)
                if dev.id in tables:
                    raise fail("id", f"device {dev.id!r} is also devices[{tables.index(dev.id)}] in {config.name}")
                first = next(n for n, other, *_ in _file_rows(devices_file) if other == dev.id)
                raise fail("id", f"device {dev.id!r} is listed twice (also line {first})")
            seen.add(dev.id)
            yield dev
    except OSError as exc:
        raise site_t.fail("devices_file", f"cannot read {devices_file}: {exc.strerror}") from None


def _ota_releases(t: ConfigTable) -> tuple[Path, ...]:
    """[ota] releases: directories of `lifeline release build`, each holding the manifest and the bytes the
    gateway serves. Checked here so that a wrong path stops the daemon instead of leaving nodes asking for a
    release nobody serves; two directories of one version would serve one of them at random."""
    raw = t._get("releases", list, "a list of release directories", [])
    out: list[Path] = []
    versions: dict[str, int] = {}
    for i, name in enumerate(raw):
        key = f"releases[{i}]"
        if not isinstance(name, str) or not name:
            raise t.fail(key, "must be a directory name")
        p = Path(name) if Path(name).is_absolute() else t.base / name
        if t.check_files:
            try:
                version = release_dir.read(p).version
            except release_dir.ReleaseDirError as exc:
                raise t.fail(key, str(exc)) from None
            if version in versions:
                raise t.fail(key, f"version {version} is also releases[{versions[version]}]")
            versions[version] = i
        out.append(p)
    t.done()
    return tuple(out)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = _deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _rules(t: ConfigTable | None, base: Path) -> tuple[tuple[Path, ...], Mapping[str, Any], RuleSet]:
    """The rule files (the shipped defaults unless listed) with the site's overrides merged on top."""
    files: list[Path] = []
    overrides: Mapping[str, Any] = {}
    if t is not None:
        raw = t._get("files", list, "a list of file names", [])
        for i, name in enumerate(raw):
            if not isinstance(name, str):
                raise t.fail(f"files[{i}]", "must be a file name")
            p = Path(name) if Path(name).is_absolute() else base / name
            if not p.is_file():
                raise t.fail(f"files[{i}]", f"file {p} does not exist")
            files.append(p)
        overrides = t._get("overrides", dict, "a table", {})
        t.done()
    files = files or default_ruleset_paths()
    try:
        ruleset = load_ruleset(files)
    except RuleError as exc:
        raise ConfigError(f"rules.files: {exc}") from None
    if overrides:
        try:
            ruleset = parse_ruleset(_deep_merge(ruleset.source, overrides))
        except RuleError as exc:
            raise ConfigError(f"rules.overrides.{exc.path}: {exc.reason}") from None
    return tuple(files), overrides, ruleset


def parse(data: Mapping[str, Any], path: Path, check_files: bool = True) -> GatewayConfig:
    """Check a parsed TOML document; `path` names the file that relative paths start from.

    `check_files=False` skips reading the files it names (TLS files, password file), for tools that prepare
    them from this very config; the devices file is read all the same, its devices being config."""
    root = ConfigTable(data, "", path.parent, check_files)
    site_t = root.section("site")
    site = site_t.text("id", REQUIRED, _ID, "must be 1-32 characters of a-z 0-9 _ - (it is a topic level)")
    site_key_file = site_t.path("key_file")
    devices_file = site_t.path("devices_file")
    site_key_hex = site_t.text("key", None, _HEX64, "must be 64 hex characters (a 32-byte HMAC key)")
    if site_key_hex is not None and site_key_file is not None:
        raise site_t.fail("key", "give key or key_file, not both")
    site_t.done()

    site_broker = broker_config(root.section("site_broker"), f"lifeline-gw-{site}", client_cert=False)
    district_broker = broker_config(root.section("district_broker"), f"lifeline-gw-{site}-up", client_cert=True)

    devices = DeviceList(_devices(root, site_t, devices_file, path))

    rule_files, rule_overrides, ruleset = _rules(root.table("rules"), path.parent)

    try:
        risk_points = RiskPoints.parse(root._get("risk_points", list, "an array of tables ([[risk_points]])",
                                                 []), "risk_points")
    except RuleError as exc:
        raise ConfigError(str(exc)) from None
    try:  # else the alarm engine refuses the rules at start, or a reload half applies
        risk_points.check_rules(ruleset, "risk_points")
    except RuleError as exc:
        raise ConfigError(str(exc) if exc.path.startswith("risk_points.") else f"rules: {exc}") from None

    store_t = root.section("store")
    store_path = store_t.path("path", REQUIRED)
    assert store_path is not None
    if site_key_file is None:  # beside the store: a directory the gateway may write its first key into
        site_key_file = store_path.parent / "site.key"
    disk_budget = float(store_t.number("disk_budget_mb", 512, 1.0))
    in_memory = store_t.number("devices_in_memory", device_states.CAPACITY, 1, 1_000_000, integer=True)
    store_t.done()

    up_t = root.section("uplink")
    max_items = up_t.number("batch_max_items", 100, 1, 10_000, integer=True)
    max_delay = float(up_t.number("batch_max_delay_ms", 200, 0, 60_000)) / 1000.0
    drain_rate = float(up_t.number("drain_rate", 500, 1))
    up_t.done()

    in_t = root.section("ingest")
    ingest_batch = in_t.number("batch", 500, 1, 10_000, integer=True)
    check_processes = in_t.number("check_processes", 0, 0, 16, integer=True)
    clock_future = float(in_t.number("clock_future_s", 120, 1))
    clock_past = float(in_t.number("clock_past_s", 30 * 86400, 1))
    gap_grace = float(in_t.number("gap_grace_s", 300, 0))
    seq_window = in_t.number("seq_window", 65536, 16, 1 << 24, integer=True)
    in_t.done()

    m_t = root.section("metrics")
    metrics_host = m_t.text("host", "127.0.0.1")
    metrics_port = m_t.number("port", 9108, 0, 65535, integer=True)
    m_t.done()

    q_t = root.section("quarantine")
    q_rows = q_t.number("max_rows", 10_000, 1, 10_000_000, integer=True)
    q_mb = float(q_t.number("max_mb", min(32.0, disk_budget / 4), 0.1, disk_budget / 4))
    q_interval = float(q_t.number("log_interval_s", 60, 0))
    q_t.done()

    c_t = root.section("commands")
    cmd_timeout = float(c_t.number("timeout_s", 30, 0.1, 86400))
    c_t.done()

    ota_releases = _ota_releases(root.section("ota"))

    a_t = root.section("alarms")
    resend_first = float(a_t.number("resend_first_s", 60, 1))
    resend_max = float(a_t.number("resend_max_s", 3600, resend_first))
    a_t.done()

    log_t = root.section("log")
    log_format = log_t.text("format", "kv")
    if log_format not in ("kv", "json"):
        raise log_t.fail("format", f"{log_format!r} is not kv or json")
    log_level = log_t.text("level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise log_t.fail("level", f"{log_level!r} is not debug, info, warning or error")
    log_t.done()
    root.done()

    return GatewayConfig(
        path=path, site=site, site_broker=site_broker, district_broker=district_broker, devices=devices,
        rule_files=rule_files, rule_overrides=rule_overrides, ruleset=ruleset, risk_points=risk_points,
        store_path=store_path, site_key_file=site_key_file,
        site_key=None if site_key_hex is None else bytes.fromhex(site_key_hex),
        disk_budget_mb=disk_budget, devices_in_memory=in_memory, batch_max_items=max_items, batch_max_delay_s=max_delay,
        drain_rate=drain_rate, ingest_batch=ingest_batch, check_processes=check_processes, clock_future_s=clock_future,
        clock_past_s=clock_past, gap_grace_s=gap_grace, seq_window=seq_window, metrics_host=metrics_host,
        metrics_port=metrics_port, quarantine_rows=q_rows, quarantine_max_mb=q_mb,
        quarantine_log_interval_s=q_interval,
        command_timeout_s=cmd_timeout, ota_releases=ota_releases, alarm_resend_first_s=resend_first,
        alarm_resend_max_s=resend_max,
        log_format=log_format, log_level=log_level)


def read_toml(p: Path) -> dict[str, Any]:
    """A TOML file as a dict, or a ConfigError that names the file and says what is wrong with it."""
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(raw.decode())
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested past the parser
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None


def load(path: Path | str, check_files: bool = True) -> GatewayConfig:
    p = Path(path)
    return parse(read_toml(p), p.resolve(), check_files)
