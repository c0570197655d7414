"""What reached the district during a demo, judged against the incident's expected alarms, as a plot and a summary.

Everything here works from the district record alone (district.jsonl: receipt time, uplink kind, decoded body),
so a run's report can be rebuilt from its record. Latency of an alarm is its district receipt time minus the
device time of the sample that caused it (`t_dev` in the alarm event): sampling, the device's queue, the site
broker, the gateway's checks and rules, its outbox and the district uplink, end to end. Devices and the
recorder share one host clock, so the difference needs no clock correction.
"""

from __future__ import annotations

import io
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.rules import RuleSet
from lifeline.virtual.plan import CLEAR, Expect, Incident, Site
from lifeline.virtual.recorder import DistrictLog, Entry, replace_whole
from protocol import district

# Colours of the four warning levels as drawn (gold reads better than pure yellow on white).
LEVEL_COLOURS = {"blue": "#1f6fd1", "yellow": "#e0b000", "orange": "#f07800", "red": "#d11f1f"}
TEXT_COLOURS = {**LEVEL_COLOURS, "yellow": "#a07c00"}  # darker gold: readable as text on white


@dataclass
class Sample:
    t: float
    value: float


def samples(log: DistrictLog) -> dict[tuple[str, str], list[Sample]]:
    """(device, metric) -> samples by device time; a vb reading counts as 0/1."""
    out: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for e in log.of(district.TELEMETRY):
        for pack in e.body["packs"]:
            for rec in pack.get("records", ()):
                value = rec.get("v", rec.get("vb"))
                if isinstance(value, bool):
                    value = float(value)
                if isinstance(value, int | float) and isinstance(rec.get("t"), int | float):
                    out[(pack["dev"], rec["metric"])].append(Sample(float(rec["t"]), float(value)))
    for found in out.values():
        found.sort(key=lambda s: s.t)
    return dict(out)


# ------------------------------------------------------------------------------------------ judging


@dataclass
class Seen:
    """One expected alarm state and the transition that showed it at the district, if any."""

    incident: str
    subject: str
    point: bool
    rule: str
    state: str
    seen: bool = False
    event: str | None = None
    alarm_id: str | None = None
    t_dev: float | None = None
    t_gw: float | None = None
    t_district: float | None = None
    latency_s: float | None = None
    gateway_s: float | None = None  # device sample -> gateway transition
    uplink_s: float | None = None  # gateway transition -> district receipt
    reading: float | None = None

    @property
    def label(self) -> str:
        return f"{'point ' if self.point else ''}{self.subject} {self.rule} {self.state}"


def _state(body: Mapping[str, Any]) -> str:
    return CLEAR if body.get("ev") == "cleared" else str(body.get("level"))


def _matches(body: Mapping[str, Any], expect: Expect) -> bool:
    if body.get("rule") != expect.rule:
        return False
    if expect.point:
        return body.get("point") == expect.subject
    return body.get("dev") == expect.subject and body.get("point") is None


def judge(site: Site, log: DistrictLog) -> list[Seen]:
    """Each expected state in order: the first first-sent transition reaching it after the previous one."""
    out = []
    alarms = [e for e in log.alarms() if not e.body.get("resend")]
    for inc in site.incidents:
        for expect in inc.expect:
            pos = 0
            candidates = [e for e in alarms if _matches(e.body, expect)]
            for state in expect.levels:
                seen = Seen(inc.id, expect.subject, expect.point, expect.rule, state)
                for i in range(pos, len(candidates)):
                    body = candidates[i].body
                    if _state(body) == state:
                        _fill(seen, candidates[i])
                        pos = i + 1
                        break
                out.append(seen)
    return out


def _fill(seen: Seen, entry: Entry) -> None:
    body = entry.body
    seen.seen = True
    seen.event = body.get("ev")
    seen.alarm_id = body.get("id")
    seen.t_district = entry.t
    seen.reading = body.get("reading")
    t_dev, t_gw = body.get("t_dev"), body.get("t_gw")
    if isinstance(t_dev, int | float):
        seen.t_dev = float(t_dev)
        seen.latency_s = entry.t - t_dev
    if isinstance(t_gw, int | float):
        seen.t_gw = float(t_gw)
        seen.uplink_s = entry.t - t_gw
        if seen.t_dev is not None:
            seen.gateway_s = t_gw - seen.t_dev


def others(site: Site, log: DistrictLog) -> list[Entry]:
    """Alarm transitions no expectation covers (first sends only): stale devices, neighbours of an incident."""
    expects = [e for inc in site.incidents for e in inc.expect]
    return [e for e in log.alarms() if not e.body.get("resend") and not any(_matches(e.body, x) for x in expects)]


# ------------------------------------------------------------------------------------------ summary


@dataclass
class Summary:
    site: str
    quick: bool
    t0: float
    ok: bool
    expected: list[Seen]
    missing: list[str]
    other_alarms: list[dict[str, Any]]
    devices: dict[str, dict[str, Any]]
    latency_s: dict[str, float | int | None]
    received: dict[str, int]
    notes: list[str] = field(default_factory=list)
    # the district desk at the end (run.Demo.district_report): sites, work orders, response times
    district: dict[str, Any] = field(default_factory=dict)


def summarise(site: Site, log: DistrictLog, t0: float, quick: bool, devices: Iterable[str],
              notes: Sequence[str] = (), desk: Mapping[str, Any] | None = None,
              since_power_on: Sequence[Entry] = ()) -> Summary:
    """The run judged. With the desk's scripted supervisor (`desk["operator"]`), a work order left
    unclosed fails the run as a missing alarm does. `log` is the script's window; the devices' births,
    deaths and packs are counted over `since_power_on` (the window if empty), as they come online before
    the script begins."""
    seen = judge(site, log)
    lat = [s.latency_s for s in seen if s.latency_s is not None]
    per_dev: dict[str, dict[str, Any]] = {d: {"births": 0, "deaths": 0, "packs": 0, "first_birth_s": None}
                                          for d in devices}
    for e in since_power_on or log.entries:
        if e.kind == district.UP_STATE and isinstance(e.body, Mapping) and e.body.get("dev") in per_dev:
            d = per_dev[e.body["dev"]]
            if e.body.get("st") == "online":
                d["births"] += 1
                if d["first_birth_s"] is None and not e.body.get("retained"):
                    d["first_birth_s"] = round(e.t - t0, 3)
            else:
                d["deaths"] += 1
        elif e.kind == district.TELEMETRY:
            for pack in e.body["packs"]:
                if pack.get("dev") in per_dev:
                    per_dev[pack["dev"]]["packs"] += 1
    received: dict[str, int] = defaultdict(int)
    for e in log.entries:
        received[e.kind] += 1
    other = [{"t_s": round(e.t - t0, 3), **{k: e.body.get(k) for k in ("ev", "dev", "point", "rule", "level",
                                                                        "prev", "reading", "cause")}}
             for e in others(site, log)]
    at_desk = dict(desk or {})
    missing = [s.label for s in seen if not s.seen]
    if at_desk.get("operator"):
        missing += [f"work order {o['id']} ({o['site']}/{o['point'] or o['dev']}) left {o['state']}"
                    for o in at_desk.get("work_orders", []) if o["state"] != "closed"]
    return Summary(
        site=site.id, quick=quick, t0=t0, ok=not missing, expected=seen, missing=missing, other_alarms=other,
        devices=per_dev, district=at_desk,
        latency_s={"n": len(lat), "min": min(lat, default=None), "median": statistics.median(lat) if lat else None,
                   "max": max(lat, default=None)},
        received=dict(received), notes=list(notes))


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def write_summary(summary: Summary, out: Path) -> tuple[Path, Path]:
    data = asdict(summary)
    js = out / "summary.json"
    replace_whole(js, (json.dumps(data, indent=2) + "\n").encode())
    t0 = summary.t0
    lines = [f"# Site demo: {summary.site}{' (quick)' if summary.quick else ''}", ""]
    verdict = ("every expected alarm reached the district" if summary.ok
               else f"MISSING at the district: {', '.join(summary.missing)}")
    lines += [f"**Result:** {verdict}.", ""]
    ls = summary.latency_s
    if ls["n"]:
        lines += [f"Latency, device sample to district receipt, over {ls['n']} alarm events: min "
                  f"{_ms(ls['min'])} ms, median {_ms(ls['median'])} ms, max {_ms(ls['max'])} ms.", "",
                  "Devices stamp every reading to 1/1024 s (firmware/lib/app/publisher.py), so a latency is "
                  "good to about a millisecond and never reads below zero. Gateway to district is measured on "
                  "one clock.", ""]
    lines += ["## Expected alarms", "",
              "| incident | subject | rule | state | event | sample at (s) | device → gateway (ms) "
              "| gateway → district (ms) | total (ms) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary.expected:
        at = "-" if s.t_dev is None else f"{s.t_dev - t0:.1f}"
        subject = f"point {s.subject}" if s.point else s.subject
        lines.append(f"| {s.incident} | {subject} | {s.rule} | {s.state} | {s.event or '**missing**'} | {at} | "
                     f"{_ms(s.gateway_s)} | {_ms(s.uplink_s)} | {_ms(s.latency_s)} |")
    lines += ["", "## Other alarm events at the district", ""]
    if summary.other_alarms:
        lines += ["| at (s) | event | device | point | rule | level | cause |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for o in summary.other_alarms:
            lines.append(f"| {o['t_s']:.1f} | {o['ev']} | {o['dev']} | {o['point'] or ''} | {o['rule']} | "
                         f"{o['level'] or '-'} | {o['cause'] or ''} |")
    else:
        lines.append("None.")
    lines += ["", "## Devices", "", "Since power-on; the script begins at 0 s.", "",
              "| device | births | deaths | telemetry packs | online at (s) |",
              "| --- | --- | --- | --- | --- |"]
    for dev, d in summary.devices.items():
        online = "-" if d["first_birth_s"] is None else f"{d['first_birth_s']:.1f}"
        lines.append(f"| {dev} | {d['births']} | {d['deaths']} | {d['packs']} | {online} |")
    lines += ["", "Received at the district, by kind: "
              + ", ".join(f"{k} {n}" for k, n in sorted(summary.received.items())) + "."]
    lines += _district_lines(summary.district)
    if summary.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary.notes]
    md = out / "summary.md"
    replace_whole(md, ("\n".join(lines) + "\n").encode())
    return md, js


def _district_lines(desk: Mapping[str, Any]) -> list[str]:
    """The district desk's part of summary.md: its sites, the work orders and its response times."""
    if not desk:
        return []
    lines = ["", "## District desk", "", f"Desk: {desk['desk']} (user {desk['user']}, role supervisor).", "",
             "Sites: " + ", ".join(f"{s['site']} {'online' if s['online'] else 'offline'}" for s in desk["sites"])
             + ".", "", "| work order | site | subject | peak | state | team |",
             "| --- | --- | --- | --- | --- | --- |"]
    for o in desk["work_orders"]:
        lines.append(f"| {o['id']} | {o['site']} | {o['point'] or o['dev']} {o['metric']} | {o['peak']} | "
                     f"{o['state']} | {o['team'] or ''} |")
    lines += ["", "Response times (the desk's /api/response-times), seconds:", "",
              "| by | of | measure | p50 | p90 | max | count |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for by, groups in desk["response_times"].items():
        for name, measures in groups.items():
            for measure, q in measures.items():
                lines.append(f"| {by} | {name} | {measure} | {_s(q['p50'])} | {_s(q['p90'])} | {_s(q['max'])} | "
                             f"{q['count']} |")
    acks = desk.get("acks") or []
    again = [a for a in acks if a["again"]]
    if acks:
        lines += ["", f"The supervisor acknowledged {len(acks)} alarms at the level and step the desk showed, "
                      f"{sum(1 for a in acks if a['refused'])} after a 409 (it rose before the click), and "
                      f"{len(again)} again after an escalation:"]
        lines += [f"- {a['subject']} {a['level']} at step {a['step']}" for a in again]
    return lines


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


# ------------------------------------------------------------------------------------------ plot


def _bands(ruleset: RuleSet, rule_id: str, cls: str, subject: str, metric: str) -> list[tuple[str, float, float]]:
    """(level, value, clear) of the level rule drawn in a panel."""
    rules = ruleset.metric_rules(cls, subject, metric)
    if rules is None or rules.level is None:
        return []
    th = rules.level
    return [(lv.label, th.levels[lv], th.clear[lv]) for lv in sorted(th.levels)]


def plot(site: Site, log: DistrictLog, ruleset: RuleSet, t0: float, quick: bool, out: Path,
         acks: Sequence[Mapping[str, Any]] = ()) -> Path:
    """The timeline; `acks`, the scripted supervisor's (operator.Operator.acks), are marked at the top of
    their alarm's panel, so an escalation's fresh ack shows beside the one before it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    series = samples(log)
    alarms = [e for e in log.alarms() if not e.body.get("resend")]
    incidents = list(site.incidents)
    fig, axes = plt.subplots(len(incidents), 1, figsize=(12, 3.4 * len(incidents)), squeeze=False)
    for ax, inc in zip((a[0] for a in axes), incidents, strict=True):
        _panel(ax, inc, site, series, alarms, ruleset, t0, quick, acks)
    handles = [Line2D([], [], marker="^", ls="", color="k", label="raised / escalated"),
               Line2D([], [], marker="v", ls="", color="k", label="de-escalated"),
               Line2D([], [], marker="o", ls="", mfc="white", color="k", label="cleared"),
               Line2D([], [], marker="D", ls="", color="k", label="rate rule"),
               Line2D([], [], marker="|", ms=10, mew=2, ls="", color="k", label="desk ack")]
    handles += [Line2D([], [], lw=8, alpha=0.25, color=c, label=f"{lv} band") for lv, c in LEVEL_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=9, frameon=False, fontsize=9)
    fig.suptitle(f"Site demo {site.id}: readings at the district, threshold bands, alarm transitions "
                 f"(labels: level, device sample → district ms)", fontsize=12)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    path = out / "timeline.png"
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    replace_whole(path, png.getvalue())
    return path


def _panel(ax: Any, inc: Incident, site: Site, series: Mapping[tuple[str, str], list[Sample]],
           alarms: Sequence[Entry], ruleset: RuleSet, t0: float, quick: bool,
           acks: Sequence[Mapping[str, Any]] = ()) -> None:
    p = inc.panel
    dev = site.devices[p.dev]
    pressure = p.metric == "pressure"
    scale, unit = (1e-3, "kPa") if pressure else (1.0, _unit(ruleset, dev.cls, p.metric))
    cls = site.risk_points[p.point].cls if p.point else dev.cls
    subject = p.point or p.dev
    start = inc.start(quick)
    lo, hi = start - 10, start + inc.duration + 15
    every = series.get((p.dev, p.metric), [])
    samples = [s for s in every if lo <= s.t - t0 <= hi]
    before = [s for s in every if s.t - t0 < lo]
    xs = [s.t - t0 for s in samples]
    ys = [s.value * scale for s in samples]
    # A device sends a value when it changes enough (or on its heartbeat), so a reading holds until the next:
    # drawn as steps, entering the panel at the last value sent before it.
    line_x = ([lo] if before else []) + xs
    line_y = ([before[-1].value * scale] if before else []) + ys
    ax.plot(line_x, line_y, "-", drawstyle="steps-post", color="#333333", lw=1.2, zorder=3)
    ax.plot(xs, ys, ".", color="#333333", ms=4, zorder=3)
    bands = _bands(ruleset, p.rule, cls, subject, p.metric)
    rule_dir = _direction(ruleset, cls, subject, p.metric)
    top = max([*line_y, *(v * scale for _, v, _ in bands)], default=1.0) * 1.18
    bottom = 0.0
    for i, (lv, value, _clear) in enumerate(bands):
        if rule_dir == "below":  # bands hang from each level down to the next (lower) one
            floor = bands[i + 1][1] * scale if i + 1 < len(bands) else bottom
            ax.axhspan(floor, value * scale, color=LEVEL_COLOURS[lv], alpha=0.13, lw=0)
        else:
            ceiling = bands[i + 1][1] * scale if i + 1 < len(bands) else top
            ax.axhspan(value * scale, ceiling, color=LEVEL_COLOURS[lv], alpha=0.13, lw=0)
        ax.axhline(value * scale, color=LEVEL_COLOURS[lv], lw=0.8, alpha=0.7)
        ax.text(0.995, value * scale, f"{lv} {value * scale:g} ", transform=ax.get_yaxis_transform(),
                color=TEXT_COLOURS[lv], fontsize=8, ha="right", va="bottom")
    ax.set_ylim(bottom, top)
    ax.set_xlim(lo, hi)
    placed: list[tuple[float, float]] = []
    mine = [e for e in alarms if (e.body.get("point") == p.point if p.point else
                                  (e.body.get("dev") == p.dev and e.body.get("point") is None))
            and str(e.body.get("rule", "")).startswith(f"{cls}.")]
    for e in mine:
        b = e.body
        t_dev = b.get("t_dev")
        x = (t_dev if isinstance(t_dev, int | float) else e.t) - t0
        reading = b.get("reading")
        y = reading * scale if isinstance(reading, int | float) else top * 0.95
        ev = b.get("ev")
        colour = LEVEL_COLOURS.get(str(b.get("level") or b.get("prev")), "k")
        marker = {"raised": "^", "escalated": "^", "de-escalated": "v", "cleared": "o"}.get(str(ev), "s")
        if b.get("kind") == "rate":
            marker = "D"
        face = "white" if ev == "cleared" else colour
        ax.plot([x], [y], marker=marker, ms=9, mfc=face, mec=colour, mew=1.6, ls="", zorder=5)
        latency = "" if not isinstance(t_dev, int | float) else f" {1000 * (e.t - t_dev):.0f} ms"
        label = ("clear" if ev == "cleared" else str(b.get("level"))) + (" (rate)" if b.get("kind") == "rate" else "")
        dy = _free_offset(ax, placed, x, y, ev == "de-escalated")
        ax.annotate(label + latency, (x, y), xytext=(5, dy), textcoords="offset points", fontsize=7.5,
                    color=TEXT_COLOURS.get(str(b.get("level") or b.get("prev")), "k"), zorder=6,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
                    arrowprops=dict(arrowstyle="-", lw=0.5, color=colour) if abs(dy) > 15 else None)
    ids = {e.body.get("id") for e in mine}
    for a in acks:
        if a["alarm"] in ids and lo <= a["t"] - t0 <= hi:
            colour = LEVEL_COLOURS.get(str(a["level"]), "k")
            ax.plot([a["t"] - t0], [top], marker="|", ms=12, mew=2, color=colour, ls="", zorder=5, clip_on=False)
            ax.annotate(f"ack {a['level']}" + (" again" if a["again"] else ""), (a["t"] - t0, top),
                        xytext=(2, -6), textcoords="offset points", fontsize=7, ha="left", va="top", rotation=90,
                        color=TEXT_COLOURS.get(str(a["level"]), "k"), zorder=6)  # upright: acks come seconds apart
    if p.rain and (p.rain, "rain_rate") in series:
        twin = ax.twinx()
        rain = [r for r in series[(p.rain, "rain_rate")] if lo <= r.t - t0 <= hi]
        twin.fill_between([s.t - t0 for s in rain], [s.value for s in rain], step="post", color="#5b8cc0",
                          alpha=0.25, lw=0)
        twin.set_ylabel(f"{p.rain} rain_rate (mm/h)", color="#3a6ea5", fontsize=9)
        twin.set_ylim(0, max([s.value for s in rain] + [10]) * 2.5)
        twin.tick_params(axis="y", labelsize=8, colors="#3a6ea5")
    if p.point:
        _distance_axis(ax, site, p.dev, p.point, series, t0)
    ax.set_xlim(lo, hi)  # again: a twin axis autoscales the shared x axis
    ax.set_title(f"{inc.title}: {p.dev} ({dev.where}), judged by {p.rule}"
                 + (f" over {p.point}" if p.point else ""), fontsize=10, loc="left")
    ax.set_ylabel(f"{p.metric} ({unit})", fontsize=9)
    ax.set_xlabel("seconds since the script began (device time)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25)


def _free_offset(ax: Any, placed: list[tuple[float, float]], x: float, y: float, below: bool) -> float:
    """A vertical label offset (points) that keeps this label off the ones already placed near it."""
    px, py = ax.transData.transform((x, y))
    per_pt = ax.figure.dpi / 72.0
    steps = (-14, -26, -38, 8, 20) if below else (8, 20, 32, 44, -14, -26)
    for dy in steps:
        if all(abs(px - qx) > 80 or abs(py + dy * per_pt - qy) > 12 * per_pt for qx, qy in placed):
            break
    placed.append((px, py + dy * per_pt))
    return dy


def _distance_axis(ax: Any, site: Site, dev: str, point: str, series: Mapping[tuple[str, str], list[Sample]],
                   t0: float) -> None:
    """Shade where the drone was within the risk point's radius (from the positions it reported)."""
    from gateway.riskpoints import haversine_m

    rp = site.risk_points[point]
    lats = {round(s.t, 3): s.value for s in series.get((dev, "lat"), [])}
    lons = {round(s.t, 3): s.value for s in series.get((dev, "lon"), [])}
    inside = sorted(t for t in lats if t in lons and haversine_m(lats[t], lons[t], rp.lat, rp.lon) <= rp.radius_m)
    if inside:
        ax.axvspan(inside[0] - t0, inside[-1] - t0, color="#888888", alpha=0.12, lw=0)
        ax.text(inside[0] - t0, 0.97, f" within {rp.radius_m:g} m of {point}", transform=ax.get_xaxis_transform(),
                fontsize=8, va="top", color="#555555")


def _unit(ruleset: RuleSet, cls: str, metric: str) -> str:
    rules = ruleset.metric_rules(cls, "", metric)
    return (rules.unit if rules is not None else None) or ""


def _direction(ruleset: RuleSet, cls: str, subject: str, metric: str) -> str:
    rules = ruleset.metric_rules(cls, subject, metric)
    return rules.level.direction if rules is not None and rules.level is not None else "above"

