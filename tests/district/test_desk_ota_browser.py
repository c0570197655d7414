"""The desk's firmware-update card in a real headless Chromium over a real uvicorn and Mosquitto, on SQLite: a
supervisor sees what the site serves and each node's download as a bar that moves with the site's progress
reports (live, without a reload), starts a rollout with the page's form (its ota command goes down to the
canary; the box that takes in the nodes whose trial rolled back is off until ticked) and halts it with the
page's button; an operator sees the card but not the form."""

from __future__ import annotations

import time
from pathlib import Path

import cbor2
import pytest
from deskkit import Downlinks, desk_server, seed
from playwright.sync_api import Browser, expect
from sqlalchemy import select
from test_desk_browser import CHROMIUM, announce, browser, log_in

from district import store
from district.live import notice
from district.schema import ota_rollouts
from district.store import open_engine
from lifeline.virtual.broker import Mosquitto
from protocol import district as dtopics

__all__ = ["browser"]  # the fixture, shared with the desk's other browser tests

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
SIG = bytes(range(64))


def test_the_update_card_shows_bars_and_runs_a_rollout(browser: Browser, tmp_path: Path) -> None:
    engine = open_engine(str(tmp_path / "district.sqlite"))
    now = time.time()
    seed(engine, now)
    with engine.begin() as conn:
        for dev in ("gas1", "gas2"):
            store.device_state(conn, "s1", {"dev": dev, "st": "online", "boot": 1, "seq": 0, "t": now - 400,
                                            "fw": "0.1.0", "prof": "gas"}, received=now - 400)
        store.ota_report(conn, "s1", [{"dev": "gas2", "v": "0.2.0", "done": 7000, "total": 70000, "t": now}],
                         [{"v": "0.2.0", "profiles": ["gas"], "n": 300, "sig": SIG, "size": 70000}], received=now)
    with Mosquitto() as broker, desk_server(engine, broker) as url:
        down = Downlinks(broker)
        page = browser.new_page()
        log_in(page, url, "supervisor")
        card = page.locator("#ota-card")
        expect(card.locator("#ota-releases")).to_contain_text("0.2.0 (gas, 68 KB)")
        gas2 = card.locator("#ota-nodes tr[data-dev=gas2]")
        expect(gas2).to_contain_text("0.2.0 10%")
        with engine.begin() as conn:
            store.ota_report(conn, "s1", [{"dev": "gas2", "v": "0.2.0", "done": 52500, "total": 70000, "t": now + 2}],
                             None, received=now + 2)
        announce(broker, notice("ota", site="s1"))
        expect(gas2).to_contain_text("0.2.0 75%")  # the live feed moved the bar

        page.fill("#rollout-canary", "1")
        page.fill("#rollout-timeout", "600")
        retry = card.get_by_label("also nodes whose trial of this release rolled back")
        expect(retry).not_to_be_checked()
        retry.check()
        with page.expect_request("**/api/ota/rollouts") as started:
            card.get_by_role("button", name="Start rollout").click()
        assert started.value.post_data_json["retry_rolled_back"] is True
        row = card.locator("#rollouts tbody tr").first
        expect(row).to_contain_text("running")
        expect(row).to_contain_text("2 in all (stage 1)")
        sent = cbor2.loads(down.wait(dtopics.down("s1", dtopics.DOWN_CMD), 15))
        assert (sent["dev"], sent["op"], sent["args"]) == ("gas1", "ota", {"v": "0.2.0", "n": 300, "sig": SIG.hex()})
        card.get_by_role("button", name="Halt").click()
        expect(row).to_contain_text("halted by chen")
        page.locator("#ota-card").screenshot(path=str(tmp_path / "ota.png"))

        operator = browser.new_page()
        log_in(operator, url, "operator")
        expect(operator.locator("#ota-nodes tr[data-dev=gas2]")).to_contain_text("75%")
        expect(operator.locator("#rollout-form")).to_be_hidden()
        expect(operator.locator("#rollouts tbody tr").first.get_by_role("button", name="Halt")).to_have_count(0)
        down.close()
    with engine.begin() as conn:
        assert conn.execute(select(ota_rollouts.c.state, ota_rollouts.c.reason)).one() == ("halted", "halted by chen")
