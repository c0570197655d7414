"""Receiving a message: authenticate the COSE_Mac0 envelope, decode the body and check it against its
kind's schema, so every failure is one MessageError with a reason a gateway can count. On a node only
commands arrive, and this module is loaded only then.

The payload carries no "dev": the device is the envelope's key id, which verification has already bound to
the key. decode puts it back as body["dev"], and check supplies "clk" and "pri" (0) where a body left them out.
"""

from protocol import auth, topics
from protocol.cbor_decode import loads as cbor_loads
from protocol.message import CLK_BOOT, CLK_EPOCH, MAX_MESSAGE, MAX_SEQ, OFFLINE, ONLINE, PRI_ALARM, PRI_ROUTINE
from protocol.senml_build import SenMLError  # not protocol.senml: a node loads only senml_build


class MessageError(ValueError):
    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason


def shown(x):
    """A refused value as an error message writes it: a text or byte string cut to 40, a number of at most 18
    digits, else its type. CPython refuses to write an integer of more than 4,300 digits (ValueError), even
    inside a list: a message refused as schema went down as a bug ("internal", its traceback logged)."""
    if isinstance(x, (str, bytes)):
        return repr(x[:40])
    if isinstance(x, int):
        return repr(x) if -10**18 < x < 10**18 else "(an integer of 19 digits or more)"
    return repr(x) if x is None or isinstance(x, float) else "(a %s)" % type(x).__name__


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


# protocol.senml_resolve.resolve, imported with the first data message checked, not with the module (a node
# checks only commands), and kept: an import statement costs the gateway a third of a microsecond a message.
# Named as it is so that a node interns no new name for it.
resolve = None


def check(body, kind, records=None):
    """Raise MessageError("schema", ...) unless the body is a well-formed message of this kind.

    Checking a data or event body resolves its SenML pack; a caller that needs the resolved records passes
    a list as `records` and gets them appended, instead of resolving the pack a second time. Fills in the
    defaults of "clk" and "pri"."""
    global resolve
    if not isinstance(body, dict):
        raise MessageError("schema", "body is not a map")
    if body.get("k") != kind:
        raise MessageError("schema", "kind %s where %r was expected" % (shown(body.get("k")), kind))
    try:
        topics.check_id(body.get("dev"), "dev")
    except topics.TopicError as exc:
        raise MessageError("schema", str(exc))
    if kind != topics.CMD:
        _uint(body, "boot")
    if kind in (topics.DATA, topics.EVENT):
        _uint(body, "seq")
        body.setdefault("clk", CLK_EPOCH)
        body.setdefault("pri", PRI_ROUTINE)
        _one_of(body, "clk", (CLK_EPOCH, CLK_BOOT))
        _one_of(body, "pri", (PRI_ROUTINE, PRI_ALARM))
        if resolve is None:
            from protocol import senml_resolve

            resolve = senml_resolve.resolve
        try:
            resolved = resolve(body.get("e"))
        except SenMLError as exc:
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
            body.setdefault("clk", CLK_EPOCH)
            _one_of(body, "clk", (CLK_EPOCH, CLK_BOOT))
    elif kind == topics.CMD:
        _uint(body, "id")
        _uint(body, "exp")
        _is(body, "op", (str,))
        _is(body, "args", (dict,))
    elif kind == topics.ACK:
        _uint(body, "id")
        _is(body, "ok", (bool,))
    else:
        raise MessageError("schema", "unknown kind %r" % kind)
    return body


def decode(data, key_for, kind, loads=None, records=None, envelope_loads=None):
    """Authenticate, decode and check one message; every failure is a MessageError with a reason.
    `loads` (the gateway's cbor2) decodes the authenticated payload, whose end the envelope fixes.
    `envelope_loads` decodes the envelope, which nothing delimits: it must refuse bytes after one item (the
    gateway's loads_one does), so a `loads` that stops after the first item is never used for it. The
    strict pure-Python decoder is the default for both. `records`: as for `check`, filled only once the
    message has passed every check."""
    if len(data) > MAX_MESSAGE:
        raise MessageError("oversize", "%d bytes, limit %d" % (len(data), MAX_MESSAGE))
    if kind == topics.CMD and loads is envelope_loads is None:
        # A node's commands, by our decoder: a COSE_Mac0 holds 5 items (its array's 4, its header's entry), and
        # real commands take 5.8 bytes or more an item (the drone's whole config, 102 items in 866 bytes). A
        # 2 KB envelope of 1,952 ints decoded to a 16 KB list before its MAC was checked, and a node short of
        # that heap refused it as "no memory" after 3 tries instead of as malformed at once.
        def envelope_loads(b):
            return cbor_loads(b, 8)

        def loads(b):
            return cbor_loads(b, len(b) // 3)

    try:
        kid, payload = auth.verify(data, key_for, envelope_loads)
    except auth.AuthError as exc:
        raise MessageError(exc.reason, str(exc))
    try:
        body = (loads or cbor_loads)(payload)
    except MemoryError:
        raise
    except Exception as exc:
        raise MessageError("malformed", "payload is not CBOR: %s" % exc)
    if not isinstance(body, dict):
        raise MessageError("schema", "body is not a map")
    if "dev" in body:
        raise MessageError("schema", "dev in the payload: the key id names the device")
    try:
        body["dev"] = kid.decode()
    except UnicodeError:
        raise MessageError("schema", "key id %r is not text" % kid)
    resolved = [] if records is not None else None
    check(body, kind, resolved)
    if resolved:
        records.extend(resolved)
    return body
