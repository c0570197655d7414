"""Two sites, each with its own site broker and gateway, feed one district: the second site uses the first's
district broker (Site(..., district=first)), one district.toml lists both, and each site's red alarm reaches
the desk's API under its own site id."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from lifeline.virtual.broker import free_port
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.site import GatewayProcess, Site, SiteError, environment, lifeline_cmd, reading

ROOT = Path(__file__).resolve().parents[2]


def test_a_shared_district_broker_needs_password_logins(tmp_path: Path) -> None:
    first = Site(tmp_path / "a", "a", tls=False)
    with pytest.raises(SiteError, match="tls=False"):
        Site(tmp_path / "b", "b", district=first)


def test_two_sites_feed_one_district(tmp_path: Path) -> None:
    a = Site(tmp_path / "a", "north", tls=False)
    a.add("gas1", "gas")
    b = Site(tmp_path / "b", "south", tls=False, district=a)
    b.add("gas2", "gas")  # device ids are unique across a district (docs/district.md)
    a.start()
    b.start()
    desk_port = free_port()
    conf = write_config([a, b], tmp_path / "district.toml", database="district.sqlite", desk_port=desk_port)
    added = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--add-user", "li.wei", "--role",
                            "operator"], input="duty-password-1\n", capture_output=True, text=True,
                           env=environment(), cwd=ROOT)
    assert added.returncode == 0, added.stderr
    gateways = [GatewayProcess(s).start() for s in (a, b)]
    district = DistrictProcess(conf).start()
    try:
        for gw in gateways:
            asyncio.run(gw.ready())
        district.wait_log("desk-started")
        district.wait_subscribed()

        async def red(s: Site, dev: str) -> None:
            async with s.device_client(dev) as c:
                for _ in range(2):
                    topic, payload, _ = s.data(dev, [reading("ch4", 60.0, "%LEL")])
                    await c.publish(topic, payload, qos=1)

        for s, dev in ((a, "gas1"), (b, "gas2")):
            asyncio.run(red(s, dev))
        with httpx.Client(base_url=f"http://127.0.0.1:{desk_port}") as web:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if web.post("/api/login", json={"user": "li.wei", "password": "duty-password-1"}).is_success:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the desk did not answer"
                time.sleep(0.2)
            deadline = time.monotonic() + 30
            while {(x["site"], x["dev"]) for x in web.get("/api/alarms").json() if x["level"] == "red"} != {
                    ("north", "gas1"), ("south", "gas2")}:
                assert time.monotonic() < deadline, web.get("/api/alarms").json()
                time.sleep(0.2)
    finally:
        code = district.stop()
        for gw in gateways:
            gw.kill()
        b.stop()
        a.stop()
    assert code == 0, district.log()[-3000:]
