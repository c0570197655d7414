"""What a device message says, read with cbor2: the MAC, the two CBOR items and the schema, which need the
device's key and nothing else the gateway knows. The ingest decodes here, or a check process does
(gateway/check_stage.py), which imports only this much of the gateway.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import cbor2

from protocol import auth, message_check, topics
from protocol.message import MAX_SEQ

_REASON = {"unknown-key": "unknown-device"}  # protocol.message reasons -> quarantine reasons


class _PlainTags(Mapping[int, Callable[[Any, bool], Any]]):
    """cbor2 turns some tags into library objects the protocol knows nothing of (36 a MIME message, 1 a
    datetime, 4 a Decimal), and a MIME message duck-types as a map. Here every tag but the bignums (2, 3)
    stays a plain tag, as protocol.cbor_decode leaves it, so the checks refuse it like any other wrong type.
    cbor2 asks this mapping for each tag it meets, so the tags it interprets need not be listed."""

    def __getitem__(self, tag: int) -> Callable[[Any, bool], Any]:
        if tag in (2, 3):
            raise KeyError(tag)
        return lambda value, immutable: cbor2.CBORTag(tag, value)

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_PLAIN_TAGS = _PlainTags()


_DECODERS = threading.local()  # one decoder a thread (the district's web desk has several)


def loads_one(data: bytes) -> Any:
    """One CBOR item exactly (a device envelope, an authenticated payload, a downlink body): cbor2.loads stops
    after the first and ignores the rest, so the decoder's position is checked against the length. Every
    failure is a ValueError, as protocol.cbor_decode's are (cbor2's CBORDecodeError is not one), so
    protocol.auth refuses a bad envelope as malformed whichever decoder read it.

    The decoder is made once per thread and given each stream (its public `fp`): making one was a third of
    the call, twice for every device message. A decode that failed leaves nothing behind for the next (tested)."""
    stream = io.BytesIO(data)
    decoder = getattr(_DECODERS, "decoder", None)
    if decoder is None:
        decoder = _DECODERS.decoder = cbor2.CBORDecoder(stream, semantic_decoders=_PLAIN_TAGS)
    else:
        decoder.fp = stream
    try:
        item = decoder.decode()
    except cbor2.CBORError as exc:
        raise ValueError(str(exc)) from exc
    if stream.tell() != len(data):
        raise ValueError(f"{len(data) - stream.tell()} trailing bytes after the item")
    return item


# What `decode` makes of a message: (True, body, resolved records) or (False, quarantine reason, detail). Plain
# tuples, so that a check process can send them back pickled (gateway/check_stage.py).
Decoded = tuple[Literal[True], dict[str, Any], list[dict[str, Any]]] | tuple[Literal[False], str, str]


def decode(kind: str, raw: bytes, key_for: Callable[[bytes], bytes | None]) -> Decoded:
    """MAC, CBOR and schema (protocol.message_check.decode) with cbor2: everything about a message that needs
    its device's key and nothing else the gateway knows. A data or event body comes back without its SenML
    pack "e", which `records` holds resolved. Raises only on a bug."""
    records: list[dict[str, Any]] = []  # the pack as the schema check resolved it (data, events)
    try:
        body = message_check.decode(raw, key_for, kind, loads_one, records, envelope_loads=loads_one)
    except message_check.MessageError as exc:
        detail = str(exc)
        while detail.startswith(exc.reason + ": "):  # the envelope's error repeats the reason
            detail = detail[len(exc.reason) + 2:]
        return False, _REASON.get(exc.reason, exc.reason), detail
    if kind in (topics.DATA, topics.EVENT):
        del body["e"]  # resolved into `records`, and nothing reads it again: a check process would pickle it twice
    return True, body, records


def own_number(raw: bytes, kind: str, dev: str, key: bytes) -> int | None:
    """The sequence number of a message refused as `schema` on `dev`'s data or event topic, when it is one `dev`'s
    queue issued for that topic: sealed with `dev`'s own key under its own key id, a body of the topic's kind (a
    will's number is the next one, not one used; a node never sends one kind on the other's topic, so such a copy
    is someone else's, while the record it copies may still be on its way) and a seq that is a number. None
    otherwise. The gateway confirms it once the message is in the quarantine, so the node forgets a record it
    would otherwise hold and send again at every resend. Run only on a refusal, so the MAC is checked a second time
    rather than carried out of `decode` for every message."""
    kid = dev.encode()
    try:
        payload = auth.verify(raw, lambda k: key if k == kid else None, loads_one)[1]
        body = loads_one(payload)
    except ValueError:  # auth.AuthError is one
        return None
    if not isinstance(body, dict) or body.get("k") != kind or kind not in (topics.DATA, topics.EVENT):
        return None
    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        return None
    return seq
