"""The demo's scripted duty supervisor at the district desk, and the desk's screenshot.

The operator uses the same HTTP API a person's page uses (login, the session cookie, X-CSRF-Token on every
POST; docs/district.md, "The API"), so the demo exercises the desk rather than the database: each work order
goes open -> acknowledged -> dispatched -> reported -> closed, one step a round and a pause between steps, as
someone reading the board would, and the desk's own response-time report measures it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STEP_GAP_S = 1.5  # between two steps of one order: a person reads the card before the next click
TEAM = "pipe team 3"
DONE = {"open": "acknowledged", "acknowledged": "dispatched", "returned": "dispatched",
        "dispatched": "reported on", "reported": "closed"}


class DeskError(RuntimeError):
    """The desk refused or did not answer; the message has its status and error."""


class Operator:
    """One logged-in desk session that moves every work order on by a step per `round()`."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base
        self.web = httpx.Client(base_url=base, timeout=5.0)
        self.user = user
        self.password = password
        self.csrf = ""
        self.stepped: dict[int, float] = {}  # order id -> when this operator last moved it

    def login(self) -> None:
        self.csrf = str(self._answer(self.web.post("/api/login", json={"user": self.user,
                                                                        "password": self.password}))["csrf"])

    def get(self, path: str) -> Any:
        return self._answer(self.web.get(path))

    def _post(self, path: str, body: dict[str, str]) -> Any:
        return self._answer(self.web.post(path, json=body, headers={"X-CSRF-Token": self.csrf}))

    @staticmethod
    def _answer(r: httpx.Response) -> Any:
        if not r.is_success:
            raise DeskError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}")
        return r.json()

    def round(self, now: float | None = None) -> list[str]:
        """Move each open order one step on, if its last step was STEP_GAP_S ago; what was done, as lines."""
        now = time.monotonic() if now is None else now
        done = []
        for o in self.get("/api/work-orders"):
            if o["state"] == "closed" or now - self.stepped.get(o["id"], -STEP_GAP_S) < STEP_GAP_S:
                continue
            subject = f"{o['site']}/{o['point'] or o['dev']} {o['metric']} {o['peak'] or o['level']}"
            state = o["state"]
            if state == "open":
                self._post(f"/api/alarms/{o['alarm']}/ack", {})
            elif state in ("acknowledged", "returned"):
                self._post(f"/api/work-orders/{o['id']}/dispatch", {"team": TEAM})
            elif state == "dispatched":
                self._post(f"/api/work-orders/{o['id']}/report",
                           {"findings": f"{subject}: found and made safe", "action": "isolated and repaired"})
            elif state == "reported":
                self._post(f"/api/work-orders/{o['id']}/close", {})
            else:
                continue
            self.stepped[o["id"]] = now
            done.append(f"desk: {self.user} {DONE[state]} work order {o['id']} ({subject})")
        return done

    def close(self) -> None:
        self.web.close()


def screenshot(base: str, user: str, password: str, path: Path) -> Path:
    """The desk as its user sees it, logged in and live, written to `path` (PNG)."""
    try:
        from playwright.sync_api import Error, expect, sync_playwright  # only the screenshot needs a browser
    except ImportError as exc:
        raise DeskError(f"Playwright is not installed: {exc}") from None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(base)
                page.fill("#login-user", user)
                page.fill("#login-pass", password)
                page.click("#login-btn")
                expect(page.locator("#live")).to_have_text("live", timeout=15_000)
                page.wait_for_timeout(1500)  # the board, map and orders fill in after the live feed opens
                page.screenshot(path=str(path), full_page=True)
            finally:
                browser.close()
    except (Error, AssertionError) as exc:  # expect() fails with AssertionError
        raise DeskError(f"screenshot of the desk: {exc}") from None
    return path
