"""Message bodies: what a device and its gateway say to each other inside the COSE_Mac0 envelope.

A body is a CBOR map with short text keys. "k" (the kind) is inside the MAC, so a valid body cannot be
replayed as another kind; "dev" must match the envelope's key id and the topic. See docs/protocol.md.
"""

from protocol import auth, cbor, senml, topics

CLK_EPOCH = 0  # SenML times are Unix epoch seconds
CLK_BOOT = 1  # SenML times are seconds since boot number "boot"; the device's clock was not yet set
PRI_ROUTINE = 0
PRI_ALARM = 1  # the device's local pre-alarm level was crossed
MAX_MESSAGE = 4096
MAX_SEQ = (1 << 64) - 1
ONLINE = "online"
OFFLINE = "offline"


class MessageError(ValueError):
    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason


def data(dev, boot, seq, pack, clk=CLK_EPOCH, pri=PRI_ROUTINE):
    return {"k": topics.DATA, "dev": dev, "boot": boot, "seq": seq, "clk": clk, "pri": pri, "e": pack}


def event(dev, boot, seq, ev, pack, clk=CLK_EPOCH, pri=PRI_ROUTINE):
    body = data(dev, boot, seq, pack, clk, pri)
    body["k"] = topics.EVENT
    body["ev"] = ev
    return body


def birth(dev, boot, seq, fw, prof, rst, t, clk=CLK_EPOCH, **extra):
    body = {"k": topics.STATE, "dev": dev, "boot": boot, "seq": seq, "st": ONLINE, "fw": fw,
            "prof": prof, "rst": rst, "t": t, "clk": clk}
    for name in extra:
        body[name] = extra[name]
    return body


def death(dev, boot, seq):
    """The will: fixed at connect time, so it carries the sequence number due next at that moment."""
    return {"k": topics.STATE, "dev": dev, "boot": boot, "seq": seq, "st": OFFLINE}


def command(dev, cmd_id, op, args):
    return {"k": topics.CMD, "dev": dev, "id": cmd_id, "op": op, "args": args}


def ack(dev, boot, cmd_id, ok, res=None):
    return {"k": topics.ACK, "dev": dev, "boot": boot, "id": cmd_id, "ok": ok, "res": res}


def encode(body, key):
    return auth.seal(key, body["dev"].encode(), cbor.dumps(body))


def _uint(body, name, limit=MAX_SEQ):
    v = body.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
        raise MessageError("schema", "%s must be an unsigned integer" % name)
    return v


def _is(body, name, types):
    v = body.get(name)
    if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
        raise MessageError("schema", "%s has the wrong type" % name)
    return v


def _one_of(body, name, allowed):
    if body.get(name) not in allowed:
        raise MessageError("schema", "%s must be one of %r" % (name, allowed))


def check(body, kind, records=None):
    """Raise MessageError("schema", ...) unless the body is a well-formed message of this kind.

    Checking a data or event body resolves its SenML pack; a caller that needs the resolved records passes
    a list as `records` and gets them appended, instead of resolving the pack a second time."""
    if not isinstance(body, dict):
        raise MessageError("schema", "body is not a map")
    if body.get("k") != kind:
        raise MessageError("schema", "kind %r where %r was expected" % (body.get("k"), kind))
    try:
        topics.check_id(body.get("dev"), "dev")
    except topics.TopicError as exc:
        raise MessageError("schema", str(exc))
    if kind != topics.CMD:
        _uint(body, "boot")
    if kind in (topics.DATA, topics.EVENT):
        _uint(body, "seq")
        _one_of(body, "clk", (CLK_EPOCH, CLK_BOOT))
        _one_of(body, "pri", (PRI_ROUTINE, PRI_ALARM))
        try:
            resolved = senml.resolve(body.get("e"))
        except senml.SenMLError as exc:
            raise MessageError("schema", "e: %s" % exc)
        if kind == topics.EVENT:
            _is(body, "ev", (str,))
        if records is not None:
            records.extend(resolved)
    elif kind == topics.STATE:
        _uint(body, "seq")
        _one_of(body, "st", (ONLINE, OFFLINE))
        if body["st"] == ONLINE:
            _is(body, "fw", (str,))
            _is(body, "prof", (str,))
            _is(body, "rst", (str,))
            _is(body, "t", (int, float))
            _one_of(body, "clk", (CLK_EPOCH, CLK_BOOT))
    elif kind == topics.CMD:
        _uint(body, "id")
        _is(body, "op", (str,))
        _is(body, "args", (dict,))
    elif kind == topics.ACK:
        _uint(body, "id")
        _is(body, "ok", (bool,))
    else:
        raise MessageError("schema", "unknown kind %r" % kind)
    return body


def decode(data, key_for, kind, loads=None, records=None):
    """Authenticate, decode and check one message; every failure is a MessageError with a reason.
    `records`: as for `check`, filled only once the message has passed every check."""
    if len(data) > MAX_MESSAGE:
        raise MessageError("oversize", "%d bytes, limit %d" % (len(data), MAX_MESSAGE))
    try:
        kid, payload = auth.verify(data, key_for, loads)
    except auth.AuthError as exc:
        raise MessageError(exc.reason, str(exc))
    try:
        body = (loads or cbor.loads)(payload)
    except Exception as exc:
        raise MessageError("malformed", "payload is not CBOR: %s" % exc)
    resolved = [] if records is not None else None
    check(body, kind, resolved)
    if body["dev"].encode() != kid:
        raise MessageError("schema", "dev %r does not match the key id" % body["dev"])
    if resolved:
        records.extend(resolved)
    return body
