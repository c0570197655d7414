"""district.toml: the shipped example loads; mistakes name their field; keys come from the site's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from district import config
from gateway.site_config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
KEY = "cd" * 32


def test_the_example_loads() -> None:
    cfg = config.load(ROOT / "deploy" / "district.example.toml", check_files=False)
    assert (cfg.workers, cfg.group, cfg.desk_port, cfg.raw_days, cfg.messages_days) == (2, "lifeline", 8080, 30, 400)
    assert cfg.sites["riverside-3"].risk_points[0].id == "station-7"


def test_reports_are_kept_as_long_as_messages_and_refusals_90_days_unless_set(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "[retention]\nmessages_days = 700\n"))
    assert (cfg.reports_days, cfg.refusals_days) == (700, 90)
    cfg = config.load(write(tmp_path, "[retention]\nreports_days = 60\nrefusals_days = 7\n"))
    assert (cfg.reports_days, cfg.refusals_days) == (60, 7)


def test_passwords_are_hashed_at_argon2_cffis_cost_unless_set(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, ""))
    assert (cfg.hash_memory_kib, cfg.hash_time_cost) == (65536, 3)
    cfg = config.load(write(tmp_path, "[accounts]\nhash_memory_kib = 19456\nhash_time_cost = 2\n"))
    assert (cfg.hash_memory_kib, cfg.hash_time_cost) == (19456, 2)


def test_every_example_key_is_documented() -> None:
    doc = (ROOT / "docs" / "district.md").read_text()
    keys = [line.split("=")[0].strip() for line in (ROOT / "deploy" / "district.example.toml").read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")]
    assert [k for k in keys if f"`{k}`" not in doc] == []


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "registry.toml").write_text(f'[[devices]]\nid = "gas1"\nclass = "gas"\nkey = "{"ab" * 32}"\n')
    p = tmp_path / "district.toml"
    p.write_text('[broker]\nhost = "127.0.0.1"\n\n' + text)
    return p


def test_a_site_gets_its_keys(tmp_path: Path) -> None:
    (tmp_path / "s1.key").write_text(KEY + "\n")
    cfg = config.load(write(tmp_path, '[[sites]]\nid = "s1"\nseal_key_file = "s1.key"\ndevices = "registry.toml"\n'))
    site = cfg.sites["s1"]
    assert site.seal_key == bytes.fromhex(KEY) and site.device_keys == {"gas1": bytes.fromhex("ab" * 32)}
    v = config.verifier(cfg)
    assert v.site_keys == {"s1": bytes.fromhex(KEY)} and not v.track


def test_a_site_devices_file_gives_its_keys_checked_as_the_gateway_checks_it(tmp_path: Path) -> None:
    (tmp_path / "devices.csv").write_text(f"id,class,key\r\ngas1,gas,{'ab' * 32}\r\nmain2,water,{'ef' * 32}\r\n")
    cfg = config.load(write(tmp_path, f'[[sites]]\nid = "s1"\nseal_key = "{KEY}"\ndevices = "devices.csv"\n'))
    site = cfg.sites["s1"]
    assert site.device_keys == {"gas1": bytes.fromhex("ab" * 32), "main2": bytes.fromhex("ef" * 32)}
    (tmp_path / "devices.csv").write_text(f"id,class,key\ngas1,gas,{'ab' * 32}\nmain2,sewer,{'ef' * 32}\n")
    with pytest.raises(ConfigError, match=r"sites\[0\]\.devices: devices\.csv:3: class: 'sewer' is not one of"):
        config.load(write(tmp_path, f'[[sites]]\nid = "s1"\nseal_key = "{KEY}"\ndevices = "devices.csv"\n'))


@pytest.mark.parametrize(("text", "message"), [
    ('[[sites]]\nid = "s1"\ndevices = "registry.toml"\n', r"sites\[0\]\.seal_key: give seal_key or seal_key_file"),
    (f'[[sites]]\nid = "S 1"\nseal_key = "{KEY}"\n', r"sites\[0\]\.id: must be"),
    ('[[sites]]\nid = "s1"\nseal_key = "abc"\n', r"sites\[0\]\.seal_key: must be hex"),
    (f'[[sites]]\nid = "s1"\nseal_key = "{KEY}"\ndevices = "registry.toml"\n'
     f'[[sites]]\nid = "s2"\nseal_key = "{KEY}"\ndevices = "registry.toml"\n', r"device 'gas1' is also registered"),
    ('[ingest]\nworkers = 0\n', r"ingest\.workers: must be at least 1"),
    ('[database]\nuri = "x"\n', r"database\.uri: unknown key"),
    ('[retention]\nraw_days = "ten"\n', r"retention\.raw_days: must be a number"),
    ("[retention]\nmessages_days = 20\n", r"retention\.messages_days: must be at least raw_days \(30\), not 20"),
    ("[retention]\nraw_days = 90\nmessages_days = 60\n", r"retention\.messages_days: must be at least raw_days \(90\)"),
    ('[retention]\nmessages_days = "forever"\n', r"retention\.messages_days: must be a number"),
    ("[retention]\nmessages_days = 0\n", r"retention\.messages_days: must be at least 1"),
    ("[retention]\nreports_days = 0\n", r"retention\.reports_days: must be at least 1"),
    ('[retention]\nrefusals_days = "a month"\n', r"retention\.refusals_days: must be a number"),
    ("[retention]\nrefusals_days = 5000\n", r"retention\.refusals_days: must be at most 3650"),
    ('[accounts]\nhash_memory_kib = 8192\n', r"accounts\.hash_memory_kib: must be at least 19456"),
    ('[accounts]\nhash_time_cost = 1\n', r"accounts\.hash_time_cost: must be at least 2"),
    ('[accounts]\nhash_time_cost = 3.5\n', r"accounts\.hash_time_cost: must be an integer"),
])
def test_mistakes_name_their_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text))




@pytest.mark.parametrize(("devices", "message"), [
    (f'[[devices]]\nid = "gas1"\nclass = "gas"\nkey = "{"ab" * 16}"\n',
     r"sites\[0\]\.devices \(registry\.toml\)\.devices\[0\]\.key: must be 64 hex characters"),
    (f'[[devices]]\nid = "gas1"\nclass = "gas"\nkey = "{"ab" * 32}"\n'
     f'[[devices]]\nid = "gas1"\nclass = "gas"\nkey = "{"cd" * 32}"\n',
     r"devices\[1\]\.id: device 'gas1' is listed twice"),
    (f'[[devices]]\nid = "Gas 1"\nclass = "gas"\nkey = "{"ab" * 32}"\n', r"devices\[0\]\.id: must be 1-32 characters"),
    (f'[[devices]]\nid = "gas1"\nclass = "sewer"\nkey = "{"ab" * 32}"\n',
     r"devices\[0\]\.class: 'sewer' is not one of"),
    (f'[[devices]]\nid = "gas1"\nclass = "gas"\nkey = "{"ab" * 32}"\nkye = "x"\n', r"devices\[0\]\.kye: unknown key"),
])
def test_a_registrys_devices_are_checked_as_the_gateway_checks_them(tmp_path: Path, devices: str, message: str) -> None:
    """A site's registry (the [[devices]] tables `lifeline flash` writes, maybe edited by hand) was read with
    no check but that each key is hex: a key of 16 bytes, a device listed twice with two keys (the later
    taken), an id or class the gateway refuses were all loaded, and that device's every message was then
    refused at ingest, its MAC failing. Each is a configuration error naming the file and the field, as in a
    site's devices file."""
    path = write(tmp_path, f'[[sites]]\nid = "s1"\nseal_key = "{KEY}"\ndevices = "registry.toml"\n')
    (tmp_path / "registry.toml").write_text(devices)
    with pytest.raises(ConfigError, match=message):
        config.load(path)
