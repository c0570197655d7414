"""The site seal: every publish a gateway makes on the district link is a COSE_Mac0 (protocol/auth.py) whose
key id is the site id, so the district knows which site vouches for it.

The upstream kind (the topic's last level) is bound inside the MAC: the tag is made with a key derived from
the site key for that kind, HMAC-SHA256(site key, "lifeline-up/" + kind). A body sealed as an alarm then
fails to verify as telemetry, without a header that auth.verify would have to learn. The payload is the
body's CBOR exactly as district_wire wrote it. Runs on MicroPython and CPython (the district verifies with it).
"""

from protocol import auth

KEY_BYTES = 32
_LABEL = b"lifeline-up/"


def kind_key(site_key, kind):
    return auth.hmac_sha256(site_key, _LABEL + kind.encode())


def seal(site_key, site, kind, body):
    """`body`: the CBOR of one upstream body; `kind`: the upstream topic kind it is published under."""
    return auth.seal(kind_key(site_key, kind), site.encode(), body)


def open_sealed(data, kind, site_key_for):
    """(site id, body CBOR) when the seal verifies for this kind; auth.AuthError otherwise.
    `site_key_for(site id as bytes)` returns the site's key or None."""

    def key_for(kid):
        key = site_key_for(kid)
        return None if key is None else kind_key(key, kind)

    kid, body = auth.verify(data, key_for)
    return kid.decode(), body


def make_key(path):
    """Write a fresh site key (hex, owner-only) to `path` and return it; an existing file is never replaced.
    Host only: the gateway calls it when its key file is missing, and `lifeline site-auth` may call it."""
    import os

    key = os.urandom(KEY_BYTES)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    return key


def read_key(path):
    """A site key file as make_key writes it: 64 hex digits."""
    with open(str(path)) as fh:
        text = fh.read().strip()
    key = bytes.fromhex(text)
    if len(key) != KEY_BYTES:
        raise ValueError("%s: a site key is %d bytes (%d hex digits)" % (path, KEY_BYTES, 2 * KEY_BYTES))
    return key
