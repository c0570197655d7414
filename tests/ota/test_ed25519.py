"""firmware/lib/ed25519.py, the node's signature check, against RFC 8032's own vectors and against signatures
made by the `cryptography` package (OpenSSL), on CPython and on the MicroPython unix port in the device heap."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline import upy

sys.path.insert(0, str(upy.FIRMWARE / "lib"))
import ed25519

# RFC 8032, 7.1: TEST 1, 2, 3 (public key, message, signature).
RFC8032 = [
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595b"
     "be24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb430"
     "2aeeb00d291612bb0c00"),
    ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed2"
     "8dc027beceea1ec40a"),
]
L = 2 ** 252 + 27742317777372353535851937790883648493


def cases() -> list[tuple[str, str, str, bool]]:
    """(public, message, signature, valid) in hex: the RFC's, cryptography's on messages of many sizes, and
    each of those spoiled: a flipped message bit, a flipped R, S + L (the same point, a non-canonical S),
    another key, a public key that is no point, the wrong lengths."""
    out = [(p, m, s, True) for p, m, s in RFC8032]
    rng = __import__("random").Random(8032)
    for size in (0, 1, 31, 32, 64, 111, 112, 127, 128, 129, 255, 1000, 5000):
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        msg = bytes(rng.getrandbits(8) for _ in range(size))
        sig = key.sign(msg)
        out.append((pub.hex(), msg.hex(), sig.hex(), True))
        if msg:
            bad = bytearray(msg)
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            out.append((pub.hex(), bytes(bad).hex(), sig.hex(), False))
        out.append((pub.hex(), msg.hex(), (bytes([sig[0] ^ 4]) + sig[1:]).hex(), False))
        s = int.from_bytes(sig[32:], "little") + L
        out.append((pub.hex(), msg.hex(), (sig[:32] + s.to_bytes(32, "little")).hex(), False))
        other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                      serialization.PublicFormat.Raw)
        out.append((other.hex(), msg.hex(), sig.hex(), False))
    p, m, s = RFC8032[0]
    out.append(("02" + "00" * 31, m, s, False))  # y = 2 has no x on the curve
    out.append(("ff" * 32, m, s, False))  # y >= p
    out.append((p[:-2], m, s, False))
    out.append((p, m, s[:-2], False))
    return out


def test_sha512_matches_hashlib_at_every_block_boundary() -> None:
    for n in (0, 1, 3, 111, 112, 127, 128, 129, 239, 240, 256, 1000):
        data = os.urandom(n)
        assert ed25519.Sha512(data).digest() == hashlib.sha512(data).digest(), n
    h = ed25519.Sha512()
    for part in (b"a" * 100, b"b" * 100, b"c"):
        h.update(part)
    assert h.digest() == hashlib.sha512(b"a" * 100 + b"b" * 100 + b"c").digest()


@pytest.mark.parametrize("case", cases(), ids=lambda c: f"{len(c[1]) // 2}B-{'good' if c[3] else 'bad'}")
def test_verify_on_cpython(case: tuple[str, str, str, bool]) -> None:
    pub, msg, sig, valid = case
    assert ed25519.verify(bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)) is valid


SCRIPT = """
import json, struct
import ed25519
out = []
with open(%r, "rb") as f:
    while True:
        head = f.read(8)
        if not head:
            break
        a, m, s = struct.unpack(">HIH", head)
        out.append(ed25519.verify(f.read(a), f.read(m), f.read(s)))
print(json.dumps(out))
"""


def packed(all_cases: list[tuple[str, str, str, bool]]) -> bytes:
    """The cases as lengths and raw bytes, which the script reads a field at a time: in a 64K heap a 10 KB
    line of hex is not a given."""
    out = b""
    for pub, msg, sig, _ in all_cases:
        p, m, s = bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)
        out += struct.pack(">HIH", len(p), len(m), len(s)) + p + m + s
    return out


def test_verify_on_micropython_in_the_device_heap(tmp_path: Path) -> None:
    all_cases = cases()
    (tmp_path / "cases.bin").write_bytes(packed(all_cases))
    upy.compile_module(upy.FIRMWARE / "lib" / "ed25519.py", tmp_path / "ed25519.mpy", "ed25519")
    (tmp_path / "run.py").write_text(SCRIPT % str(tmp_path / "cases.bin"))
    r = upy.run(tmp_path / "run.py", heap=upy.FIRMWARE_HEAP, env={"MICROPYPATH": f"{tmp_path}:.frozen"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [c[3] for c in all_cases]
