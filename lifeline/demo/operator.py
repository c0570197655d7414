"""The demo's scripted duty supervisor at the district desk, and the desk's screenshot.

The operator uses the same HTTP API a person's page uses (login, the session cookie, X-CSRF-Token on every
POST; docs/district.md, "The API"), so the demo exercises the desk rather than the database: each work order
goes open -> acknowledged -> dispatched -> reported -> closed, one step a round and a pause between steps, as
someone reading the board would, and the desk's own response-time report measures it. Like the page, it
acknowledges each alarm on the board at the level and step it read (STEP_GAP_S before the click): one that
rose meanwhile is refused 409, and it reads again and acknowledges what it sees then; an escalation after its
ack brings the alarm back unacknowledged, and it acknowledges it afresh (docs/district.md).
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

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Operator:
    """One logged-in desk session that moves every work order on by a step per `round()`."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base
        self.web = httpx.Client(base_url=base, timeout=5.0)
        self.user = user
        self.password = password
        self.csrf = ""
        self.stepped: dict[int, float] = {}  # order id -> when this operator last moved it
        self.read: dict[str, tuple[float, str, int | None]] = {}  # unacknowledged alarm -> when, level, step read
        self.acks: list[dict[str, Any]] = []  # each ack it made: alarm, subject, level, step, again, refused, t

    def login(self) -> None:
        self.csrf = str(self._answer(self.web.post("/api/login", json={"user": self.user,
                                                                        "password": self.password}))["csrf"])

    def get(self, path: str) -> Any:
        return self._answer(self.web.get(path))

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer(self.web.post(path, json=body, headers={"X-CSRF-Token": self.csrf}))

    @staticmethod
    def _answer(r: httpx.Response) -> Any:
        if not r.is_success:
            raise DeskError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}", r.status_code)
        return r.json()

    def round(self, now: float | None = None) -> list[str]:
        """Acknowledge each alarm read unacknowledged STEP_GAP_S ago, then move each open order one step on if
        its last step was STEP_GAP_S ago; what was done, as lines."""
        now = time.monotonic() if now is None else now
        done = []
        board = self.get("/api/alarms")
        unacked = {a["id"] for a in board if a["acked"] is None}
        self.read = {k: v for k, v in self.read.items() if k in unacked}  # cleared, or acknowledged by another
        for a in board:
            if a["acked"] is not None:
                continue
            seen = self.read.setdefault(a["id"], (now, a["level"], a["step"]))
            if now - seen[0] >= STEP_GAP_S:
                done.append(self._ack(a, seen[1], seen[2]))
                if a["work_order"] is not None:
                    self.stepped[a["work_order"]["id"]] = now  # its order's next step a pause after
        for o in self.get("/api/work-orders"):
            if (o["state"] == "closed" or o["alarm"] in self.read
                    or now - self.stepped.get(o["id"], -STEP_GAP_S) < STEP_GAP_S):
                continue
            subject = f"{o['site']}/{o['point'] or o['dev']} {o['metric']} {o['peak'] or o['level']}"
            state = o["state"]
            if state == "open":  # its alarm off the board (cleared), or acknowledged before it opened the order
                self._post(f"/api/alarms/{o['alarm']}/ack", {"level": o["level"]})
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

    def _ack(self, alarm: dict[str, Any], level: str, step: int | None) -> str:
        """Acknowledge `alarm` at the level and step read; refused 409 (it rose since), read it again and
        acknowledge it as it stands then."""
        refused = None
        try:
            self._post(f"/api/alarms/{alarm['id']}/ack", _seen(level, step))
        except DeskError as exc:
            if exc.status != 409:
                raise
            refused = str(exc)
            self.read.pop(alarm["id"], None)
            found = next((a for a in self.get("/api/alarms") if a["id"] == alarm["id"]), None)
            if found is None or found["acked"] is not None:  # cleared, or acknowledged by someone else
                return f"desk: {self.user} did not acknowledge {alarm['id']}: {refused}; it is no longer unacknowledged"
            alarm, level, step = found, found["level"], found["step"]
            self._post(f"/api/alarms/{alarm['id']}/ack", _seen(level, step))
        self.read.pop(alarm["id"], None)
        again = any(a["alarm"] == alarm["id"] for a in self.acks)
        subject = f"{alarm['site']}/{alarm['point'] or alarm['dev']} {alarm['metric']}"
        self.acks.append({"alarm": alarm["id"], "subject": subject, "level": level, "step": step, "again": again,
                          "refused": refused, "t": time.time()})
        return (f"desk: {self.user} acknowledged {subject} {level} at step {step}"
                + (" again, after its escalation" if again else "")
                + (f" (refused at the step first read: {refused})" if refused else ""))

    def close(self) -> None:
        self.web.close()


def _seen(level: str, step: int | None) -> dict[str, Any]:
    """An ack's body as the page sends it: the level and step it showed (no step from a gateway without them)."""
    return {"level": level} if step is None else {"level": level, "step": step}


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
