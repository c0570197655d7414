"""The gateway's OTA progress report upstream, held to what the district takes (district/upstream.py): at most
10,000 nodes a report. A site of 50,000 devices rolling out to more than 10,000 of them at once sent every
node that moved in one report, which the district refused whole, every 2 s for the whole wave: the desk saw
no progress at all. In-process gateway over its real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from district import upstream
from gateway.daemon import Gateway
from gateway.ota_relay import Chunk
from gateway.site_config import load
from protocol import district, topics

KEY = bytes(range(32))
NOW = 1_800_000_000.0


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    release = tmp_path / "0.2.0"
    release.mkdir()
    manifest = json.dumps({"version": "0.2.0", "profiles": ["gas"]}).encode()
    (release / "manifest.json").write_bytes(manifest)
    (release / "manifest.sig").write_bytes(bytes(64))
    (release / "release.bin").write_bytes(manifest + b"x" * 4000)
    (tmp_path / "site.toml").write_text(
        f'[site]\nid = "s1"\n[site_broker]\nhost = "127.0.0.1"\n[district_broker]\nhost = "127.0.0.1"\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite"}"\n[ota]\nreleases = ["0.2.0"]\n'
        f'[[devices]]\nid = "d1"\nclass = "gas"\nkey = "{KEY.hex()}"\n')
    gateway = Gateway(load(tmp_path / "site.toml"))
    yield gateway
    gateway.conn.close()


def reports(gateway: Gateway) -> list[dict[str, object]]:
    return [cbor2.loads(body) for (body,) in gateway.conn.execute(
        "SELECT body FROM outbox WHERE kind = ? ORDER BY id", (district.UP_OTA,))]


def test_a_wave_of_more_nodes_than_the_district_takes_goes_up_in_reports_it_takes(gw: Gateway) -> None:
    n = 25_001
    for i in range(n):
        dev = f"n{i:05d}"
        gw.ota.progress(Chunk(topics.device("s1", dev, topics.OTA), b"", dev, "0.2.0", 1024, 4000 + 42), NOW)
    gw.tick(NOW + 3)
    sent = reports(gw)
    taken = [upstream.ota_report(body) for body in sent]  # raises Refused for a report the district refuses
    assert [len(nodes) for nodes, _ in taken] == [10_000, 10_000, 5_001]
    assert sorted(node["dev"] for nodes, _ in taken for node in nodes) == [f"n{i:05d}" for i in range(n)]
    assert [offers is not None for _, offers in taken] == [True, False, False]  # the releases served, once
