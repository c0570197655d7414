"""gateway.message_decode.loads_one keeps one cbor2 decoder per thread: whatever a hostile message did to it, the
next message is read as a fresh decoder reads it, and threads never share one."""

from __future__ import annotations

import io
import sys
import threading
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message_decode import _PLAIN_TAGS, loads_one


def fresh(data: bytes) -> str:
    """The verdict of a decoder made for this message alone, as loads_one made one before it kept them."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream, semantic_decoders=_PLAIN_TAGS).decode()
    except cbor2.CBORError as exc:
        return f"error {exc}"
    return f"trailing {len(data) - stream.tell()}" if stream.tell() != len(data) else f"item {item!r}"


def kept(data: bytes) -> str:
    try:
        return f"item {loads_one(data)!r}"
    except ValueError as exc:
        text = str(exc)
        return f"trailing {text.split()[0]}" if text.endswith("trailing bytes after the item") else f"error {text}"


# CBOR that gets a decoder deep into something before failing: nested arrays and maps cut short, a map key that
# is itself a container (decoded immutable), shared-value tags, indefinite strings, and well-formed items.
PIECES = [b"\x81" * 40, b"\xa1\x81", b"\xa1\x82\x01", b"\xd8\x1c\x81\x01", b"\xd8\x1d\x00", b"\x9f\x01\x02",
          b"\x5f\x41\x00", b"\x7f\x61a", b"\xd8\x1c", b"\xff", b"\x18", b"\xa2\x01\x02\x01\x03",
          cbor2.dumps({"e": [{0: "ch4", 2: 5.0}], "k": "data", "seq": 5}), cbor2.dumps([1.5, "x", b"y", None])]
MESSAGES = st.lists(st.one_of(st.binary(max_size=48), st.sampled_from(PIECES),
                              st.tuples(st.sampled_from(PIECES), st.sampled_from(PIECES)).map(lambda p: p[0] + p[1]),
                              st.tuples(st.sampled_from(PIECES), st.integers(0, 60)).map(lambda p: p[0][:p[1]])),
                    min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_each_message_is_read_as_a_fresh_decoder_reads_it(messages: list[bytes]) -> None:
    for data in messages:
        assert kept(data) == fresh(data)


def test_threads_do_not_share_a_decoder() -> None:
    """A tagged item (every device envelope is one) calls back into Python in the middle of a decode, where the
    interpreter may switch threads: switched as often as it can, a decoder shared between threads reads
    another thread's stream (seen: most decodes failed)."""
    results: dict[int, list[Any]] = {}

    def read(n: int) -> None:
        data = cbor2.dumps(cbor2.CBORTag(17, [cbor2.CBORTag(40_000 + i, n) for i in range(8)]))
        results[n] = [loads_one(data).value[0].value for _ in range(2000)]

    threads = [threading.Thread(target=read, args=(n,)) for n in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert results == {n: [n] * 2000 for n in range(4)}
