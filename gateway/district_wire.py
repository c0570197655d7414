"""The district wire: every body the gateway sends up to the district or reads from it, built or parsed here.

protocol/district.py names the topics; this module fixes what travels on them, so that a gateway and the
district centre (which imports this module too) agree on one schema, documented once in docs/protocol.md
("The district wire"). Each upstream body is built by one function, in one key order, because the bytes
matter: an outbox row is stored as its final encoding, and cbor2 writes a map in the order it was built.
Each downlink body is checked by one parser before the gateway acts on it. Host only (CPython, cbor2):
nodes never see these bodies, so this lives beside the gateway rather than in the MicroPython protocol/.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast

import cbor2

from gateway.message_decode import loads_one
from protocol import cbor, district_verify, message, senml, senml_resolve

MAX_ACK_IDS = 1000  # alarm ids in one `alarm-ack`: the desk sends one, a page of a storm fits
BIRTH_FIELDS = ("fw", "prof", "rst", "rssi", "batt", "ip")  # what a birth adds to the upstream state body


def encode(body: Mapping[str, Any]) -> bytes:
    """A body as it travels: CBOR, keys in the order its builder wrote them."""
    return cbor2.dumps(dict(body))


# --- alarm ------------------------------------------------------------------------------------------------


class AlarmTransition(TypedDict):
    """One alarm transition; docs/protocol.md ("The district wire") says what each field means."""

    id: str
    ev: str
    kind: str
    dev: str
    cls: str
    metric: str | None
    level: str | None
    prev: str | None
    value: float | None
    reading: float | None
    rule: str
    rver: int
    t_dev: float | None
    t_gw: float
    resend: int
    step: int
    point: NotRequired[str]
    pos: NotRequired[list[float]]
    unit: NotRequired[str]
    cause: NotRequired[str]


def alarm_transition(*, id: str, ev: str, kind: str, dev: str, cls: str, metric: str | None,
                     level: str | None, prev: str | None, value: float | None, reading: float | None, rule: str,
                     rver: int, t_dev: float | None, t_gw: float, resend: int, step: int,
                     point: str | None = None, pos: tuple[float, float] | None = None, unit: str | None = None,
                     cause: str | None = None) -> AlarmTransition:
    out = AlarmTransition(id=id, ev=ev, kind=kind, dev=dev, cls=cls, metric=metric, level=level, prev=prev,
                          value=value, reading=reading, rule=rule, rver=rver, t_dev=t_dev, t_gw=t_gw, resend=resend,
                          step=step)
    if point is not None:
        out["point"] = point
    if pos is not None:
        out["pos"] = [pos[0], pos[1]]
    if unit is not None:
        out["unit"] = unit
    if cause is not None:
        out["cause"] = cause
    return out


# --- telemetry --------------------------------------------------------------------------------------------


class TelemetryEntry(TypedDict):
    """One device data message in a telemetry message's "packs": the device's sealed message as received
    ("m"), with the gateway's resolved times ("t") where they differ from the device's; or, without the
    device's message (a row queued by a gateway from before "m"), the resolved pack "e"."""

    dev: str
    seq: int
    boot: int
    m: NotRequired[bytes]
    t: NotRequired[list[float]]
    e: NotRequired[list[dict[int, Any]]]
    pri: NotRequired[int]


class MetricSummary(TypedDict):
    """One metric over one interval of reading time, in a thinned entry's "s"."""

    n: str
    t: float
    count: int
    u: NotRequired[str]
    last: NotRequired[str]
    min: NotRequired[float]
    max: NotRequired[float]
    mean: NotRequired[float]


class ThinnedEntry(TypedDict):
    """Device messages seq_lo..seq_hi summarised by the outbox's disk budget, in a message's "thinned": a run,
    every number in it held (msgs = seq_hi - seq_lo + 1), so the district never takes a gap as summarised."""

    dev: str
    seq_lo: int
    seq_hi: int
    msgs: int
    boots: list[int]
    interval: float
    s: list[MetricSummary]


def senml_pack(dev: str, records: Sequence[Mapping[str, Any]]) -> list[dict[int, Any]]:
    """Resolved records as an upstream SenML pack: integer labels, bn "{dev}:", bt the first record's time.

    Values: v, vb, vs or vd, and an optional sum s (a record may carry only a sum, RFC 8428 section 4.2).

    A device that used its own id as base name is not prefixed twice, so every upstream name reads
    "{dev}:{metric}" whatever the device sent.
    """
    if not records:
        raise ValueError("telemetry needs at least one record")
    prefix = dev + ":"
    bt = records[0]["t"]
    out = []
    for rec in records:
        name = rec["n"]
        if name.startswith(prefix):
            name = name[len(prefix):]
        present = [k for k in ("v", "vb", "vs", "vd") if k in rec]
        if len(present) > 1 or not (present or "s" in rec):
            raise ValueError(f"record {name!r}: needs exactly one of v, vb, vs, vd (or only a sum s)")
        dt = (rec["t"] - bt) or None
        if present:
            item = senml.record(name, rec[present[0]], rec.get("u"), dt)
        else:
            item = {senml.N: name}
            if rec.get("u") is not None:
                item[senml.U] = rec["u"]
            if dt is not None:
                item[senml.T] = dt
        if "s" in rec:
            item[senml.S] = rec["s"]
        out.append(item)
    pack: list[dict[int, Any]] = senml.pack(out, bn=prefix, bt=bt)
    return pack


def telemetry_entry(dev: str, seq: int, boot: int, records: Sequence[Mapping[str, Any]], pri: int = 0,
                    sealed: bytes | None = None, retimed: bool = False) -> bytes:
    """One device data message, its records resolved to absolute time ({"n","u","t"} and the value fields the
    device sent: one of v, vb, vs, vd, a sum s, or both). With `sealed` (the device's COSE_Mac0 as received)
    the entry carries that instead of the records, and their times only when `retimed` (one differs from the
    device's own). `pri` as the device sent it, left out when 0."""
    entry: TelemetryEntry = {"dev": dev, "seq": seq, "boot": boot}  # a literal: 0.1 us, the class called 0.27
    if sealed is None:
        entry["e"] = senml_pack(dev, records)
    else:
        entry["m"] = sealed
        if retimed:
            entry["t"] = [rec["t"] for rec in records]
    if pri:
        entry["pri"] = pri
    return cbor2.dumps(entry)


def read_telemetry_entry(data: bytes) -> TelemetryEntry:
    return cast(TelemetryEntry, cbor2.loads(data))


def entry_records(entry: TelemetryEntry) -> list[dict[str, Any]]:
    """An entry's records resolved, at the gateway's times, without checking the device's MAC: for the
    gateway's own rows (checked on arrival) and readers that trust the site; the district verifies with
    protocol.district_verify."""
    if "m" not in entry:
        records: list[dict[str, Any]] = senml_resolve.resolve(entry["e"])
        return records
    out: list[dict[str, Any]] = district_verify.entry_records(_device_body(entry["m"]), entry.get("t"))
    return out


def _device_body(sealed: bytes) -> dict[str, Any]:
    """The body of a device message the gateway has already authenticated, "dev" restored from the key id."""
    _, unprotected, payload, _ = loads_one(sealed).value
    body: dict[str, Any] = loads_one(payload)
    body["dev"] = unprotected[4].decode()
    return body


def metric_summary(n: str, t: float, count: int, unit: str | None, last: str | None,
                   spread: tuple[float, float, float] | None) -> MetricSummary:
    """Text values keep their last one; numbers (booleans as 0/1) their (min, max, mean); data only a count."""
    out = MetricSummary(n=n, t=t, count=count)
    if unit is not None:
        out["u"] = unit
    if last is not None:
        out["last"] = last
    elif spread is not None:
        out["min"], out["max"], out["mean"] = spread
    return out


def thinned_entry(dev: str, seq_lo: int, seq_hi: int, msgs: int, boots: list[int], interval: float,
                  s: list[MetricSummary]) -> bytes:
    return cbor2.dumps(ThinnedEntry(dev=dev, seq_lo=seq_lo, seq_hi=seq_hi, msgs=msgs, boots=boots,
                                    interval=interval, s=s))


_ARRAY, _MAP = 4, 5  # CBOR major types (RFC 8949 section 3.1)


def telemetry(site: str, packs: Sequence[bytes], thinned: Sequence[bytes],
              counts: tuple[int, int] | None = None) -> bytes:
    """{"site", "packs": [entry...], "thinned": [entry...]} ("thinned" only when there are some), from the
    entries as stored (telemetry_entry, thinned_entry): each one entry, or with `counts` CBOR sequences of
    entries (outbox rows), `counts` saying how many entries the packs and the thinned hold. The entries are
    already CBOR and go in as they are: only the map and the array heads are written here (through cbor2's
    `default` hook each entry cost half a microsecond, more than the rest of the message)."""
    n_packs, n_thinned = (len(packs), len(thinned)) if counts is None else counts
    out = bytearray()
    cbor.head(out, _MAP, 3 if n_thinned else 2)
    out += cbor2.dumps("site")
    out += cbor2.dumps(site)
    for key, entries, n in (("packs", packs, n_packs), ("thinned", thinned, n_thinned)):
        if n or key == "packs":
            out += cbor2.dumps(key)
            cbor.head(out, _ARRAY, n)
            out += b"".join(entries)
    return bytes(out)


def stored_entries(data: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Each entry of a stored telemetry row, a CBOR sequence (RFC 8742) of pack or summary entries, decoded and
    with its own bytes: for the outbox's budget pass, which regroups the entries of a row by device."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(stream)
    start = 0
    while start < len(data):
        entry = decoder.decode()
        end = stream.tell()
        yield entry, data[start:end]
        start = end


# --- the gateway's own session -----------------------------------------------------------------------------


class GatewayState(TypedDict):
    """The gateway's birth (on each district connect) or death (its MQTT will), retained, as Sparkplug B's
    NBIRTH/NDEATH with bdSeq: `session` counts connects, so a death names the session it ends."""

    st: str
    session: int
    t: NotRequired[float]


def gateway_birth(session: int, t: float) -> bytes:
    return cbor2.dumps(GatewayState(st=message.ONLINE, session=session, t=t))


def gateway_death(session: int) -> bytes:
    """Fixed when the connection is made (it is the will), so it carries no time."""
    return cbor2.dumps(GatewayState(st=message.OFFLINE, session=session))


_HIST = cbor2.dumps("hist") + cbor2.dumps(True)


def historical(body: bytes) -> bytes:
    """A stored body marked "hist": true: queued before the district session that sends it began (backlog
    after an outage), so the district must not act on it as live. A map of fewer than 23 pairs gets the pair
    after its last and its head raised by one, its contents left as they are: decoding and encoding a backlog's
    publish of 100 device messages cost 130 us, 1.3 of the drain's 3 us a message."""
    if body and 0xA0 <= body[0] < 0xB7 and _HIST[:5] not in body:  # else a "hist" might be there already
        return bytes((body[0] + 1,)) + body[1:] + _HIST
    doc = loads_one(body)
    doc["hist"] = True
    out: bytes = cbor2.dumps(doc)
    return out


# --- state, event ----------------------------------------------------------------------------------------


class DeviceState(TypedDict):
    """A device's birth or death as the gateway saw it; `t` is the gateway's time."""

    dev: str
    st: str
    boot: int
    seq: int
    t: float
    retained: bool
    fw: NotRequired[str]
    prof: NotRequired[str]
    rst: NotRequired[str]
    rssi: NotRequired[int]
    batt: NotRequired[float]
    ip: NotRequired[str]
    pos: NotRequired[list[float]]


def device_state(dev: str, state: Mapping[str, Any], t: float, retained: bool,
                 pos: tuple[float, float] | None) -> DeviceState:
    """From the device's checked state body; a birth adds its BIRTH_FIELDS and the registry's position."""
    out: dict[str, Any] = {"dev": dev, "st": state["st"], "boot": state["boot"], "seq": state["seq"], "t": t,
                           "retained": retained}
    if state["st"] == message.ONLINE:
        out.update({k: state[k] for k in BIRTH_FIELDS if k in state})
        if pos is not None:
            out["pos"] = list(pos)
    return cast(DeviceState, out)


class DeviceEvent(TypedDict):
    """A device event; its readings travel with the telemetry."""

    dev: str
    ev: str
    seq: int
    boot: int
    pri: int
    t: float


def device_event(dev: str, ev: str, seq: int, boot: int, pri: int, t: float) -> DeviceEvent:
    return DeviceEvent(dev=dev, ev=ev, seq=seq, boot=boot, pri=pri, t=t)


# --- OTA ------------------------------------------------------------------------------------------------


class ReleaseOffer(TypedDict):
    """A release the gateway serves, with what a district needs to send its `ota` command (lifeline/release.py,
    `command_args`): the nodes check the signature, so a district need not trust the site for it."""

    v: str
    profiles: list[str]
    n: int  # the manifest's length: release.bin starts with it
    sig: bytes
    size: int


class OtaProgress(TypedDict):
    """How far one node's download has got (from the chunks it asked the gateway for)."""

    dev: str
    v: str
    done: int
    total: int
    t: float


class OtaReport(TypedDict):
    """The gateway's OTA news: nodes whose download moved since the last report, and (at start and on a
    reload) every release it serves, which replaces the district's list for the site."""

    t: float
    nodes: list[OtaProgress]
    releases: NotRequired[list[ReleaseOffer]]


# Nodes in one `ota` report at most: the district refuses a longer list whole (district/upstream.py,
# MAX_OTA_NODES), so the daemon sends the nodes of a wave larger than this in several reports.
OTA_REPORT_NODES = 10_000


def ota_report(t: float, nodes: Sequence[OtaProgress], releases: Sequence[ReleaseOffer] | None) -> OtaReport:
    out = OtaReport(t=t, nodes=list(nodes))
    if releases is not None:
        out["releases"] = list(releases)
    return out


# --- data quality ---------------------------------------------------------------------------------------


class SequenceReport(TypedDict):
    """Sequence numbers first..last of a device: missing past the grace period, or found after all."""

    dev: str
    kind: Literal["gap", "recovered"]
    first: int
    last: int
    since: float


def sequence_report(dev: str, kind: str, first: int, last: int, since: float) -> SequenceReport:
    return cast(SequenceReport, {"dev": dev, "kind": kind, "first": first, "last": last, "since": since})


class FlaggedReading(TypedDict):
    n: str
    clock: str
    t_device: float


class ClockReport(TypedDict):
    """Readings judged and forwarded with the arrival time because their own time was not trusted."""

    dev: str
    kind: Literal["clock"]
    seq: int
    boot: int
    clk: int
    t: float
    readings: list[FlaggedReading]


def clock_report(dev: str, seq: int, boot: int, clk: int, t: float,
                 readings: Iterable[tuple[str, str, float]]) -> ClockReport:
    """`readings`: (name, clock flag, the device's own time) of each flagged reading."""
    return ClockReport(dev=dev, kind="clock", seq=seq, boot=boot, clk=clk, t=t,
                       readings=[FlaggedReading(n=n, clock=clock, t_device=td) for n, clock, td in readings])


def clock_merged(waiting: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Two clock reports of a device as one: the first kept whole, then `msgs` (the messages flagged), `last`
    (the latest one's seq, boot, clk, t) and `flagged` (readings per verdict), so a device flagged at every
    message during an outage waits in the outbox as one report, not one a message. Either may be merged already."""
    flagged: dict[str, int] = {}
    for report in (waiting, new):
        for clock, n in (report.get("flagged") or Counter(r["clock"] for r in report["readings"])).items():
            flagged[clock] = flagged.get(clock, 0) + n
    last = new.get("last") or {"seq": new["seq"], "boot": new["boot"], "clk": new["clk"], "t": new["t"]}
    return {**waiting, "msgs": waiting.get("msgs", 1) + new.get("msgs", 1), "last": last, "flagged": flagged}


class SeqSpans(Protocol):
    def spans(self) -> list[tuple[int, int, int]]: ...  # (seq_lo, seq_hi, msgs)


class SpanBody(TypedDict):
    dev: str
    msgs: int
    seq_lo: int
    seq_hi: int


class OutboxBudget(TypedDict):
    """What passes of the outbox's disk budget summarised or dropped, per device, in bytes before the first and
    after the last; `passes` and `t_last` when the reports of several passes waited as one."""

    ev: Literal["outbox-budget"]
    t: float
    budget: int
    before: int
    after: int
    thinned: list[SpanBody]
    evicted: list[SpanBody]
    passes: NotRequired[int]
    t_last: NotRequired[float]


def outbox_budget(t: float, budget: int, before: int, after: int, thinned: Mapping[str, SeqSpans],
                  evicted: Mapping[str, SeqSpans], passes: int = 1, t_last: float | None = None) -> OutboxBudget:
    def spans(by_dev: Mapping[str, SeqSpans]) -> list[SpanBody]:
        return [SpanBody(dev=dev, msgs=msgs, seq_lo=lo, seq_hi=hi)
                for dev, s in sorted(by_dev.items()) for lo, hi, msgs in s.spans()]
    body = OutboxBudget(ev="outbox-budget", t=t, budget=budget, before=before, after=after,
                        thinned=spans(thinned), evicted=spans(evicted))
    if passes > 1 and t_last is not None:
        body["passes"], body["t_last"] = passes, t_last
    return body


# --- ack: results of what the district asked for -----------------------------------------------------------


class CommandResult(TypedDict):
    """A relayed command's outcome: the device's ack, a timeout, or the gateway's refusal."""

    re: Literal["cmd"]
    dev: Any  # as the district sent it when the command was refused
    id: Any
    ok: bool
    op: NotRequired[str]
    res: NotRequired[Any]
    boot: NotRequired[int]
    rtt_s: NotRequired[float]
    error: NotRequired[str]
    waited_s: NotRequired[float]


def command_done(dev: str, id: int, op: str, ok: bool, res: Any, boot: int, rtt_s: float) -> CommandResult:
    return cast(CommandResult, {"re": "cmd", "dev": dev, "id": id, "op": op, "ok": ok, "res": res, "boot": boot,
                                "rtt_s": rtt_s})


def command_timeout(dev: str, id: int, op: str, waited_s: float) -> CommandResult:
    return cast(CommandResult, {"re": "cmd", "dev": dev, "id": id, "op": op, "ok": False, "error": "timeout",
                                "waited_s": waited_s})


def command_refused(sent: Mapping[str, Any], error: str) -> CommandResult:
    """`sent`: the command's map as far as it could be read (empty when it was not a CBOR map)."""
    return CommandResult(re="cmd", dev=sent.get("dev"), id=sent.get("id"), ok=False, error=error)


class RulesResult(TypedDict):
    """A rule set sent down: applied (its version), or refused (why, and the version still active)."""

    re: Literal["rules"]
    t: float
    version: NotRequired[int]
    ok: bool
    error: NotRequired[str]
    active: NotRequired[int]


def rules_result(t: float, version: int | None, error: str | None = None, active: int | None = None
                 ) -> RulesResult:
    """`version`: the sent set's, when it could be read; `error` and `active` when it was refused."""
    out: dict[str, Any] = {"re": "rules", "t": t}
    if version is not None:
        out["version"] = version
    out["ok"] = error is None
    if error is not None:
        out["error"] = error
        out["active"] = active
    return cast(RulesResult, out)


# --- downlink ---------------------------------------------------------------------------------------------


class DownlinkError(ValueError):
    """A downlink body the gateway refuses; the message says why (it goes upstream or to the log)."""


def downlink(payload: bytes) -> Mapping[str, Any]:
    """Any downlink payload: one CBOR map, nothing after it (bytes the parser would skip are refused)."""
    try:
        body = loads_one(payload)
    except Exception as exc:
        raise DownlinkError(f"not CBOR: {exc}") from None
    if not isinstance(body, Mapping):
        raise DownlinkError("not a CBOR map")
    return body


@dataclass(frozen=True)
class CommandRequest:
    """`cmd`: {"dev", "id" (uint < 2**63), "op", "args": {...}} for one device."""

    dev: str
    id: int
    op: str
    args: dict[str, Any]


def command_request(body: Mapping[str, Any]) -> CommandRequest:
    """A `cmd` body read by `downlink`; whether the device exists is the gateway's to check."""
    cmd_id, op, args, dev = body.get("id"), body.get("op"), body.get("args", {}), body.get("dev")
    if not isinstance(cmd_id, int) or isinstance(cmd_id, bool) or not 0 <= cmd_id < 2**63:
        raise DownlinkError("id must be an unsigned integer below 2**63")
    if not isinstance(op, str) or not op:
        raise DownlinkError("op must be a non-empty string")
    if not isinstance(args, Mapping):
        raise DownlinkError("args must be a map")
    if not isinstance(dev, str):
        raise DownlinkError(f"unknown device {dev!r}")
    return CommandRequest(dev, cmd_id, op, _thaw(args))


def alarm_acks(payload: bytes) -> list[tuple[str, int | None]]:
    """`alarm-ack`: {"id": ID, "step": N} or {"ids": [ID, ...], "steps": [N, ...]}: the alarm ids the district
    acknowledges, at most MAX_ACK_IDS (the gateway logs each one), each with the step (the number of the
    alarm's transition, AlarmTransition's `step`) the district held when it acknowledged it. The step is what
    the ack covers: the gateway takes it unless the alarm has escalated since, so an ack of what an officer saw
    does not acknowledge an escalation the district has not received yet (a fall since needs no fresh ack).
    Without one (a district from before the steps, or an alarm whose gateway sent none, null) it covers whatever
    the alarm is at."""
    body = downlink(payload)
    ids = body.get("ids", [body.get("id")] if "id" in body else [])
    if not isinstance(ids, list | tuple) or not ids or not all(isinstance(i, str) for i in ids):
        raise DownlinkError("expected {'id': alarm id} or {'ids': [alarm ids]}")
    if len(ids) > MAX_ACK_IDS:
        raise DownlinkError(f"{len(ids)} alarm ids in one acknowledgement, at most {MAX_ACK_IDS}")
    steps = body.get("steps", [body.get("step")] if "id" in body and "ids" not in body else [None] * len(ids))
    if (not isinstance(steps, list | tuple) or len(steps) != len(ids)
            or not all(s is None or (type(s) is int and 0 <= s < 2**63) for s in steps)):
        raise DownlinkError("steps: one per alarm id, each a transition number (an unsigned integer) or null")
    return list(zip(ids, steps, strict=True))


def ruleset_data(payload: bytes) -> dict[str, Any]:
    """`rules`: {"ruleset": <rule set, as in a rule file>}, the set as a map or as JSON text; the gateway's
    rule parser validates what is inside."""
    data = downlink(payload).get("ruleset")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            raise DownlinkError(f"ruleset: not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise DownlinkError("expected {'ruleset': {...}}")
    thawed: dict[str, Any] = _thaw(data)
    return thawed


def _thaw(value: Any) -> Any:
    """cbor2 may hand nested maps over as frozendicts and arrays as tuples; the gateway wants plain ones."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value
