"""The demo's live terminal view: what a watcher of the site needs at a glance (each device's state and
reading, the alarms active at the district, the gateway's outbox and uplink, the latest alarm events), kept
up to date from the district record and redrawn a few times a second while the demo runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lifeline.virtual.plan import Device, Site
from lifeline.virtual.recorder import Entry
from protocol import district as dtopics

# The first metric of each class shown in the live view, with its display scale and unit.
SHOWN = {"gas": ("ch4", 1.0, "%LEL"), "water": ("pressure", 1e-3, "kPa"), "drainage": ("level", 1.0, "m"),
         "bridge": ("tilt_x", 1e3, "mrad"), "rain": ("rain_rate", 1.0, "mm/h"), "drone": ("ch4", 1.0, "%LEL")}


class Shown(Protocol):
    """A device of the view: the view needs only its seed entry (its class decides what is shown)."""

    dev: Device


@dataclass
class Status:
    """What the live view shows, fed from the district record and the gateway's metrics."""

    site: Site
    nodes: Mapping[str, Shown]
    t_start: float
    t0: float | None = None
    script_s: float = 0.0
    phase: str = "starting"
    expected: int = 0
    last_seen: dict[str, float] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)
    births: dict[str, int] = field(default_factory=dict)
    reading: dict[str, float] = field(default_factory=dict)
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    recent: deque[tuple[str, ...]] = field(default_factory=lambda: deque(maxlen=10))
    received: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seen_expected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clock(self) -> str:
        if self.t0 is None:
            return f"setting up {time.time() - self.t_start:5.1f} s"
        return f"script {time.time() - self.t0:6.1f} / {self.script_s:.0f} s"

    def on_entry(self, entry: Entry) -> str | None:
        """Fold one district arrival into the view; returns a progress line for alarm events and births."""
        body = entry.body
        with self.lock:
            self.received += 1
            if entry.kind == dtopics.TELEMETRY:
                for pack in body["packs"]:
                    dev = pack.get("dev")
                    if dev not in self.nodes:
                        continue
                    self.last_seen[dev] = entry.t
                    metric, scale, _ = SHOWN[self.nodes[dev].dev.cls]
                    for rec in pack["records"]:
                        if rec.get("metric") == metric and isinstance(rec.get("v"), int | float):
                            self.reading[dev] = rec["v"] * scale
                return None
            if entry.kind == dtopics.UP_STATE and body.get("dev") in self.nodes:
                dev = body["dev"]
                self.last_seen[dev] = entry.t
                self.online[dev] = body.get("st") == "online"
                if self.online[dev] and not body.get("retained"):
                    self.births[dev] = self.births.get(dev, 0) + 1
                    return f"{dev} online (boot {body.get('boot')}, reset cause {body.get('rst')})"
                return None if self.online[dev] else f"{dev} offline"
            if entry.kind != dtopics.ALARM or body.get("resend"):
                return None
            subject = body.get("point") or body.get("dev")
            key = f"{subject} {body.get('rule')}"
            if body.get("ev") == "cleared":
                self.active.pop(key, None)
            else:
                self.active[key] = {**body, "since": self.active.get(key, {}).get("since", entry.t)}
            t_dev = body.get("t_dev")
            latency = f"{1000 * (entry.t - t_dev):.0f} ms" if isinstance(t_dev, int | float) else "-"
            level = body.get("level") or "clear"
            self.recent.appendleft((self.clock_short(entry.t), str(subject), str(body.get("rule")),
                                    str(body.get("ev")), level, latency))
            return f"{subject} {body.get('rule')} {body.get('ev')} {level} (sample to district {latency})"

    def clock_short(self, t: float) -> str:
        return f"{t - (self.t0 or self.t_start):6.1f}s"


def render(st: Status) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    colours = {"blue": "bold blue", "yellow": "bold yellow", "orange": "bold dark_orange", "red": "bold red"}
    now = time.time()
    with st.lock:
        devs = Table(title="devices", expand=True, pad_edge=False, show_edge=False)
        for col in ("device", "class", "state", "seen", "reading"):
            devs.add_column(col, no_wrap=True)
        for dev, node in st.nodes.items():
            seen = st.last_seen.get(dev)
            state = ("[green]online[/]" if st.online.get(dev) else
                     "[red]offline[/]" if dev in st.online else "[dim]booting[/]")
            _, _, unit = SHOWN[node.dev.cls]
            value = st.reading.get(dev)
            devs.add_row(escape(dev), node.dev.cls, state, "-" if seen is None else f"{now - seen:4.0f} s ago",
                         "-" if value is None else f"{value:.4g} {unit}")
        alarms = Table(title="active alarms (at the district)", expand=True, show_edge=False)
        for col in ("subject", "rule", "level", "for"):
            alarms.add_column(col, no_wrap=True)
        for key, body in sorted(st.active.items()):
            level = str(body.get("level"))
            alarms.add_row(escape(key.split(" ")[0]), escape(str(body.get("rule"))),
                           Text(level, style=colours.get(level, "")), f"{now - body['since']:.0f} s")
        gw = st.metrics
        depth = ", ".join(f"{lane} {int(gw.get('outbox_' + lane, 0))}" for lane in ("alarm", "state", "telemetry"))
        gateway = Text.from_markup(
            f"outbox: {depth}   uplink {'[green]up[/]' if gw.get('uplink_connected') else '[red]down[/]'}   "
            f"accepted {int(gw.get('accepted', 0))}   rejected {int(gw.get('rejected', 0))}   "
            f"district received {st.received}, acknowledged {int(gw.get('acks', 0))} alarms")
        recent = Table(title="alarm events at the district (latency: device sample → district)", expand=True,
                       show_edge=False)
        for col in ("at", "subject", "rule", "event", "level", "latency"):
            recent.add_column(col, no_wrap=True, justify="right" if col in ("at", "latency") else "left")
        for at, subject, rule, ev, level, latency in st.recent:
            recent.add_row(at, escape(subject), escape(rule), escape(ev),
                           Text(level, style=colours.get(level, "green")), latency)
        header = Text.from_markup(
            f"[bold]lifeline demo[/]  site [bold]{escape(st.site.id)}[/]  {st.clock()}  "
            f"phase: [bold]{escape(st.phase)}[/]  "
            f"expected alarms seen: {st.seen_expected}/{st.expected}")
        problems = [Text(p, style="red") for p in st.problems[-3:]]
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=5)
    grid.add_column(ratio=6)
    grid.add_row(devs, Group(alarms, Text(""), recent))
    return Panel(Group(header, grid, Panel(gateway, title="gateway"), *problems), border_style="cyan")


@contextlib.contextmanager
def view(status: Status, on: bool) -> Iterator[Any]:
    """The live view drawn from `status` while the block runs, if `on`; yields its console (None if not on),
    through which progress lines go above the view."""
    if not on:
        yield None
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()

    class _View:
        def __rich__(self) -> Any:
            return render(status)

    with Live(_View(), console=console, refresh_per_second=4, screen=False, transient=False):
        yield console
