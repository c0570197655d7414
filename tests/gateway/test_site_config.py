"""site.toml: the shipped example loads; every kind of mistake stops with the field's name and why."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.site_config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[2]
KEY = "ab" * 32

MINIMAL: dict[str, Any] = {
    "site": {"id": "s1"},
    "site_broker": {"host": "127.0.0.1"},
    "district_broker": {"host": "127.0.0.1", "port": 1884},
    "store": {"path": "gw.sqlite"},
    "devices": [{"id": "d1", "class": "gas", "key": KEY}, {"id": "d2", "class": "water", "key": KEY}],
}


def test_example_config_loads_and_every_table_in_it_is_used() -> None:
    cfg = load(ROOT / "deploy" / "site.example.toml", check_files=False)
    assert cfg.site == "riverside-3"
    assert set(cfg.devices) == {"gas-014", "main-02", "pod-1"}
    assert cfg.devices["gas-014"].position == (31.2311, 121.4721)
    assert cfg.district_broker.tls is not None and cfg.district_broker.port == 8883
    assert cfg.store_path == Path("/var/lib/lifeline/gateway.sqlite")
    assert len(cfg.risk_points) == 1
    rules = cfg.ruleset.metric_rules("gas", "gas-014", "ch4")
    assert rules is not None and rules.level is not None and min(rules.level.levels.values()) == 5


def test_example_documents_every_key() -> None:
    """docs/gateway.md names each key the example uses."""
    doc = (ROOT / "docs" / "gateway.md").read_text()
    data = tomllib.loads((ROOT / "deploy" / "site.example.toml").read_text())

    def keys(table: dict[str, Any], prefix: str) -> list[str]:
        out = []
        for k, v in table.items():
            if isinstance(v, dict) and prefix != "rules.overrides.":
                out += keys(v, f"{prefix}{k}.")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    out += keys(item, f"{prefix}{k}[].")
            else:
                out.append(f"{prefix}{k}")
        return out

    missing = [k for k in set(keys(data, "")) if not k.startswith("rules.overrides.")
               and f"`{k.rsplit('.', 1)[-1]}`" not in doc]
    assert not missing


def test_defaults(tmp_path: Path) -> None:
    cfg = parse(MINIMAL, tmp_path / "site.toml")
    assert cfg.site_broker.port == 1883 and cfg.site_broker.client_id == "lifeline-gw-s1"
    assert cfg.store_path == tmp_path / "gw.sqlite"  # relative to the config file
    assert cfg.devices["d1"].key == bytes.fromhex(KEY)
    assert cfg.ruleset.classes  # the shipped rule sets
    assert cfg.devices_in_memory == 1024
    assert cfg.ingest_batch == 500
    assert cfg.check_processes == 0  # the ingest decodes; check processes are asked for


def test_quarantine_bytes_default_to_a_share_of_the_disk_budget(tmp_path: Path) -> None:
    assert parse(MINIMAL, tmp_path / "site.toml").quarantine_max_mb == 32
    small = with_change("store.disk_budget_mb", 40)
    assert parse(small, tmp_path / "site.toml").quarantine_max_mb == 10


def with_change(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with one key set (value ...) or deleted (value None); path like "devices.1.key"."""
    doc = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("path,value,message", [
    ("site.id", None, "site.id: missing"),
    ("site.id", "Site 1", "site.id: must be 1-32 characters of a-z 0-9 _ -"),
    ("devices.1.key", "abc", "devices[1].key: must be 64 hex characters"),
    ("devices.0.class", "volcano", "devices[0].class: 'volcano' is not one of gas"),
    ("devices.1.id", "d1", "devices[1].id: device 'd1' is listed twice"),
    ("devices.0.position", [91, 0], "devices[0].position: latitude 91.0 is outside -90..90"),
    ("devices.0.colour", "red", "devices[0].colour: unknown key"),
    ("site_broker.hots", "x", "site_broker.hots: unknown key"),
    ("site_broker.host", None, "site_broker.host: missing"),
    ("site_broker.port", 70000, "site_broker.port: must be at most 65535"),
    ("site_broker.port", "1883", "site_broker.port: must be an integer, not str"),
    ("site_broker.password", "x", "site_broker.username: missing (a password needs a username)"),
    ("district_broker.tls", {"ca_file": "/nonexistent/ca.crt"}, "district_broker.tls.ca_file: file"),
    ("store.path", None, "store.path: missing"),
    ("store.disk_budget_mb", "big", "store.disk_budget_mb: must be a number"),
    ("store.devices_in_memory", 0, "store.devices_in_memory: must be at least 1"),
    ("store.devices_in_memory", 2.5, "store.devices_in_memory: must be an integer"),
    ("uplink.batch_max_items", 0, "uplink.batch_max_items: must be at least 1"),
    ("ingest.clock_future_s", True, "ingest.clock_future_s: must be a number, not a boolean"),
    ("ingest.check_processes", -1, "ingest.check_processes: must be at least 0"),
    ("ingest.check_processes", 17, "ingest.check_processes: must be at most 16"),
    ("ingest.check_processes", 1.5, "ingest.check_processes: must be an integer"),
    ("log.format", "xml", "log.format: 'xml' is not kv or json"),
    ("quarantine.max_mb", 200, "quarantine.max_mb: must be at most 128.0"),  # a quarter of the default 512
    ("risk_points", [{"id": "p", "class": "gas", "lat": 95, "lon": 0, "radius_m": 5}], "risk_points[0].lat"),
    ("rules.overrides", {"gas": {"ch4": {"direction": "sideways"}}}, "rules.overrides.gas.ch4.direction"),
    ("rules.files", ["nope.toml"], "rules.files[0]: file"),
    ("ota.releases", "0.2.0", "ota.releases: must be a list of release directories"),
    ("ota.releases", ["nowhere/0.2.0"], "ota.releases[0]: "),
    ("ota.release", ["x"], "ota.release: unknown key"),
])
def test_each_mistake_names_its_field(tmp_path: Path, path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(with_change(path, value), tmp_path / "site.toml")
    assert str(exc.value).startswith(message), str(exc.value)


def test_client_certificate_is_required_with_district_tls(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    doc = with_change("district_broker.tls", {"ca_file": "ca.crt"})
    with pytest.raises(ConfigError, match=r"^district_broker\.tls\.cert_file: missing"):
        parse(doc, tmp_path / "site.toml")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_a_password_file_that_cannot_be_read_names_its_field(tmp_path: Path) -> None:
    """Not UTF-8 here; a file of another user's (0600, the unit's case) is tried in tests/test_deploy.py."""
    (tmp_path / "gw.password").write_bytes(b"\xff\xfe")
    doc = with_change("site_broker.password_file", "gw.password")
    doc["site_broker"]["username"] = "gateway"
    with pytest.raises(ConfigError, match=r"^site_broker\.password_file: cannot read .*gw\.password: not UTF-8"):
        parse(doc, tmp_path / "site.toml")


def test_ota_releases_are_release_directories_of_distinct_versions(tmp_path: Path) -> None:
    for name, version in (("a", "0.2.0"), ("b", "0.2.0"), ("c", "0.3.0")):
        (tmp_path / name).mkdir()
        manifest = json.dumps({"version": version, "profiles": ["gas"]}).encode()
        (tmp_path / name / "manifest.json").write_bytes(manifest)
        (tmp_path / name / "manifest.sig").write_bytes(bytes(64))
        (tmp_path / name / "release.bin").write_bytes(manifest + b"x")
    assert parse(with_change("ota.releases", ["a", "c"]), tmp_path / "site.toml").ota_releases == (
        tmp_path / "a", tmp_path / "c")
    with pytest.raises(ConfigError, match=r"^ota\.releases\[1\]: version 0\.2\.0 is also releases\[0\]"):
        parse(with_change("ota.releases", ["a", "b"]), tmp_path / "site.toml")
    (tmp_path / "c" / "release.bin").unlink()
    with pytest.raises(ConfigError, match=r"^ota\.releases\[0\]: .* is not a release directory .*release\.bin"):
        parse(with_change("ota.releases", ["c"]), tmp_path / "site.toml")
    assert parse(MINIMAL, tmp_path / "site.toml").ota_releases == ()


# ------------------------------------------------------------------------------ [site] devices_file

HEAD = "id,class,key,latitude,longitude\n"
KEY2 = "CD" * 32


def with_devices_file(tmp_path: Path, content: str | bytes, tables: bool = False) -> dict[str, Any]:
    """MINIMAL with its devices in devices.csv (`content`) instead, or beside its tables with `tables`."""
    (tmp_path / "devices.csv").write_bytes(content.encode() if isinstance(content, str) else content)
    doc = copy.deepcopy(MINIMAL) if tables else with_change("devices", None)
    doc["site"]["devices_file"] = "devices.csv"
    return doc


def test_a_devices_file_gives_what_the_same_devices_as_tables_give(tmp_path: Path) -> None:
    as_file = with_devices_file(tmp_path, HEAD + f"gas-1,gas,{KEY},31.2311,121.4721\nmain_2,water,{KEY2},,\n")
    as_tables = with_change("devices", [
        {"id": "gas-1", "class": "gas", "key": KEY, "position": [31.2311, 121.4721]},
        {"id": "main_2", "class": "water", "key": KEY2}])
    devices = parse(as_file, tmp_path / "site.toml").devices
    assert devices == parse(as_tables, tmp_path / "site.toml").devices
    assert devices["gas-1"].position == (31.2311, 121.4721) and devices["main_2"].position is None


def test_a_devices_file_adds_to_the_tables_and_may_omit_positions(tmp_path: Path) -> None:
    doc = with_devices_file(tmp_path, f"key,id,class\n{KEY2},d3,rain\n", tables=True)
    devices = parse(doc, tmp_path / "site.toml").devices
    assert list(devices) == ["d1", "d2", "d3"]
    assert devices["d3"].key == bytes.fromhex(KEY2) and devices["d3"].cls == "rain"


def test_a_spreadsheet_export_is_read(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8": a byte-order mark, CRLF line ends, quoted cells and empty rows at the end."""
    rows = f'{HEAD}"d3",gas,{KEY},-33.9,18.4\n\n,,,,\n'.replace("\n", "\r\n")
    doc = with_devices_file(tmp_path, b"\xef\xbb\xbf" + rows.encode())
    assert parse(doc, tmp_path / "site.toml").devices["d3"].position == (-33.9, 18.4)


def test_the_devices_file_is_read_when_other_files_are_not(tmp_path: Path) -> None:
    """site-auth loads with check_files=False, and the devices are what it writes logins for."""
    doc = with_devices_file(tmp_path, f"id,class,key\nd3,gas,{KEY}\n")
    assert list(parse(doc, tmp_path / "site.toml", check_files=False).devices) == ["d3"]


@pytest.mark.parametrize("content,message", [
    ("", "devices.csv:1: 'id': missing column (required)"),
    ("id,class\n", "devices.csv:1: 'key': missing column (required)"),
    ("id,class,key,colour\n", "devices.csv:1: 'colour': unknown column (the columns are id, class, key, "),
    ("id,class,key,id\n", "devices.csv:1: 'id': a column named twice"),
    ("id,class,key,latitude\n", "devices.csv:1: 'longitude': missing column (latitude and longitude go together)"),
    (f"{HEAD}\nd3,gas,{KEY},1\n", "devices.csv:3: 4 cells where the first line names 5"),
    (HEAD + "".join(f"d{i},gas,{KEY},,\n" for i in range(5)) + f"d9,gas,{KEY[2:]},,\n",
     "devices.csv:7: key: must be 64 hex characters (a 32-byte HMAC key)"),
    (f"{HEAD}D3,gas,{KEY},,\n", "devices.csv:2: id: must be 1-32 characters of a-z 0-9 _ -"),
    (f"{HEAD}d3,volcano,{KEY},,\n", "devices.csv:2: class: 'volcano' is not one of gas"),
    (f"{HEAD}d3,gas,{KEY},91,0\n", "devices.csv:2: latitude: 91.0 is outside -90..90"),
    (f"{HEAD}d3,gas,{KEY},0,-180.5\n", "devices.csv:2: longitude: -180.5 is outside -180..180"),
    (f"{HEAD}d3,gas,{KEY},north,0\n", "devices.csv:2: latitude: 'north' is not a number of degrees"),
    (f"{HEAD}d3,gas,{KEY},31.2,\n", "devices.csv:2: longitude: empty (latitude and longitude go together)"),
    (f"{HEAD}{'d' * 300},gas,{KEY},,\n", "devices.csv:2: id: longer than 256 characters"),
    (f'{HEAD}"d3"x,gas,{KEY},,\n', "devices.csv:2: not CSV ("),
    (f'{HEAD}"d3,gas,{KEY},,\nd4,gas,{KEY},,\n', "devices.csv:2: not CSV ("),  # a quote left open
    (f"{HEAD}d3,gas,{KEY},,\n".encode() + b"d\xff,gas\n", "devices.csv:3: not UTF-8 text"),
    (f"{HEAD}d3,gas,{KEY},,{'0' * 5000}\n", "devices.csv:2: longer than 4096 bytes"),
    (f"{HEAD}d3,gas,{KEY},,\nd4,gas,{KEY},,\nd3,gas,{KEY2},,\n",
     "devices.csv:4: id: device 'd3' is listed twice (also line 2)"),
])
def test_each_mistake_in_the_devices_file_names_its_line_and_column(tmp_path: Path, content: str | bytes,
                                                                    message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(with_devices_file(tmp_path, content), tmp_path / "site.toml")
    assert str(exc.value).startswith(message), str(exc.value)


def test_a_device_in_both_places_names_both(tmp_path: Path) -> None:
    doc = with_devices_file(tmp_path, f"id,class,key\nd3,gas,{KEY}\nd2,gas,{KEY}\n", tables=True)
    with pytest.raises(ConfigError, match=r"^devices\.csv:3: id: device 'd2' is also devices\[1\] in site\.toml$"):
        parse(doc, tmp_path / "site.toml")


def test_a_missing_devices_file_names_the_key(tmp_path: Path) -> None:
    doc = with_change("site.devices_file", "absent.csv")
    with pytest.raises(ConfigError, match=r"^site\.devices_file: cannot read .*absent\.csv: No such file"):
        parse(doc, tmp_path / "site.toml")
