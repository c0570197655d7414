"""The district's check of what a site sends: the site seal on every publish, the device's own seal on every
device message inside telemetry, and per device the sequence numbers that never arrived.

A site gateway is trusted to forward, not to author readings. Each telemetry pack entry carries the device's
COSE_Mac0 as the device sent it ("m"), so a reading the gateway changed fails the device's MAC and one it
made up has none; the gateway's resolved epoch times ride beside it ("t", only where they differ from the
device's own). What the gateway makes itself (alarms, thinned summaries, dq, state, acks, events) carries the
site seal only. Keys are the district's: each site's key (protocol/site_seal.py) and the device keys of the
registry `lifeline flash` writes (its [[devices]] tables, see `device_keys`). Runs on MicroPython and CPython.
"""

from protocol import auth, district, message_check, site_seal, topics
from protocol.cbor_decode import loads as cbor_loads


class VerifyError(ValueError):
    """`reason`: site-seal, malformed, no-device-mac, device-mac or mismatch."""

    def __init__(self, reason, detail):
        super().__init__("%s: %s" % (reason, detail))
        self.reason = reason


def device_keys(devices):
    """dev -> key from a registry's [[devices]] tables ({"id", "key": hex, ...}), as `lifeline flash` writes."""
    return {d["id"]: bytes.fromhex(d["key"]) for d in devices}


def entry_records(body, times):
    """A device message body's SenML records resolved, each at the gateway's time where `times` gives one."""
    records = []
    message_check.check(body, body.get("k"), records)
    if times is not None:
        if not isinstance(times, list):
            raise VerifyError("malformed", "t must be an array of times")
        if len(times) != len(records):
            raise VerifyError("mismatch", "%d times for %d records" % (len(times), len(records)))
        for i in range(len(records)):
            records[i]["t"] = times[i]
    return records


class Verifier:
    def __init__(self, site_keys, dev_keys, track=True, loads=None):
        """`site_keys`: site id -> key; `dev_keys`: device id -> key (`device_keys`). `track`: remember every
        sequence number for `missing()`; a long-running district worker keeps that in its database instead.
        `loads`: a decoder of exactly one CBOR item that raises on anything else, for the bodies (a C-backed
        one on CPython; the strict pure-Python decoder by default), and for the device envelopes."""
        self.site_keys = site_keys
        self.dev_keys = dev_keys
        self.track = track
        self._loads = loads or cbor_loads
        self._seen = {}  # (dev, boot) -> seq numbers that arrived with a valid device MAC
        self._covered = {}  # dev -> [(seq_lo, seq_hi)] the site says it summarised or evicted, every number
        self._partial = {}  # dev -> [(seq_lo, seq_hi, n)] spans holding all but n of their numbers

    def publish(self, topic, data):
        """(site, kind, body) of one upstream publish whose site seal verifies for its topic."""
        try:
            site, kind = district.parse_up(topic)
        except topics.TopicError as exc:
            raise VerifyError("malformed", str(exc))
        try:
            sealer, payload = site_seal.open_sealed(data, kind, self._site_key)
        except auth.AuthError as exc:
            raise VerifyError("site-seal", str(exc))
        if sealer != site:
            raise VerifyError("site-seal", "sealed by site %r, published for %r" % (sealer, site))
        try:
            body = self._loads(payload)
        except MemoryError:
            raise
        except Exception as exc:  # whatever the decoder raises for bytes that are not one item
            raise VerifyError("malformed", "body is not one CBOR item: %s" % exc)
        if not isinstance(body, dict):
            raise VerifyError("malformed", "body is not a map")
        if not self.track:
            pass
        elif kind == district.TELEMETRY:
            for t in body.get("thinned", ()):
                self._cover(t)
        elif kind == district.DQ and body.get("ev") == "outbox-budget":
            for span in body.get("evicted", ()):
                self._cover(span)
        return site, kind, body

    def entry(self, entry):
        """The resolved records of one telemetry pack entry once the device's own MAC verifies and the
        entry's dev, seq, boot and pri are the device's; VerifyError otherwise."""
        m = entry.get("m") if isinstance(entry, dict) else None
        if not isinstance(m, bytes):
            raise VerifyError("no-device-mac", "entry %r carries no device message" % _name(entry))
        try:
            kid, payload = auth.verify(m, self._dev_key, self._loads)
        except auth.AuthError as exc:
            raise VerifyError("device-mac", "%s: %s" % (_name(entry), exc))
        try:
            body = self._loads(payload)
        except MemoryError:
            raise
        except Exception as exc:
            raise VerifyError("malformed", "%s: %s" % (_name(entry), exc))
        if not isinstance(body, dict) or body.get("k") not in (topics.DATA, topics.EVENT):
            raise VerifyError("malformed", "%s: not a data or event message" % _name(entry))
        body["dev"] = _text(kid)
        try:
            records = entry_records(body, entry.get("t"))
        except message_check.MessageError as exc:
            raise VerifyError("malformed", "%s: %s" % (_name(entry), exc))
        for key in ("dev", "seq", "boot"):
            if entry.get(key) != body[key]:
                raise VerifyError("mismatch", "%s: %s %r, the device said %r" % (_name(entry), key, entry.get(key),
                                                                                body[key]))
        if entry.get("pri", 0) != body["pri"]:
            raise VerifyError("mismatch", "%s: pri %r, the device said %r" % (_name(entry), entry.get("pri", 0),
                                                                            body["pri"]))
        if self.track:
            self._seen.setdefault((body["dev"], body["boot"]), set()).add(body["seq"])
        return records

    def missing(self):
        """dev -> sorted sequence numbers, per boot between the lowest and highest seen, that arrived neither
        with a valid device MAC nor inside a span the site reported summarised or evicted whole (its msgs
        the size of its range: `unaccounted` tells of the others)."""
        out = {}
        for (dev, _boot), seqs in self._seen.items():
            spans = self._covered.get(dev, ())
            gone = [s for s in range(min(seqs), max(seqs) + 1)
                    if s not in seqs and not any(lo <= s <= hi for lo, hi in spans)]
            if gone:
                out[dev] = sorted(out.get(dev, []) + gone)
        return out

    def unaccounted(self):
        """dev -> [(seq_lo, seq_hi, n)]: spans the site reported holding fewer messages than numbers (a
        gateway from before spans were runs, or a budget report past its bound), n of the range's numbers
        not in it, which ones not said; none of the range counts as covered in `missing`."""
        return {dev: sorted(spans) for dev, spans in self._partial.items()}

    def _site_key(self, kid):
        return self.site_keys.get(_text(kid))

    def _dev_key(self, kid):
        return self.dev_keys.get(_text(kid))

    def _cover(self, span):
        lo, hi, msgs = span.get("seq_lo"), span.get("seq_hi"), span.get("msgs")
        if not (isinstance(lo, int) and isinstance(hi, int) and isinstance(msgs, int) and 0 < msgs <= hi - lo + 1):
            return  # covers nothing it can be held to
        if msgs == hi - lo + 1:
            self._covered.setdefault(span.get("dev"), []).append((lo, hi))
        else:
            self._partial.setdefault(span.get("dev"), []).append((lo, hi, hi - lo + 1 - msgs))


def _text(kid):
    try:
        return kid.decode()
    except UnicodeError:
        return None


def _name(entry):
    return "%s seq %s" % (entry.get("dev"), entry.get("seq")) if isinstance(entry, dict) else repr(entry)
