"""The node's application. On a 64K heap the imported code is most of what is allocated, so code
that runs rarely (config checks, command handling) is imported when needed and dropped after."""

import gc
import sys

# What a downlink command loads beside the running app: its handler, then (never at the same time) the
# decoder that opens it. app/runtime.py drops them after each command.
COMMAND_PATH = ("app.commands", "app.checks", "protocol.message_check", "protocol.cbor_decode")


def drop(*names):
    """Forget modules so their code can be collected; the next import loads them again."""
    for name in names:
        sys.modules.pop(name, None)
        pkg, _, sub = name.rpartition(".")
        if pkg in sys.modules and hasattr(sys.modules[pkg], sub):
            delattr(sys.modules[pkg], sub)
    gc.collect()


def tls(broker):
    """None, or with device.json's broker.tls on, a context that takes only a certificate the CA in broker_ca.der
    (DER, `lifeline flash --tls`) signed for the broker's host (mqtt.py passes it as server_hostname).
    MicroPython's client default is CERT_NONE: whoever answered at the broker's address got the node's password
    and readings, and could command it. The file's name is a literal, not a module global: the drone's app is one
    name short of the name line (warm(), below)."""
    if not broker.get("tls"):
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with open("broker_ca.der", "rb") as f:  # lifeline.flash.BROKER_CA
        ctx.load_verify_locations(cadata=f.read())
    return ctx


def warm(device, profile):
    """Load everything a node will ever load once at boot, where the heap is nearly empty: the parts of
    asyncio that load on first use, its drivers, the sleep cycle of a sleeping profile, the command path
    (dropped again), then its HAL backend and the app's own modules, some of which the app imports late.
    MicroPython interns every name for good, in a pool that grows by doubling, and past 620 names the
    next pool is one 7 KB block (on the 64-bit unix port). Grown here it is carved from a heap that holds
    little yet, or from the room the command path has just left at its end; grown later, by whatever
    module happens to cross the line (a driver, asyncio.funcs at the first connect, app.sampler as the
    app starts, the first command), it needs a 7 KB hole in a heap the running app has fragmented, and
    that load fails for memory."""
    from drivers import load
    from hal import backend

    for name in ("asyncio.event", "asyncio.lock", "asyncio.funcs", "asyncio.stream"):  # each loads on first use
        __import__(name)
    for s in profile["sensors"]:
        load(s["driver"])
    if profile.get("sleep"):
        __import__("app.sleeper")
    for name in COMMAND_PATH:
        __import__(name)
    drop(*COMMAND_PATH)
    backend(device.get("hal"))
    for name in ("app.runtime", "app.publisher", "mqtt", "app.sampler"):
        __import__(name)
