"""What the desk sends down comes back answered, end to end, on SQLite and PostgreSQL: a real gateway takes a
rule set from the desk and its `ack` (`re: "rules"`, which names the set's version, not a command id) closes
the command's row: done when applied, failed with the gateway's reason when refused. The same set sent twice
is answered in order, once each."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from lifeline.virtual.broker import free_port
from lifeline.virtual.district import DistrictProcess, write_config
from lifeline.virtual.site import GatewayProcess, Site, environment, lifeline_cmd

ROOT = Path(__file__).resolve().parents[2]
RULES = {"gas": {"ch4": {"unit": "%LEL", "direction": "above", "levels": {"red": 40}, "clear": {"red": 30}}}}


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def test_a_rule_sets_ack_closes_its_command_row(engine: Engine, tmp_path: Path) -> None:
    s = Site(tmp_path / "site", tls=False)
    s.add("gas1", "gas")
    s.start()
    desk_port = free_port()
    conf = write_config(s, tmp_path / "district.toml", database=engine.url.render_as_string(hide_password=False),
                        desk_port=desk_port)
    added = subprocess.run([*lifeline_cmd(), "district", "--config", str(conf), "--add-user", "chen", "--role",
                            "supervisor"], input="duty-password-1\n", capture_output=True, text=True,
                           env=environment(), cwd=ROOT)
    assert added.returncode == 0, added.stderr
    gw = GatewayProcess(s).start()
    district = DistrictProcess(conf).start()
    try:
        asyncio.run(gw.ready())
        district.wait_subscribed()
        with httpx.Client(base_url=f"http://127.0.0.1:{desk_port}", timeout=20) as web:
            login = until(lambda: web.post("/api/login", json={"user": "chen", "password": "duty-password-1"})
                          .is_success and web, 30, "the desk answers")
            csrf = login.get("/api/me").json()["csrf"]
            until(lambda: any(x["site"] == s.id for x in web.get("/api/sites").json()), 20, "the gateway's birth")

            def send(version: int) -> str:
                r = web.post("/api/rules", json={"site": s.id, "ruleset": {"version": version, **RULES}},
                             headers={"X-CSRF-Token": csrf})
                assert r.status_code == 200, r.text
                return str(r.json()["id"])

            def answered(cmd_id: str) -> dict[str, Any]:
                return until(lambda: (lambda c: c if c["state"] != "sent" else None)(
                    web.get(f"/api/commands/{cmd_id}").json()), 20, f"the ack of {cmd_id}; {district.log()[-2000:]}")

            first = send(7)
            applied = answered(first)
            assert (applied["state"], applied["result"]) == ("done", {"version": 7})
            again = send(7)  # not newer than the active set: the gateway refuses it
            refused = answered(again)
            assert refused["state"] == "failed" and refused["result"]["active"] == 7, refused
            assert "greater" in refused["result"]["error"]
            assert web.get(f"/api/commands/{first}").json()["answered"] == applied["answered"]  # answered once
            newer = send(8)
            assert answered(newer)["result"] == {"version": 8}
    finally:
        code = district.stop()
        gw.kill()
        s.stop()
    assert code == 0, district.log()[-3000:]
