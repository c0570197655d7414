"""Message bodies: what a device and its gateway say to each other inside the COSE_Mac0 envelope.

A body is a CBOR map with short text keys. "k" (the kind) is inside the MAC, so a valid body cannot be
replayed as another kind. A body's "dev" travels as the envelope's key id, not in the payload: encode moves
it there and message_check.decode puts it back. "clk" and "pri" are left out when 0. See docs/protocol.md.
This module builds and seals bodies, which is all a node sends; protocol/message_check.py authenticates
and checks what arrives.
"""

from protocol import auth, cbor, topics

CLK_EPOCH = 0  # SenML times are Unix epoch seconds
CLK_BOOT = 1  # SenML times are seconds since boot number "boot"; the device's clock was not yet set
PRI_ROUTINE = 0
PRI_ALARM = 1  # the device's local pre-alarm level was crossed
MAX_MESSAGE = 4096
MAX_SEQ = (1 << 64) - 1
ONLINE = "online"
OFFLINE = "offline"


def data(dev, boot, seq, pack, clk=CLK_EPOCH, pri=PRI_ROUTINE):
    body = {"k": topics.DATA, "dev": dev, "boot": boot, "seq": seq, "e": pack}
    if clk:
        body["clk"] = clk
    if pri:
        body["pri"] = pri
    return body


def event(dev, boot, seq, ev, pack, clk=CLK_EPOCH, pri=PRI_ROUTINE):
    body = data(dev, boot, seq, pack, clk, pri)
    body["k"] = topics.EVENT
    body["ev"] = ev
    return body


def birth(dev, boot, seq, fw, prof, rst, t, clk=CLK_EPOCH, **extra):
    body = {"k": topics.STATE, "dev": dev, "boot": boot, "seq": seq, "st": ONLINE, "fw": fw,
            "prof": prof, "rst": rst, "t": t}
    if clk:
        body["clk"] = clk
    for name in extra:
        body[name] = extra[name]
    return body


def death(dev, boot, seq):
    """The will: fixed at connect time, so it carries the sequence number due next at that moment."""
    return {"k": topics.STATE, "dev": dev, "boot": boot, "seq": seq, "st": OFFLINE}


def command(dev, cmd_id, op, args, exp):
    """exp: epoch seconds after which the device must not run it (the sender has given up on it by then)."""
    return {"k": topics.CMD, "dev": dev, "id": cmd_id, "op": op, "args": args, "exp": exp}


def ack(dev, boot, cmd_id, ok, res=None):
    return {"k": topics.ACK, "dev": dev, "boot": boot, "id": cmd_id, "ok": ok, "res": res}


def encode(body, key):
    """The body sealed, its "dev" as the key id; the body is left as it was."""
    dev = body.pop("dev")
    try:
        return auth.seal(key, dev.encode(), cbor.dumps(body))
    finally:
        body["dev"] = dev
