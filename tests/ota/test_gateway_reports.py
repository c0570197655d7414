"""The daemon's OTA reports upstream, in process with its clock in the test's hands: the releases offered at
start, on a reload and again every OTA_OFFER_S (a district that started after the gateway learns them), and
progress at most every OTA_REPORT_S, only for downloads that moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
from test_ledger import release_dir

from gateway.daemon import OTA_OFFER_S, OTA_REPORT_S, Gateway
from gateway.ingest import Incoming
from gateway.outbox import STATE
from gateway.site_config import load
from protocol import district, topics


def reports(gateway: Gateway) -> list[dict[str, Any]]:
    return [cbor2.loads(item.body) for item in gateway.outbox.lease(STATE, 1000) if item.kind == district.UP_OTA]


def test_releases_are_offered_at_start_on_reload_and_every_offer_interval(tmp_path: Path) -> None:
    first = release_dir(tmp_path, "0.2.0", b"x" * 5000)
    toml = (f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
            f'port = 1884\n[store]\npath = "{tmp_path / "gw.sqlite"}"\n[[devices]]\nid = "gas-1"\nclass = "gas"\n'
            f'key = "{"11" * 32}"\n[ota]\nreleases = ["{first}"]\n')
    (tmp_path / "site.toml").write_text(toml)
    gateway = Gateway(load(tmp_path / "site.toml"))
    try:
        t0 = 1_000_000.0
        gateway.tick(t0)
        got = reports(gateway)
        assert [[r["v"] for r in g["releases"]] for g in got] == [["0.2.0"]] and got[0]["nodes"] == []
        gateway.handle_ota([Incoming(topics.device("s1", "gas-1", topics.OTA_REQ), b"0.2.0 0 1024", False, t0 + 0.5)])
        gateway.tick(t0 + 1)  # within OTA_REPORT_S of the last report: nothing yet
        assert reports(gateway) == []
        gateway.tick(t0 + OTA_REPORT_S)
        got = reports(gateway)
        assert [(g.get("releases"), [(n["dev"], n["done"]) for n in g["nodes"]]) for g in got] == [
            (None, [("gas-1", 1024)])]
        gateway.tick(t0 + 2 * OTA_REPORT_S)
        assert reports(gateway) == []  # nothing moved
        gateway.tick(t0 + OTA_OFFER_S)
        assert [[r["v"] for r in g["releases"]] for g in reports(gateway)] == [["0.2.0"]]
        second = release_dir(tmp_path, "0.3.0", b"y" * 10)
        (tmp_path / "site.toml").write_text(toml.replace(f'"{first}"]', f'"{first}", "{second}"]'))
        gateway.reload()
        gateway.tick(t0 + OTA_OFFER_S + OTA_REPORT_S)
        assert [[r["v"] for r in g["releases"]] for g in reports(gateway)] == [["0.2.0", "0.3.0"]]
    finally:
        gateway.conn.close()
